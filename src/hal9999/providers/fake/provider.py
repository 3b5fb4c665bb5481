"""The ``fake`` provider: real files, scripted commands, no processes; for tests and plugins.

Files are real: a sandbox is a directory tree under ``<state_dir>/<id>/root`` seen as
``/``, with the spec's workspace at ``/workspace`` and its binds where they say, so host
code that reads a workspace sees what "commands" wrote, and a second provider instance on
the same state dir finds the sandbox. Commands never run on the host: ``argv[0]`` picks a
Python handler from :attr:`FakeProvider.commands`. The built-ins cover what a contract
test needs (``true``, ``echo``, ``cat``, ``printenv``, ``sleep``, ``sh -c`` of simple
``;``/``&&``/``||`` scripts with ``>&2`` and ``> file``...); register more per program::

    async def claude(call: FakeCall) -> int:
        call.out('{"type": "result"}\\n')
        return 0

    provider.commands["claude"] = claude
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hal9999.errors import CapabilityError, ExecError
from hal9999.providers.base import (
    Capabilities,
    Command,
    ExecResult,
    Launch,
    StreamEvent,
)
from hal9999.providers.fake import shell as fakeshell
from hal9999.providers.host import fs as hostfs
from hal9999.providers.host.sandbox import HostProvider, HostSandbox, SandboxRecord
from hal9999.spec import SandboxSpec, display, to_argv

WORKDIR = "/workspace"
HOME = "/home/hal"
KILLED = 137
"""Exit status of a command cancelled by stop(), as if SIGKILLed."""

FakeHandler = Callable[["FakeCall"], Awaitable[int]]
"""A fake program: gets the call, writes output through it, returns the exit status."""


@dataclass
class FakeCall:
    """One command as a fake handler sees it."""

    sandbox: FakeSandbox
    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdin: bytes
    emit: Callable[[StreamEvent], None]
    """Where output goes; handlers use :meth:`out` and :meth:`err`."""

    def out(self, data: str | bytes) -> None:
        """Write to stdout."""
        self.emit(StreamEvent("stdout", data.encode() if isinstance(data, str) else data))

    def err(self, data: str | bytes) -> None:
        """Write to stderr."""
        self.emit(StreamEvent("stderr", data.encode() if isinstance(data, str) else data))

    def host(self, path: str, *, follow: bool = True) -> Path | None:
        """The host file behind a sandbox path (relative to cwd), None when unreachable."""
        where = self.sandbox.paths.host(hostfs.normalize(path, self.cwd), follow=follow)
        return None if where is None else where.path

    async def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        emit: Callable[[StreamEvent], None] | None = None,
    ) -> int:
        """Run another fake program with this call's env and cwd (how ``sh -c`` runs)."""
        own_stdin = self.stdin if stdin is None else stdin
        child = FakeCall(self.sandbox, argv, self.env, self.cwd, own_stdin, emit or self.emit)
        return await self.sandbox.dispatch(child)


