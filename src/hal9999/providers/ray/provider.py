"""The ``ray`` provider: sandboxes on the nodes of a Ray cluster.

A node offers sandboxes by carrying a custom resource ``<resource_prefix><name>`` whose
amount is how many it takes at once (``ray start --resources '{"hal_node_a": 8}'``). On
each such node hal keeps one long-lived, detached host actor (``hal-host-<name>``, placed
by that resource) owning a local ``bwrap`` provider (:mod:`.host`). The session stays on
the hal host: its directories are pushed to the node when the sandbox is made (and before
each command, the read-only ones) and pulled back after every command and file change, as
the ``ssh`` provider does. A new sandbox goes to the node with the most free room; a node
that does not answer is skipped, so a lost node costs only the sandboxes it held (their
session keeps what the last pull brought back).

Ray has no authentication: anything that can connect to its ports runs code on the
cluster. Sandboxes get ``network = "none"``; ``network = "host"`` is offered only with
``host_network = true`` and then refused on a node where a real host-network sandbox can
reach any Ray port (:meth:`.host.NodeHost.op_probe`).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hal9999 import fs
from hal9999.errors import (
    CapabilityError,
    ConfigError,
    HalError,
    HostUnreachable,
    ProviderError,
    SandboxNotFound,
)
from hal9999.providers.base import Capabilities, SandboxInfo
from hal9999.providers.host.sandbox import check_spec
from hal9999.providers.ray import host as rayhost
from hal9999.providers.ray.address import check_address
from hal9999.providers.ray.sandbox import RayMount, RaySandbox, node_call
from hal9999.providers.records import SandboxRecord
from hal9999.spec import SandboxSpec

_ID = re.compile(r"[0-9a-f]{12}")
_CONNECT = threading.Lock()


def _ray() -> Any:
    """Ray, imported on first use (it is heavy and optional)."""
    return importlib.import_module("ray")


class RayConfig(BaseModel):
    """``[providers.ray]`` settings."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    """The cluster's GCS address ``host:port`` (else ``HAL_RAY_ADDRESS``, else ``RAY_ADDRESS``)."""
    namespace: str = "hal9999"
    """Ray namespace of the host actors."""
    resource_prefix: str = "hal_node_"
    """Nodes carrying a resource with this prefix take sandboxes; the amount is their room."""
    node_dir: str = "/var/tmp/hal9999-ray"
    """Directory on each node for its host actor's mirrors and sandbox records."""
    host_network: bool = False
    """Offer ``network = "host"`` (refused on a node whose Ray ports a sandbox can reach)."""
    call_timeout_s: float = Field(default=60.0, gt=0)
    """Longest wait for a node's answer to anything but a command."""
    connect_timeout_s: float = Field(default=30.0, gt=0)
    """Longest wait to join the cluster (its GCS reached, the driver registered)."""
    checkpoint_s: float = Field(default=30.0, gt=0)
    """How often a launched run's writable directories come back to the hal host."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_address(value)
        except HalError as exc:
            raise ValueError(exc.one_line()) from None


class RayRecord(SandboxRecord):
    """One sandbox on one Ray node, as the hal host keeps it (``<state>/<id>.json``)."""

    node: str
    """The node's name (its resource without the prefix)."""
    mounts: tuple[RayMount, ...]


