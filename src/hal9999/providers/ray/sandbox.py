"""A sandbox on a Ray node: every operation is a call to the node's host actor, and the
session moves between the hal host and the node's mirror as tars (see :mod:`.host`)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from hal9999 import errors
from hal9999.envvars import env_argv
from hal9999.errors import ExecError, HalError, ProviderError
from hal9999.providers.base import Command, ExecResult, Launch, StreamEvent
from hal9999.providers.handle import SandboxHandle
from hal9999.providers.remote import relay as relaycore
from hal9999.providers.ssh import mirror
from hal9999.pymodule import module_argv
from hal9999.spec import ArgvCommand, SandboxSpec, to_argv

_RELAY = "hal9999.providers.ray.relay"
"""The module that runs a command on the node (:mod:`.relay`)."""

if TYPE_CHECKING:
    from hal9999.providers.ray.provider import RayProvider, RayRecord

WORKDIR = "/workspace"
RELAY_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "HAL_HOME")
"""What the relay itself may see of the launching process's environment (the command's
own variables are added, and only those named in its argv reach the node)."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RayMount(BaseModel):
    """One session directory: where it is seen inside, its mirror's name on the node, and
    its directory on the hal host."""

    model_config = ConfigDict(extra="forbid")

    target: str
    name: str
    writable: bool
    host: Path


def _error(outcome: tuple[Any, ...]) -> HalError:
    _, kind, message, hint, details = outcome
    cls = getattr(errors, str(kind), None)
    if not (isinstance(cls, type) and issubclass(cls, HalError)):
        cls = ProviderError
    return cls(str(message), hint=hint, **dict(details))


async def node_call(
    handle: Any, node: str, op: str, *args: Any,
    timeout: float | None,  # noqa: ASYNC109 - bounds the wait on a node that may be gone
    error: type[HalError] = ProviderError,
) -> Any:  # fmt: skip
    """Run operation ``op`` on the node's host actor; its error raised here as the same
    :class:`HalError`; a node that died or does not answer is ``error`` with ``node_lost``."""
    rex = importlib.import_module("ray.exceptions")

    lost = (rex.RayActorError, rex.ActorUnavailableError, rex.RaySystemError,
            rex.ObjectLostError, rex.OwnerDiedError)  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            if op == "ping":
                outcome = await handle.ping.remote()
            else:
                outcome = await handle.call.remote(op, *args)
    except TimeoutError:
        raise error(f"ray node {node} did not answer ({op}) within {timeout:g}s",
                    hint="check the node with `ray status`", node_lost=True) from None  # fmt: skip
    except lost as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise error(f"ray node {node} was lost during {op}: {reason}",
                    hint="the session keeps what the last sync brought back; run it again",
                    node_lost=True) from None  # fmt: skip
    if outcome[0] == "error":
        raise _error(outcome)
    return outcome[1]


