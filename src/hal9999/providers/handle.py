"""What every sandbox handle shares: its identity, ``async with`` (leaving the block destroys
the sandbox), and collecting a command's streamed output under a time limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator, Mapping
from types import TracebackType
from typing import Self

from hal9999.errors import ExecError
from hal9999.providers.base import STDOUT_LIMIT, Command, ExecResult, StreamEvent
from hal9999.spec import SandboxSpec


class SandboxHandle:
    """Base of the sandbox handles: subclasses say who they are (:meth:`_identity`) and
    how they go (:meth:`_destroy_self`)."""

    def _identity(self) -> tuple[str, str, SandboxSpec]:
        """(id, owning provider's name, spec)."""
        raise NotImplementedError

    async def _destroy_self(self) -> None:
        """Destroy this sandbox (leaving ``async with``)."""
        raise NotImplementedError

    @property
    def id(self) -> str:
        """Unique sandbox id."""
        return self._identity()[0]

    @property
    def provider(self) -> str:
        """Name of the provider that owns it."""
        return self._identity()[1]

    @property
    def spec(self) -> SandboxSpec:
        """The spec it was created from."""
        return self._identity()[2]

    async def exec(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the contract's per-command timeout
        stdout_limit: int = STDOUT_LIMIT,
    ) -> ExecResult:
        """Run a command to completion (:meth:`Sandbox.exec`'s contract), as :meth:`_exec_command`
        of the provider's handle does."""
        return await self._exec_command(command, env, stdin, timeout, stdout_limit)

    async def _exec_command(
        self, command: Command, env: Mapping[str, str] | None, stdin: bytes | None,
        timeout: float | None,  # noqa: ASYNC109
        stdout_limit: int,
    ) -> ExecResult:  # fmt: skip
        """Run a command to completion; past ``timeout``, or ``stdout_limit`` bytes of
        stdout, it is killed and ExecError raised."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._destroy_self()


async def collect(
    events: AsyncGenerator[StreamEvent, None], *, time_limit: float | None, what: str,
    no_status: int = 255, timed_out: str | None = None, stdout_limit: int = STDOUT_LIMIT,
) -> ExecResult:  # fmt: skip
    """A streamed command's output and status (``no_status`` when none came). Past
    ``time_limit`` the stream is closed (which kills the command) and :class:`ExecError`
    raised (``timed_out`` its message, else one naming ``what``), keeping the partial
    output: a timed-out command has no exit status. Past ``stdout_limit`` bytes of stdout
    the stream is closed too and :class:`ExecError` raised (``details['stdout_limit']``),
    with no stdout: the caller reads what it holds, so it is failed, not cut short; stderr
    is kept to its first :data:`STDERR_HEAD` bytes and its end (:data:`STDERR_LIMIT`)."""
    out, err = bytearray(), _Tail()
    code = no_status
    try:
        async with contextlib.aclosing(events), asyncio.timeout(time_limit):
            async for event in events:
                if event.kind == "stdout":
                    if len(out) + len(event.data) > stdout_limit:
                        raise ExecError(
                            f"{what} wrote more than {stdout_limit} bytes to stdout "
                            "and was killed",
                            hint="write large output to a file in the sandbox and read it "
                            "from there",
                            stdout_limit=stdout_limit, stderr=err.value(),
                        )  # fmt: skip
                    out += event.data
                elif event.kind == "stderr":
                    err.add(event.data)
                elif event.exit_code is not None:
                    code = event.exit_code
    except TimeoutError as exc:
        raise ExecError(
            timed_out or f"{what} timed out after {time_limit:g}s and was killed",
            hint="raise the timeout, or run long work through a process manager",
            timeout=time_limit, stdout=bytes(out), stderr=err.value(),
        ) from exc  # fmt: skip
    return ExecResult(code, bytes(out), err.value())


@contextlib.contextmanager
def reading_file(path: str, limit: int) -> Iterator[None]:
    """Around a command that reads ``path`` inside (``cat``) under ``stdout_limit=limit``:
    its stdout past the limit is said as the file being too big, in one line."""
    try:
        yield
    except ExecError as exc:
        if "stdout_limit" not in exc.details:
            raise
        raise ExecError(f"cannot read {path}: it is over {limit} bytes", path=path) from None


STDERR_LIMIT = 1 << 20
"""What is kept of a command's stderr: its first :data:`STDERR_HEAD` bytes and its end. It
only ever says what went wrong (its end, mostly), and what a sandbox writes there is the
agent's: a git filter or a leftover writing to it without end during collection held it all
in the daemon's memory."""
STDERR_HEAD = 64 << 10


class _Tail:
    """A stream's head and end within :data:`STDERR_LIMIT`, the middle dropped and counted."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = STDERR_HEAD - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > 2 * (STDERR_LIMIT - STDERR_HEAD):  # trimmed now and then, not per chunk
            self._trim()

    def _trim(self) -> None:
        over = len(self.tail) - (STDERR_LIMIT - STDERR_HEAD)
        if over > 0:
            del self.tail[:over]
            self.dropped += over

    def value(self) -> bytes:
        self._trim()
        if not self.dropped:
            return bytes(self.head + self.tail)
        return bytes(self.head) + f"\n[... {self.dropped} bytes ...]\n".encode() + bytes(self.tail)