class RayRecords:
    """Records of the hal host, one JSON file (mode 600) per sandbox."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, sandbox_id: str) -> Path:
        """Where the record of ``sandbox_id`` lives (the id is checked first)."""
        if not _ID.fullmatch(sandbox_id):
            raise SandboxNotFound(f"no ray sandbox {sandbox_id!r}")
        return self.root / f"{sandbox_id}.json"

    def load(self, sandbox_id: str) -> RayRecord:
        """The record; :class:`SandboxNotFound` when gone."""
        try:
            return RayRecord.model_validate_json(self.path(sandbox_id).read_text())
        except FileNotFoundError:
            raise SandboxNotFound(f"no ray sandbox {sandbox_id!r}") from None
        except ValidationError as exc:
            raise ProviderError(f"ray sandbox record {sandbox_id} is damaged: {exc}") from exc

    def save(self, record: RayRecord) -> None:
        """Write the record atomically."""
        fs.write_text(self.path(record.id), record.model_dump_json(), durable=False)

    def delete(self, sandbox_id: str) -> None:
        """Forget the sandbox."""
        self.path(sandbox_id).unlink(missing_ok=True)

    def all(self) -> list[RayRecord]:
        """Every record, oldest first."""
        found = []
        for path in self.root.glob("*.json"):
            try:
                found.append(self.load(path.stem))
            except HalError:
                continue
        return sorted(found, key=lambda r: r.created_at)


_ADDRESS_HINT = "hal serve --ray HOST:PORT, address in [providers.ray], or HAL_RAY_ADDRESS"


def connect(address: str | None, namespace: str, timeout_s: float = 30.0) -> str:
    """Join the cluster once per process (blocking: call it in a thread); its GCS address.
    A GCS that refuses or does not take the connection within ``timeout_s`` is a one-line
    :class:`HostUnreachable` before Ray is asked: Ray itself retries such an address for
    ever, logging every few seconds."""
    # Read by Ray's core at its import: its warnings (one every few seconds while a GCS
    # does not answer) are not the user's to read, hal says in one line what failed.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        ray = _ray()
    except ImportError as exc:
        raise CapabilityError(
            "the ray provider needs Ray", hint="pip install 'hal9999[ray]'"
        ) from exc
    with _CONNECT:
        if not ray.is_initialized():
            if not address:
                raise ProviderError("no Ray cluster address", hint=_ADDRESS_HINT)
            _probe(address, timeout_s)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            import logging

            # "SIGTERM handler is not set ..." when joined off the main thread: hal's own
            # handler is the one that counts there.
            logging.getLogger("ray").setLevel(logging.ERROR)
            try:
                ray.init(address=address, namespace=namespace, logging_level="ERROR",
                         log_to_driver=False, configure_logging=False)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ProviderError(
                    f"cannot join the Ray cluster at {address}: {exc}",
                    hint="is `ray start --head` running there?",
                ) from exc
        return str(ray.get_runtime_context().gcs_address)


def _probe(address: str, timeout_s: float) -> None:
    """Connect to the GCS's port once (closed at once), where Ray will (it joins a loopback
    address at the node's own IP): a refusal, no route or no answer is a
    :class:`HostUnreachable` naming the address."""
    import socket

    target = address.removeprefix("ray://")
    if target == address:
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address) or address
        except (ImportError, ValueError, OSError):
            pass  # the address as given: Ray's own error follows if it differs
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise _unreachable(address, exc.strerror or str(exc) or type(exc).__name__) from exc


def _unreachable(address: str, why: str) -> HostUnreachable:
    return HostUnreachable(
        f"cannot reach the Ray cluster at {address}: {why}",
        hint=f"start it there (`ray start --head`), or give its address ({_ADDRESS_HINT})",
    )


async def _in_daemon_thread(call: Callable[[], str], timeout_s: float, address: str) -> str:
    """``call()`` in a daemon thread, waited for at most ``timeout_s``: a join Ray never
    ends (a port that takes the connection and never speaks its protocol) holds neither the
    caller past its deadline, nor a cancelled run, nor the process's exit, as a thread of
    the default executor would (the interpreter joins those at its exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed to the waiter, whatever it is
            failure = exc
            loop.call_soon_threadsafe(_settle, done, None, failure)
            return
        loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="hal-ray-join", daemon=True).start()
    try:
        return await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        raise _unreachable(address, f"no answer within {timeout_s:g} s") from None


def _settle(done: asyncio.Future[str], result: str | None, failure: BaseException | None) -> None:
    if done.done():  # the waiter gave up (its deadline, or it was cancelled)
        return
    if failure is not None:
        done.set_exception(failure)
    else:
        done.set_result(str(result))