class FakeConfig(BaseModel):
    """Settings of the ``fake`` provider (none yet)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["fake"] = "fake"
    """Provider kind."""


class FakeSandbox(HostSandbox):
    """A directory tree seen as ``/``; commands are Python handlers."""

    home = HOME

    def __init__(self, owner: FakeProvider, record: SandboxRecord) -> None:
        root = owner.store.dir(record.id) / "root"
        mounts = [hostfs.Mount("/", root, writable=True)]
        if record.spec.workspace is not None:
            mounts.append(hostfs.Mount(WORKDIR, record.spec.workspace, writable=True))
        mounts += [hostfs.Mount(b.target, b.source, not b.read_only) for b in record.spec.binds]
        super().__init__(owner, record, hostfs.PathMap(mounts, cwd=WORKDIR))
        self._fake = owner

    @property
    def paths(self) -> hostfs.PathMap:
        """How sandbox paths map to host files."""
        return self._paths

    def launch(self, command: Command, *, env: Mapping[str, str] | None = None) -> Launch:
        """Not possible: fake commands exist only inside this Python process."""
        raise CapabilityError(
            "the fake provider has no host command line for a command",
            hint="use exec_stream, or the local or bwrap provider",
        )

    def attach_command(self) -> list[str]:
        """Not possible: there is no shell to attach to."""
        raise CapabilityError("the fake provider has no shell to attach to")

    async def dispatch(self, call: FakeCall) -> int:
        """Run the handler registered for ``call.argv[0]`` (127 when there is none)."""
        handler = self._fake.commands.get(posixpath.basename(call.argv[0]))
        if handler is None:
            call.err(f"fake: {call.argv[0]}: command not found\n")
            return 127
        return await handler(call)

    def _start(
        self,
        command: Command,
        env: Mapping[str, str] | None,
        stdin: bytes,
        emit: Callable[[StreamEvent], None],
    ) -> asyncio.Task[int]:
        self._require(running=True)
        cwd = self.paths.normalize(command.cwd or WORKDIR)
        call = FakeCall(self, to_argv(command), self.command_env(command, env), cwd, stdin, emit)
        task = asyncio.create_task(self.dispatch(call))
        running = self._fake.running.setdefault(self.id, set())
        running.add(task)
        task.add_done_callback(running.discard)
        return task

    async def _wait(self, task: asyncio.Task[int]) -> int:
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                return KILLED  # stop() cancelled the command, not our caller
            raise
        finally:
            task.cancel()

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a fake command; past ``timeout`` it is cancelled and ExecError raised."""
        out, err = bytearray(), bytearray()

        def collect(event: StreamEvent) -> None:
            (out if event.kind == "stdout" else err).extend(event.data)

        task = self._start(command, env, stdin or b"", collect)
        try:
            async with asyncio.timeout(timeout):
                code = await self._wait(task)
        except TimeoutError as exc:
            raise ExecError(
                f"command timed out after {timeout:g}s and was killed: {display(command)}",
                hint="raise the timeout, or run long work through a process manager",
                timeout=timeout,
                stdout=bytes(out),
                stderr=bytes(err),
            ) from exc
        if len(out) > stdout_limit:  # a fake's output is in memory anyway: checked at the end
            raise ExecError(
                f"{display(command)} wrote more than {stdout_limit} bytes to stdout and was killed",
                hint="write large output to a file in the sandbox and read it from there",
                stdout_limit=stdout_limit,
                stderr=bytes(err),
            )
        return ExecResult(code, bytes(out), bytes(err))

    async def exec_stream(
        self, command: Command, *, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[StreamEvent]:
        """Run a fake command, yielding its output as written and the exit status last."""
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        task = self._start(command, env, b"", queue.put_nowait)
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                yield event
            yield StreamEvent("exit", exit_code=await self._wait(task))
        finally:
            task.cancel()
            # Let the handler finish cancelling; its outcome was reported (or is moot).
            await asyncio.gather(task, return_exceptions=True)


class FakeProvider(HostProvider):
    """Sandboxes with real files and scripted commands; pairs with the contract suite."""

    name = "fake"
    capabilities = Capabilities(
        isolation="fake",
        network_modes=frozenset({"none", "host", "allow-list"}),
        # Accepted and recorded; nothing runs that could exceed them.
        resource_limits=True,
    )
    config_model = FakeConfig

    def __init__(self, *, state_dir: Path, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        super().__init__(state_dir=state_dir, cgroup="off")
        self.commands: dict[str, FakeHandler] = dict(fakeshell.BUILTINS)
        """Program name -> handler; add or replace entries to script a test."""
        self.running: dict[str, set[asyncio.Task[int]]] = {}
        """Commands in flight per sandbox, so stop() can cancel them."""

    async def _prepare(self, record: SandboxRecord) -> SandboxRecord:
        root = self.store.dir(record.id) / "root"
        for path in ("workspace", "home/hal", "tmp"):
            (root / path).mkdir(parents=True, exist_ok=True)
        return record

    def _own_dirs(self, record: SandboxRecord) -> list[str]:
        """The fake root (everything outside the mounts); a reset swaps it for a fresh one."""
        return ["root"]

    async def _kill(self, record: SandboxRecord) -> None:
        for task in list(self.running.pop(record.id, ())):
            task.cancel()

    def _handle(self, record: SandboxRecord) -> FakeSandbox:
        return FakeSandbox(self, record)

    async def create(self, spec: SandboxSpec) -> FakeSandbox:
        """Create a sandbox (typed for FakeSandbox, so tests reach :attr:`commands`)."""
        sandbox = await super().create(spec)
        assert isinstance(sandbox, FakeSandbox)
        return sandbox
