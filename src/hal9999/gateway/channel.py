"""Where the gateway lives on the host and how hal talks to it (no heavy imports here).

::

    $HAL_HOME/gateway/
      lock            flock held by the running gateway process (one per HAL_HOME)
      control.sock    host-only control socket (directory 0700): register / unregister tasks
      gateway.log     the gateway's own log (never a key, never a body)
      unrecorded.jsonl  calls whose rows the store refused, until they are in it (0600)
      channel/        bound read-only into every sandbox at /hal-gateway (0755)
        llm.sock      the data socket agents reach through the forwarder (0666: tokens guard it)
      egress.sock   the CONNECT proxy for everything else (same token, per-task allow-list)
        forwarder.py  the in-sandbox 127.0.0.1 -> llm.sock forwarder
        forwarder.pl  the same in perl, for images without python3 (containers)

A task registers a :class:`Grant` (its placeholder token, upstream, real key, limits) over the
control socket before its agent starts and withdraws it when its run ends; the real key lives
only in the gateway's memory. The gateway is started on demand (detached, held by the lock)
and exits after a while with no registered task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hal9999.envvars import kept_env
from hal9999.errors import GatewayError
from hal9999.gateway.forwarder import connect_unix
from hal9999.gateway.lock import GATEWAY_DIR, LOCK_FILE
from hal9999.gateway.rested import CONTROL_SOCK
from hal9999.pymodule import module_argv

CHANNEL_TARGET = "/hal-gateway"
"""Where the channel directory appears inside a sandbox."""
TOKEN_PREFIX = "hal-gw-"
"""Every placeholder token starts with this (so a log line holding one is recognisable)."""
START_TIMEOUT_S = 60.0
"""A loaded machine (many hal processes starting at once) can take seconds to start it."""
CONTROL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GatewayPaths:
    """The gateway's files under one HAL_HOME."""

    home: Path

    @property
    def root(self) -> Path:
        """The gateway's directory."""
        return self.home / GATEWAY_DIR

    @property
    def lock(self) -> Path:
        """Held by the running gateway."""
        return self.root / LOCK_FILE

    @property
    def control(self) -> Path:
        """The host-only control socket."""
        return self.root / CONTROL_SOCK

    @property
    def log(self) -> Path:
        """The gateway's log."""
        return self.root / "gateway.log"

    @property
    def unrecorded(self) -> Path:
        """The calls the store refused, kept until they are in it (see ledger.py)."""
        return self.root / "unrecorded.jsonl"

    @property
    def channel(self) -> Path:
        """The directory bound into sandboxes."""
        return self.root / "channel"

    @property
    def socket(self) -> Path:
        """The data socket agents reach."""
        return self.channel / "llm.sock"

    @property
    def egress_socket(self) -> Path:
        """The egress proxy's socket."""
        return self.channel / "egress.sock"

    @property
    def forwarder(self) -> Path:
        """The forwarder script's host copy."""
        return self.channel / "forwarder.py"


@dataclass
class Grant:
    """What one task may do through the gateway; the key never leaves the host."""

    task_id: str
    token: str
    """The placeholder the agent holds instead of the key."""
    upstream: str
    """Upstream base URL, e.g. ``https://api.anthropic.com`` or ``http://127.0.0.1:8080/v1``."""
    key: str
    """The real key, put in place of the token on the upstream hop."""
    models: list[str] | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    """The ``[gateway]`` config of the registering hal (limits, prices, daily budgets)."""
    egress: list[str] = field(default_factory=list)
    """Hosts the task may reach through the egress proxy (``[gateway] egress``)."""
    egress_only: list[str] | None = None
    """When set, the task reaches only the hosts of :attr:`egress` this list allows too
    (``hal run --egress-only``, ``[gateway] egress_only``)."""
    mask: list[str] = field(default_factory=list)
    """The task's secret values, masked out of stored bodies (sent only with
    ``store_bodies``; held in the gateway's memory like the key)."""


