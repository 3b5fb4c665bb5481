"""The gateway process: one per HAL_HOME, held by a lock, listening on two unix sockets.

``control.sock`` (in the 0700 gateway directory, host only) takes JSON lines: ``ping``,
``register`` (a :class:`Grant`, key included), ``unregister`` and ``rested`` (a task came to
rest: its grants go, see :meth:`GatewayServer.drop_stale_grants`). ``channel/llm.sock`` is the
data plane, bound into sandboxes; a request there is only served with a registered token.
The process exits after ``HAL_GATEWAY_IDLE_S`` seconds (default 600) with no grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hal9999 import fs
from hal9999.errors import HalError
from hal9999.gateway import door
from hal9999.gateway.channel import GatewayPaths, Grant
from hal9999.gateway.egress import MAX_HEAD, EgressProxy
from hal9999.gateway.proxy import Gateway
from hal9999.statuses import RESTING
from hal9999.store import Store
from hal9999.unixsock import bound

logger = logging.getLogger(__name__)

DEFAULT_IDLE_S = 600.0
STALE_CHECK_S = 5.0
"""How often the grants of tasks at rest are looked for (what no ``rested`` told)."""
MAX_CONTROL_LINE = 1 << 20
BACKLOG = door.IN_ALL
"""Connections the kernel holds for the sandbox sockets before the gateway accepts them.
asyncio's default (100) filled in a burst of calls while the loop was busy, and a unix connect
past it fails at once: the in-sandbox forwarder then closed the agent's call with no answer.
Sized to the door's bound, which is where accepted connections are counted (and refused,
with an answer) anyway; the kernel caps it at ``net.core.somaxconn`` (4096 by default)."""


def prepare_channel(paths: GatewayPaths) -> None:
    """The channel directory (world-traversable, read-only inside) with the forwarder in it."""
    paths.root.chmod(0o700)
    paths.channel.mkdir(exist_ok=True)
    paths.channel.chmod(0o755)  # a sandbox runs as its own uid: it must reach the socket
    for name in ("forwarder.py", "forwarder.pl"):  # perl: for images without python3
        source = Path(__file__).with_name(name).read_bytes()
        fs.write_bytes(paths.channel / name, source, mode=0o644, durable=False)
    for sock in (paths.socket, paths.egress_socket, paths.control):
        sock.unlink(missing_ok=True)


class GatewayServer:
    """Both sockets of one gateway and its idle timer."""

    def __init__(self, paths: GatewayPaths, idle_s: float = DEFAULT_IDLE_S) -> None:
        self.paths = paths
        self.idle_s = idle_s
        self.store = Store.open(paths.home)
        self.gateway = Gateway(self.store, paths)
        self.gateway.ledger.close_interrupted()  # this process holds the HAL_HOME's lock

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One control request."""
        try:
            line = await reader.readline()
            message = json.loads(line) if line else {}
            if message.get("op") == "drain":  # a run ends: its last calls into the store
                await self.gateway.drain()
            answer = self.handle(message) if line else {"ok": False}
        except (ValueError, TypeError, KeyError) as exc:
            answer = {"ok": False, "error": type(exc).__name__}
        writer.write(json.dumps(answer).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """Apply a control message."""
        op = message.get("op")
        if op == "drain":
            return {"ok": True}
        if op == "ping":
            self.gateway.last_active = time.monotonic()  # a grant is on its way
            return {"ok": True, "pid": os.getpid()}
        if op == "register":
            self.gateway.register(Grant(**message["grant"]))
            return {"ok": True}
        if op == "unregister":
            self.gateway.unregister(str(message["token"]))
            return {"ok": True}
        if op == "rested":  # a task came to rest (see rested.tell_rested)
            self.drop_stale_grants(str(message["task_id"]))
            return {"ok": True}
        if op == "stats":
            peaks = {name: lim.peak for name, lim in self.gateway.limiters.items()}
            return {"ok": True, "grants": len(self.gateway.grants), "peaks": peaks}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def drop_stale_grants(self, task_id: str | None = None) -> None:
        """Withdraw the grants of tasks (or of ``task_id``) that have come to rest (a runner
        killed before it could withdraw its own; the reaper marks its task interrupted):
        their tokens stop working and the gateway can go idle. Told by whoever puts a task
        to rest (``rested``), checked every :data:`STALE_CHECK_S` for one killed before it
        could tell."""
        for token, grant in list(self.gateway.grants.items()):
            if task_id is not None and grant.task_id != task_id:
                continue
            try:
                status = self.store.get_task(grant.task_id).status
            except HalError:
                continue  # not a task of this store (a benchmark, a test): its owner withdraws
            if status in RESTING:
                logger.info("withdrawing the grant of task %s (%s)", grant.task_id, status)
                self.gateway.unregister(token)

    async def run(self, ready: int | None = None) -> None:
        """Serve until idle."""
        data = await asyncio.start_unix_server(
            self.gateway.serve_connection,
            sock=bound(self.paths.socket),
            limit=1 << 16,
            backlog=BACKLOG,
        )
        os.chmod(self.paths.socket, 0o666)  # tokens, not file modes, decide who is served
        egress = await asyncio.start_unix_server(
            EgressProxy(self.gateway).serve_connection,
            sock=bound(self.paths.egress_socket),
            limit=MAX_HEAD,
            backlog=BACKLOG,
        )
        os.chmod(self.paths.egress_socket, 0o666)
        control = await asyncio.start_unix_server(
            self.control, sock=bound(self.paths.control), limit=MAX_CONTROL_LINE
        )
        os.chmod(self.paths.control, 0o600)
        if ready is not None:
            os.write(ready, b"ready\n")
            os.close(ready)
        async with data, egress, control:
            while True:
                await asyncio.sleep(min(STALE_CHECK_S, self.idle_s))
                self.drop_stale_grants()
                if not self.paths.lock.exists():
                    break  # the HAL_HOME was removed: nobody can reach or need this gateway
                idle = time.monotonic() - self.gateway.last_active
                if not self.gateway.grants and not self.gateway.inflight and idle >= self.idle_s:
                    break
        await self.gateway.drain()
        await self.gateway.aclose()
        self.store.close()


def idle_seconds(environ: dict[str, str]) -> float:
    """The idle time after which a gateway with no grant exits."""
    try:
        return max(0.1, float(environ.get("HAL_GATEWAY_IDLE_S", DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S