def _env_address() -> str | None:
    """``HAL_RAY_ADDRESS``, else Ray's own ``RAY_ADDRESS``, checked; a bad one is a line
    naming the variable (``--ray`` sets the first for the daemon, a user may set either)."""
    for var in ("HAL_RAY_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var)
        if value:
            try:
                return check_address(value)
            except HalError as exc:
                raise ConfigError(f"{var}: {exc.message}", hint=f"fix or unset {var}") from exc
    return None


class RayProvider:
    """Sandboxes on Ray nodes, each through the node's host actor."""

    name = "ray"
    config_model = RayConfig

    def __init__(self, *, state_dir: Path, config: RayConfig | None = None) -> None:
        self.config = config or RayConfig()
        self.address = self.config.address or _env_address()
        self.records = RayRecords(state_dir)
        self.capabilities = Capabilities(
            isolation="namespace",
            network_modes=frozenset({"none", "host"} if self.config.host_network else {"none"}),
            resource_limits=True,
            host_launch=True,
        )
        self._actors: dict[str, Any] = {}
        self._probed: dict[str, list[str]] = {}
        self._gcs = ""

    # -- the cluster ------------------------------------------------------------------------
    async def _connect(self) -> None:
        if not self._gcs:
            timeout = self.config.connect_timeout_s
            self._gcs = await _in_daemon_thread(
                lambda: connect(self.address, self.config.namespace, timeout),
                timeout,  # the probe's and the join's together
                self.address or "",
            )

    async def nodes(self) -> dict[str, int]:
        """Alive nodes that take sandboxes: name -> room."""
        await self._connect()
        ray = _ray()

        found: dict[str, int] = {}
        prefix = self.config.resource_prefix
        for node in await asyncio.to_thread(ray.nodes):
            if not node.get("Alive"):
                continue
            for key, amount in node.get("Resources", {}).items():
                if key.startswith(prefix) and key[len(prefix) :]:
                    found[key[len(prefix) :]] = int(amount)
        return found

    async def actor(self, node: str) -> Any:
        """The node's host actor (made there on first use, found by name after)."""
        if node not in self._actors:
            await self._connect()
            key = self.config.resource_prefix + node
            root = f"{self.config.node_dir}/{self.config.namespace}/{node}"
            options = {"name": f"hal-host-{node}", "namespace": self.config.namespace,
                       "lifetime": "detached", "get_if_exists": True, "num_cpus": 0,
                       "resources": {key: 0.001}}  # fmt: skip

            def make() -> Any:
                return rayhost.actor().options(**options).remote(node, root)

            handle = await asyncio.to_thread(make)
            await node_call(handle, node, "ping", timeout=self.config.call_timeout_s)
            self._actors[node] = handle
        return self._actors[node]

    def forget(self, node: str) -> None:
        """Drop the cached handle (the actor died; a new one is made on next use)."""
        self._actors.pop(node, None)

    def placement(self) -> dict[str, int]:
        """Sandboxes per node now, from the records (no call to the cluster)."""
        used: dict[str, int] = {}
        for record in self.records.all():
            used[record.node] = used.get(record.node, 0) + 1
        return used

    # -- lifecycle --------------------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> RaySandbox:
        """Place the sandbox on the node with most free room; push the session out."""
        check_spec(self.name, self.capabilities, spec)
        rooms = await self.nodes()
        if not rooms:
            raise ProviderError(
                "no Ray node takes sandboxes",
                hint=f"start nodes with --resources '{{\"{self.config.resource_prefix}NAME\": 4}}'",
            )
        failed: list[str] = []
        while True:
            used = self.placement()
            free = {n: room - used.get(n, 0) for n, room in rooms.items() if n not in failed}
            candidates = sorted((n for n in free if free[n] > 0), key=lambda n: (-free[n], n))
            if not candidates:
                if failed:
                    raise ProviderError(f"no Ray node could take the sandbox (tried "
                                        f"{', '.join(failed)})",
                                        hint="check `ray status` on the cluster")  # fmt: skip
                raise ProviderError(
                    "every Ray node is at its capacity",
                    hint=f"raise the {self.config.resource_prefix}* resources",
                )
            node = candidates[0]
            try:
                return await self._create_on(node, spec)
            except CapabilityError:
                raise
            except ProviderError as exc:
                if not getattr(exc, "details", {}).get("node_lost"):
                    raise
                self.forget(node)
                failed.append(node)

    def _reserve(self, node: str, spec: SandboxSpec) -> RayRecord:
        # Saved before the first await: a concurrent create counts it when it places its own.
        mounts = []
        if spec.workspace is not None:
            mounts.append(RayMount(target="/workspace", name="ws", writable=True,
                                   host=spec.workspace))  # fmt: skip
        for index, bind in enumerate(spec.binds):
            mounts.append(RayMount(target=bind.target, name=f"b{index}",
                                   writable=not bind.read_only, host=bind.source))  # fmt: skip
        record = RayRecord(id=secrets.token_hex(6), provider=self.name, state="running",
                           spec=spec, created_at=time.time(), node=node,
                           mounts=tuple(mounts))  # fmt: skip
        self.records.save(record)
        return record

    async def _create_on(self, node: str, spec: SandboxSpec) -> RaySandbox:
        record = self._reserve(node, spec)
        handle = None
        try:
            handle = await self.actor(node)
            if spec.network == "host":
                await self._check_boundary(node, handle)
            await node_call(handle, node, "create", record.id, spec,
                            timeout=self.config.call_timeout_s)  # fmt: skip
            sandbox = self._handle(record)
            await sandbox.push()
        except BaseException:
            self.records.delete(record.id)
            if handle is not None:
                await self._quiet_destroy(handle, node, record.id)
            raise
        return sandbox

    async def _quiet_destroy(self, handle: Any, node: str, sandbox_id: str) -> None:
        try:
            await node_call(handle, node, "destroy", sandbox_id, timeout=self.config.call_timeout_s)
        except HalError:
            pass

    async def _check_boundary(self, node: str, handle: Any) -> None:
        if node not in self._probed:
            targets = await asyncio.to_thread(rayhost.ray_ports, self._gcs)
            self._probed[node] = await node_call(handle, node, "probe", targets,
                                                 timeout=self.config.call_timeout_s)  # fmt: skip
        if self._probed[node]:
            raise CapabilityError(
                f"ray node {node}: a network=host sandbox there can reach Ray's ports "
                f"({', '.join(self._probed[node][:4])}); Ray has no authentication",
                hint="use network \"none\" on Ray, or firewall Ray's ports from the node's "
                "sandboxes and try again",
            )

    def _handle(self, record: RayRecord) -> RaySandbox:
        return RaySandbox(record, self)

    async def get(self, sandbox_id: str) -> RaySandbox:
        """A handle on an existing sandbox."""
        return self._handle(self.records.load(sandbox_id))

    async def list(self) -> list[SandboxInfo]:
        """Every sandbox this provider knows of (from the hal host's records)."""
        return [record.info() for record in self.records.all()]

    async def stop(self, sandbox_id: str) -> None:
        """Kill every process of the sandbox on its node, then bring its files back."""
        record = self.records.load(sandbox_id)
        self.records.save(record.model_copy(update={"state": "stopped"}))
        handle = await self.actor(record.node)
        await node_call(handle, record.node, "stop", sandbox_id, timeout=self.config.call_timeout_s)
        await self._handle(record).pull()

    async def start(self, sandbox_id: str) -> RaySandbox:
        """Commands may run again (the mirror on the node is as it was)."""
        record = self.records.load(sandbox_id)
        handle = await self.actor(record.node)
        await node_call(
            handle, record.node, "start", sandbox_id, timeout=self.config.call_timeout_s
        )
        record = record.model_copy(update={"state": "running"})
        self.records.save(record)
        return self._handle(record)

    async def destroy(self, sandbox_id: str) -> None:
        """Kill its processes and delete its mirror on the node; never the session. A node
        that does not answer leaves its mirror behind: the record goes regardless."""
        try:
            record = self.records.load(sandbox_id)
        except SandboxNotFound:
            return
        try:
            handle = await self.actor(record.node)
            await node_call(handle, record.node, "destroy", sandbox_id,
                            timeout=self.config.call_timeout_s)  # fmt: skip
        except HalError:
            self.forget(record.node)
        self.records.delete(sandbox_id)


__all__ = ["RayConfig", "RayProvider", "RayRecord"]