def new_token() -> str:
    """A fresh per-task placeholder token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(24)


def forward_port(task_id: str) -> int:
    """The port of a task's forwarder inside its sandbox: fixed per task, so with a shared
    host network two tasks are unlikely to meet (each bwrap exec otherwise has its own)."""
    digest = hashlib.sha256(task_id.encode()).digest()
    return 20000 + int.from_bytes(digest[:4], "big") % 30000


async def _call(paths: GatewayPaths, message: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(CONTROL_TIMEOUT_S):
        # connect_unix: a deep HAL_HOME's control.sock is past sun_path's 107 bytes (the
        # gateway listened, every ping failed, and hal said "did not start" after 60 s).
        sock = await connect_unix(str(paths.control))
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    if not line:
        raise GatewayError("the LLM gateway closed the control connection")
    answer: dict[str, Any] = json.loads(line)
    if not answer.get("ok"):
        raise GatewayError(f"the LLM gateway refused: {answer.get('error')}")
    return answer


async def gateway_pid(paths: GatewayPaths) -> int | None:
    """The pid of the gateway answering on the control socket (None: none answers)."""
    try:
        answer = await _call(paths, {"op": "ping"})
    except (OSError, TimeoutError, GatewayError, ValueError):
        return None
    pid = answer.get("pid")
    return pid if isinstance(pid, int) else None


async def ping(paths: GatewayPaths) -> bool:
    """Whether a gateway answers on the control socket."""
    try:
        await _call(paths, {"op": "ping"})
    except (OSError, TimeoutError, GatewayError, ValueError):
        return False
    return True


_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
_KEPT_VARS = (
    "PATH", "HOME", "LANG", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HAL_GATEWAY_IDLE_S",
    *_PROXY_VARS, *(var.lower() for var in _PROXY_VARS),
)  # fmt: skip
"""What a gateway keeps of the environment of the hal command that starts it (with ``LC_*``
and ``PYTHON*``): its trust store, locale, idle time and interpreter, and the proxy a stored
sign-in's refresh goes through (``auth.claude``'s client reads the environment's). The rest
stayed in a detached gateway's ``/proc/PID/environ`` while it served every later run: its
starter's ``--secret`` values, forwarded keys, shell tokens (keys reach it in grants)."""


async def _spawn(paths: GatewayPaths) -> None:
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with paths.log.open("ab") as log:
        os.chmod(paths.log, 0o600)
        proc = await asyncio.create_subprocess_exec(
            *module_argv("hal9999.gateway", "--home", str(paths.home), "--detach"),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            env=kept_env(os.environ, _KEPT_VARS, ("LC_", "PYTHON")),
        )  # fmt: skip
        await proc.wait()  # returns once the detached gateway listens (or another holds it)


async def ensure_running(paths: GatewayPaths) -> None:
    """Start the gateway of this HAL_HOME unless one answers already.

    A gateway that was about to exit when asked (idle) is replaced: starting one is a no-op
    while another holds the lock, so this simply tries again until one answers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if await ping(paths):
            return
        await _spawn(paths)
        for _ in range(20):
            if await ping(paths):
                return
            await asyncio.sleep(0.05)
    raise GatewayError(
        "the LLM gateway did not start", hint=f"see {paths.log}; or set [gateway] enabled = false"
    )


async def register(paths: GatewayPaths, grant: Grant) -> None:
    """Hand a task's grant to the gateway (starting it when needed)."""
    for attempt in range(3):
        await ensure_running(paths)
        try:
            await _call(paths, {"op": "register", "grant": asdict(grant)})
            return
        except (OSError, TimeoutError) as exc:
            if attempt == 2:  # it went idle between the ping and the grant: start another
                raise GatewayError(f"cannot reach the LLM gateway: {exc}") from exc


async def drain(paths: GatewayPaths) -> None:
    """Wait until the gateway has stored every call so far (it writes them in batches)."""
    try:
        await _call(paths, {"op": "drain"})
    except (OSError, TimeoutError, GatewayError, ValueError):
        pass  # a gateway that is gone has written what it had


async def unregister(paths: GatewayPaths, token: str) -> None:
    """Withdraw a task's grant: its token stops working and its calls in flight end."""
    try:
        await _call(paths, {"op": "unregister", "token": token})
    except (OSError, TimeoutError, GatewayError, ValueError):
        pass  # a gateway that is gone holds no grant