class RaySandbox(SandboxHandle):
    """Operations on one sandbox of a Ray node."""

    def __init__(self, record: RayRecord, owner: RayProvider) -> None:
        self._record = record
        self._owner = owner
        self._sync = asyncio.Lock()

    def _identity(self) -> tuple[str, str, SandboxSpec]:
        return self._record.id, self._record.provider, self._record.spec

    async def _destroy_self(self) -> None:
        await self._owner.destroy(self.id)

    @property
    def node(self) -> str:
        """The Ray node it runs on."""
        return self._record.node

    @property
    def workdir(self) -> str:
        """Where the workspace is seen by commands."""
        return WORKDIR

    def path(self, target: str) -> str:
        """Binds are seen at their targets (bwrap on the node)."""
        return target

    async def _call(self, op: str, *args: Any, timeout: float | None = None,  # noqa: ASYNC109
                    error: type[HalError] = ProviderError) -> Any:  # fmt: skip
        handle = await self._owner.actor(self.node)
        wait = self._owner.config.call_timeout_s if timeout is None else timeout
        try:
            return await node_call(handle, self.node, op, self.id, *args, timeout=wait,
                                   error=error)  # fmt: skip
        except HalError as exc:
            if exc.details.get("node_lost"):
                self._owner.forget(self.node)
            raise

    def _require_running(self) -> None:
        state = self._owner.records.load(self.id).state
        if state != "running":
            raise ExecError(f"sandbox {self.id} is {state}",
                            hint="start the sandbox before running commands")  # fmt: skip

    # -- commands ---------------------------------------------------------------------------
    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command on the node, then bring its changes back to the hal host (the node
        holds at most ``stdout_limit`` bytes of its stdout, see :class:`Sandbox`)."""
        self._require_running()
        await self.push(writable=False)
        try:
            # The node kills the command at ``timeout``; the wait here allows for the trip.
            wait = None if timeout is None else timeout + self._owner.config.call_timeout_s
            code, out, err = await self._call("exec", command, dict(env or {}), stdin, timeout,
                                              stdout_limit, timeout=wait,
                                              error=ExecError)  # fmt: skip
        finally:
            with contextlib.suppress(HalError):
                await self.pull()
        return ExecResult(code, out, err)

    def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a command, yielding output as the node sends it and the exit status last."""
        return self.stream(command, env=env)

    async def stream(
        self, command: Command, *, env: Mapping[str, str] | None = None,
        feed: asyncio.Queue[bytes] | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:  # fmt: skip
        """:meth:`exec_stream`; with ``feed``, the command's stdin is what arrives there
        (an empty chunk closes it)."""
        self._require_running()
        await self.push(writable=False)
        token = await self._call("stream_open", command, dict(env or {}), feed is not None,
                                 error=ExecError)  # fmt: skip
        handle = await self._owner.actor(self.node)
        feeding = None if feed is None else asyncio.create_task(self._feed(handle, token, feed))
        done = False
        try:
            while not done:
                batch = await node_call(handle, self.node, "stream_next", token,
                                        timeout=self._owner.config.call_timeout_s,
                                        error=ExecError)  # fmt: skip
                for kind, data, code in batch:
                    done = done or kind == "exit"
                    yield StreamEvent(kind, data, code)
        finally:
            if feeding is not None:
                feeding.cancel()
            with contextlib.suppress(HalError):
                if not done:
                    await asyncio.shield(node_call(handle, self.node, "stream_close", token,
                                                   timeout=30))  # fmt: skip
            with contextlib.suppress(HalError):
                await asyncio.shield(self.pull())

    async def _feed(self, handle: Any, token: str, feed: asyncio.Queue[bytes]) -> None:
        with contextlib.suppress(HalError):
            while True:
                data = await feed.get()
                await node_call(handle, self.node, "stream_write", token, data,
                                timeout=self._owner.config.call_timeout_s)  # fmt: skip
                if not data:
                    return

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """The relay (:mod:`.relay`) running ``command`` here: it joins the cluster
        itself, so the run outlives this process; values ride in its environment, names in
        argv (the node's sandbox adds its own base environment, as for :meth:`exec`)."""
        full = {**command.env, **dict(env or {})}
        owner = self._owner
        config = owner.config.model_copy(update={"address": owner.address})
        argv = [*module_argv(_RELAY), "--records",
                str(owner.records.root), "--config", config.model_dump_json(), "--id",
                self.id]  # fmt: skip
        for name in sorted(full):
            if not _NAME.fullmatch(name):
                raise ExecError(f"not a variable name: {name!r}")
            argv += ["--env", name]
        if command.cwd:
            argv += ["--cwd", command.cwd]
        host = {name: os.environ[name] for name in RELAY_ENV if name in os.environ}
        return Launch(argv=[*argv, "--", *to_argv(command)],
                      env=host | {"RAY_USAGE_STATS_ENABLED": "0"} | full,
                      stop_grace_s=relaycore.STOP_GRACE_S)  # fmt: skip

    def attach_command(self) -> list[str]:
        """An interactive bash inside, through the relay (its stdin goes to the node)."""
        launch = self.launch(ArgvCommand(argv=("bash", "-i")))
        head = len(module_argv(_RELAY))  # the relay's options follow its module's name
        argv = [*launch.argv[:head], "--stdin", *launch.argv[head:]]
        return env_argv(launch.env, argv)

    # -- files ------------------------------------------------------------------------------
    async def read_file(self, path: str) -> bytes:
        """The contents of a file (read inside, on the node)."""
        self._require_running()
        data: bytes = await self._call("file", "read_file", path, error=ExecError)
        return data

    async def write_file_atomic(self, path: str, data: bytes, *, mode: int = 0o644) -> None:
        """Write a file atomically on the node, then bring it back to the hal host."""
        self._require_running()
        await self._call("file", "write_file_atomic", path, data, mode, error=ExecError)
        await self.pull()

    async def exists(self, path: str) -> bool:
        """Whether the path exists."""
        self._require_running()
        return bool(await self._call("file", "exists", path, error=ExecError))

    async def mkdir(self, path: str, *, mode: int = 0o755) -> None:
        """Create a directory and its parents."""
        self._require_running()
        await self._call("file", "mkdir", path, mode, error=ExecError)
        await self.pull()

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, or a directory tree with ``recursive``."""
        self._require_running()
        await self._call("file", "remove", path, recursive, error=ExecError)
        await self.pull()

    async def adopt(self, target: str) -> None:
        """What the hal host just made in the mount at ``target`` goes out to the node."""
        for mount in self._record.mounts:
            if mount.target == target:
                await self._push_one(mount)

    # -- the mirror -------------------------------------------------------------------------
    async def push(self, *, writable: bool = True) -> None:
        """Send session directories to the node: the read-only ones, with ``writable`` all."""
        for mount in self._record.mounts:
            if writable or not mount.writable:
                await self._push_one(mount)

    async def _push_one(self, mount: RayMount) -> None:
        data = await asyncio.to_thread(mirror.pack, mirror.host_dir(mount.host))
        await self._call("push", mount.name, mount.target, data, error=ExecError)

    async def pull(self) -> None:
        """Bring every writable session directory back from the node."""
        async with self._sync:
            for mount in self._record.mounts:
                if mount.writable:
                    data: bytes = await self._call("pull", mount.target, error=ExecError)
                    if len(data) > mirror.PULL_LIMIT:
                        raise ExecError(f"{mount.target} is over {mirror.PULL_LIMIT >> 30} GiB; "
                                        "not brought back")  # fmt: skip
                    await asyncio.to_thread(_unpack, data, mirror.host_dir(mount.host))


def _unpack(data: bytes, target: Path) -> None:
    with tempfile.TemporaryFile() as spool:
        spool.write(data)
        mirror.unpack_into(spool, target)


__all__ = ["RayMount", "RaySandbox", "node_call"]
