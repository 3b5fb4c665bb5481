"""Running sandbox commands as host processes: exact environment, own session, sure kills.

Every command starts in a session of its own, from a :class:`Launch` whose ``env`` is the
complete environment: nothing leaks in from the ``hal`` process, and secrets travel in the
environment, never in argv (which ``ps`` shows to every user).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from hal9999.errors import ExecError, ProviderError
from hal9999.hostread import read_all
from hal9999.procs import kill_pinned
from hal9999.providers.base import STDOUT_LIMIT, ExecResult, Launch, StreamEvent
from hal9999.providers.handle import collect
from hal9999.providers.host.user import trusted_program

LAUNCHER_SCRIPT = (
    'f=; if [ "$1" = --parent ]; then [ "$2" = "$PPID" ] || exit 137; f=$2; shift 2; fi; '
    'while [ "$1" = --data ]; do case $2 in [3-8]) ;; *) exit 125 ;; esac; '
    'eval "exec $2<<HAL_DATA\n\\$3\nHAL_DATA\n" || exit 125; shift 3; done; '
    "HAL_SANDBOX=$1; export HAL_SANDBOX; "
    '[ -z "$2" ] || exec 9<"$2" || exit 125; [ -z "$3" ] || ulimit -f "$3" || exit 125; '
    "shift 3; "
    'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; '
    '[ -z "$f" ] || { read -r f < /proc/$$/stat && f=${f##*) } && f=${f#* } && '
    '[ "${f%% *}" = "$PPID" ]; } || exit 137; exec "$@"'
)
"""Takes the pid of the hal that spawned it after ``--parent`` (see :func:`parented`), gives
each ``--data FD TEXT`` (FD 3 to 8) a pipe holding TEXT and a newline on fd FD (a
here-document; the fd's number checked before ``eval`` sees it, the text never parsed), marks
the process, opens the seccomp filter (if any) as fd 9, caps the size of any one file (if
asked), joins the cgroups named before ``--``, checks that its parent is still that hal, then
execs the rest. ``$PPID`` is the parent the shell started with: checked to be the hal at the
start, then against the parent at the end (``/proc/$$/stat``'s fourth field, after the
command name's closing parenthesis). ``f`` is the one scratch variable, as the join loop's
was before: nothing else the command's environment might carry is set.

A constant, never interpolated: everything variable is a positional argument. Writing
itself (``0``) into the cgroups before exec means the sandboxed program and all it forks
are born inside; a failed write exits 125 rather than run the command without its limits.
The marker is set here, not in the launch env, so a host wrapper around the launcher (a
process manager's supervisor) is not mistaken for a sandbox process. The filter travels as
an fd because bwrap's ``--seccomp`` reads it from one (and closes it before the command
runs). The file size cap is the shell's own ``ulimit -f`` (POSIX: 512-byte blocks, soft and
hard limit alike) rather than a ``prlimit`` exec: one process less per command. The parent's
check after the joins: a hal that died while this process was in flight (forked, not yet in
its cgroup: its stop's cgroup kill and marker scan did not see it) means nothing runs (exit
137). A shell cannot set the death signal the static launcher sets with it: a hal that dies
after the check leaves bwrap to set its own (``--die-with-parent``) as it starts.

:data:`LAUNCH_HELPER_BUILT` does the same as one static program (no shell, no loader) and
is used in its place whenever it is there (:func:`launch_helper`).
"""
_SCRIPT_PREFIX = ["/bin/sh", "-c", LAUNCHER_SCRIPT, "hal-launch"]
LAUNCH_HELPER_BUILT = Path(__file__).resolve().parents[4] / "build" / "hal-launch"
"""Where ``scripts/setup.sh`` builds ``scripts/hal-launch.c`` in a source checkout."""
FSIZE_BLOCK = 512
"""The unit of ``ulimit -f`` in a POSIX shell (dash; bash run as ``sh``)."""
SECCOMP_FD = 9
"""The fd the launcher opens the seccomp filter on (see :data:`LAUNCHER_SCRIPT`)."""
MARKER_VAR = "HAL_SANDBOX"
"""Set in every sandbox process's environment, so they can be found without a cgroup."""
EXEC_MARKER_VAR = "HAL_EXEC"
"""Set per command by :func:`stream`, so a command closed early can be hunted down whole."""
CHUNK = 65536
QUEUE_CHUNKS = 64
DRAIN_GRACE = 1.0
KILL_DEADLINE = 3.0


LAUNCH_HELPER_ENTER = b"hal-launch abi: enter-else"
"""What a build of the static launcher that takes ``--enter`` with ``--else`` holds (the
command's bwrap argv, run when the keeper is gone by the time the launcher opens it). An
older build would take ``--enter`` for a sandbox name, or ``--else`` for one."""
LAUNCH_HELPER_DATA = b"hal-launch abi: data"
"""What a build that takes ``--data`` holds; a build without it is not used at all."""
LAUNCH_HELPER_PARENT = b"hal-launch abi: parent"
"""What a build that takes ``--parent PID`` holds (see :func:`parented`); a build without it
is not used at all either: a launch without the check would run a command for a dead hal."""
LAUNCH_HELPER_DIES = b"hal-launch abi: dies-with"
"""What a build that takes ``--dies-with`` holds (see :func:`dies_with_helper`)."""
LAUNCH_HELPER_UID = b"hal-launch abi: enter-uid"
"""What a build that takes ``--enter ... --uid UID`` holds: the command's process switches to
UID itself (``scripts/hal-drop.h``) and execs the command, not ``hal-drop``."""
DATA_FDS = range(3, 9)
"""The fds ``--data`` may fill: a shell's redirections name one digit, and 9 is the filter's."""
DATA_MAX = 4096
"""The most bytes (text and newline) one ``--data`` may carry: what any pipe holds unread."""


def launch_helper_enters() -> bool:
    """Whether the static launcher (:func:`launch_helper`) is in use and can run a command
    in a keeper's namespaces (``--enter``, see :mod:`hal9999.providers.bwrap.keeper`);
    :data:`LAUNCHER_SCRIPT` cannot."""
    helper = launch_helper()
    return helper is not None and _takes_enter(helper)


@functools.cache
def _takes_enter(helper: str) -> bool:
    return _holds(helper, LAUNCH_HELPER_ENTER)


def launch_helper_drops() -> bool:
    """Whether the launcher's ``--enter`` also takes ``--uid`` (see :data:`LAUNCH_HELPER_UID`)."""
    helper = launch_helper()
    return helper is not None and _takes_uid(helper)


@functools.cache
def _takes_uid(helper: str) -> bool:
    return _holds(helper, LAUNCH_HELPER_UID)


def dies_with_helper() -> str | None:
    """The static launcher (:func:`launch_helper`) when its build takes ``--dies-with
    PARENT -- PROGRAM``: PROGRAM killed when PARENT dies, and not run when PARENT died
    first (one exec, where ``setpriv`` and ``sh`` are two)."""
    helper = launch_helper()
    return helper if helper is not None and _takes_dies(helper) else None


@functools.cache
def _takes_dies(helper: str) -> bool:
    return _holds(helper, LAUNCH_HELPER_DIES)


def _holds(helper: str, abi: bytes) -> bool:
    try:
        with open(helper, "rb") as program:
            return abi in program.read()
    except OSError:
        return False


@functools.cache
def launch_helper(path: Path = LAUNCH_HELPER_BUILT) -> str | None:
    """The static launcher (``scripts/hal-launch.c``) when it is there, as trustworthy as
    hal's own code (a regular, executable file of root's or ours that nobody else can
    write: it runs with hal's rights) and built to take ``--data`` and ``--parent``. None
    means ``sh`` and :data:`LAUNCHER_SCRIPT`."""
    found = trusted_program(path)
    if found is None or not _holds(found, LAUNCH_HELPER_DATA):
        return None
    return found if _holds(found, LAUNCH_HELPER_PARENT) else None


def launcher_argv(
    sandbox_id: str,
    join_files: Sequence[str],
    argv: Sequence[str],
    *,
    seccomp: str = "",
    max_file_bytes: int = 0,
    enter: Sequence[str] = (),
    data: Sequence[tuple[int, str]] = (),
    helper: str | Literal["auto"] | None = "auto",
) -> list[str]:
    """The host argv that marks the process as ``sandbox_id``'s, opens ``seccomp`` (a file)
    as :data:`SECCOMP_FD`, limits any one file to ``max_file_bytes`` (rounded up to whole
    :data:`FSIZE_BLOCK`; ``0``: no limit), joins the cgroups of ``join_files`` (see
    :meth:`.cgroups.Cgroup.join_files`), then runs ``argv``: by ``helper`` (``auto``:
    :func:`launch_helper`), or ``sh`` when there is none. ``enter``: the options after
    ``--enter`` that run ``argv`` in a keeper's namespaces instead (see
    :mod:`hal9999.providers.bwrap.keeper`; the caller has checked
    :func:`launch_helper_enters`). ``data``: ``(fd, text)``, the fd ``argv`` reads ``text``
    from (a pipe, see :func:`data_args`)."""
    blocks = str(-(-max_file_bytes // FSIZE_BLOCK)) if max_file_bytes > 0 else ""
    if helper == "auto":
        helper = launch_helper()
    launcher = [helper] if helper else list(_SCRIPT_PREFIX)
    launcher += data_args(data)
    if enter:
        if not helper:
            raise ValueError("only the static launcher enters a keeper")
        launcher += ["--enter", *enter]
    return [*launcher, sandbox_id, seccomp, blocks, *join_files, "--", *argv]


def parented(argv: Sequence[str]) -> list[str]:
    """``argv`` as this process spawns it: a launcher's (:func:`launcher_argv`) with
    ``--parent`` and this process's pid first, so that it runs nothing should this process
    die before it is in the sandbox's cgroups, and dies with it after (the static launcher:
    the death signal; see scripts/hal-launch.c). Any other argv as it is. Only for a
    launcher this process spawns itself: a wrapper's (the supervisor's ``--dies-with``, a
    terminal's) parent is another process."""
    helper = launch_helper()
    if helper is not None and argv[:1] == [helper]:
        return [helper, "--parent", str(os.getpid()), *argv[1:]]
    if list(argv[:4]) == _SCRIPT_PREFIX:
        return [*_SCRIPT_PREFIX, "--parent", str(os.getpid()), *argv[4:]]
    return list(argv)


def data_args(data: Sequence[tuple[int, str]]) -> list[str]:
    """The launcher's ``--data`` options that leave each ``(fd, text)``'s ``text`` on a pipe
    at ``fd`` (one of :data:`DATA_FDS`) for the program it runs, e.g. bwrap's ``--file``.
    ``text`` ends in a newline, which the launcher adds (a here-document ends in one)."""
    out: list[str] = []
    for fd, text in data:
        if fd not in DATA_FDS or not text.endswith("\n") or len(text.encode()) > DATA_MAX:
            raise ValueError(f"no launcher data for fd {fd}: {text[:40]!r}")
        out += ["--data", str(fd), text[:-1]]
    return out


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Pipes(asyncio.SubprocessProtocol):
    """Turns pipe callbacks into a queue, and tells process exit apart from pipe EOF.

    ``asyncio.subprocess.Process.wait()`` only returns once the pipes are closed too, so a
    grandchild that keeps them open (a daemon started by the command) would hang us; the
    protocol's ``process_exited`` does not wait for that.
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StreamEvent | Literal["eof", "exited"]] = asyncio.Queue()
        self.exited = asyncio.Event()
        self.transport: asyncio.SubprocessTransport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.queue.put_nowait(StreamEvent("stdout" if fd == 1 else "stderr", data))
        if self.queue.qsize() >= QUEUE_CHUNKS and not self.paused:
            # A slow consumer stalls the command through its pipes, not our memory.
            self._reading(pause=True)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (1, 2):
            self.queue.put_nowait("eof")

    def process_exited(self) -> None:
        self.exited.set()
        self.queue.put_nowait("exited")

    async def next(self) -> StreamEvent | Literal["eof", "exited"]:
        """The next item; reading resumes once the consumer has caught up."""
        item = await self.queue.get()
        if self.paused and self.queue.qsize() <= QUEUE_CHUNKS // 4:
            self._reading(pause=False)
        return item

    def _reading(self, *, pause: bool) -> None:
        assert self.transport is not None
        self.paused = pause
        for fd in (1, 2):
            pipe = self.transport.get_pipe_transport(fd)
            if not isinstance(pipe, asyncio.ReadTransport) or pipe.is_closing():
                continue
            if pause:
                pipe.pause_reading()
            else:
                pipe.resume_reading()


async def stream(
    launch: Launch, *, stdin: bytes | None = None
) -> AsyncGenerator[StreamEvent, None]:
    """Run ``launch`` in a new session, yielding output as it comes and the exit event last.

    When the command exits, whatever it left running in its process group is killed: a
    command runs to completion, background work belongs to a process manager. A process
    that escaped the group and holds the pipes gets :data:`DRAIN_GRACE` seconds before we
    stop reading. Closing the iterator early kills the command.
    """
    loop = asyncio.get_running_loop()
    token = secrets.token_hex(8)
    try:
        transport, pipes = await loop.subprocess_exec(
            _Pipes,
            *parented(launch.argv),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**launch.env, EXEC_MARKER_VAR: token},
            cwd=launch.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ExecError(f"cannot start {launch.argv[0]}: {exc.strerror}{where}") from exc
    pid = transport.get_pid()
    if stdin is not None:
        # Buffered by the transport and flushed before the pipe closes; EPIPE is ignored.
        writer = transport.get_pipe_transport(0)
        assert isinstance(writer, asyncio.WriteTransport)
        writer.write(stdin)
        writer.close()
    try:
        open_pipes, grace_ends = 2, None
        while open_pipes or grace_ends is None:
            try:
                async with asyncio.timeout_at(grace_ends):
                    item = await pipes.next()
            except TimeoutError:
                break
            if item == "eof":
                open_pipes -= 1
            elif item == "exited":
                kill_group(pid)
                grace_ends = loop.time() + DRAIN_GRACE
            else:
                yield item
        returncode = transport.get_returncode()
        assert returncode is not None
        yield StreamEvent("exit", exit_code=exit_status(returncode))
    finally:
        if not pipes.exited.is_set():
            kill_group(pid)
            # Also the process itself, in case it left its group. Not transport.kill():
            # Popen polls first, reaping the child behind asyncio's watcher.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await pipes.exited.wait()
            # What the command started in a session of its own (bwrap's --new-session, or
            # setsid) outlives the group kill; its marker finds it, so that closing the
            # stream returns only once the whole command is gone.
            await kill_marked_by(EXEC_MARKER_VAR, token, what="command")
        transport.close()


async def run(
    launch: Launch, *, stdin: bytes | None, time_limit: float | None, what: str,
    stdout_limit: int = STDOUT_LIMIT,
) -> ExecResult:  # fmt: skip
    """Run ``launch`` to completion.

    Past ``time_limit`` seconds the command's process group is killed and :class:`ExecError`
    raised (``details`` keep ``timeout`` and the partial ``stdout``/``stderr``): a timed-out
    command has no exit status, and a made-up 124 could be mistaken for a real one. Past
    ``stdout_limit`` bytes of stdout, killed too and :class:`ExecError` raised.
    """
    return await collect(
        stream(launch, stdin=stdin), time_limit=time_limit, what=what, no_status=-1,
        stdout_limit=stdout_limit,
        timed_out=None if time_limit is None
        else f"command timed out after {time_limit:g}s and was killed: {what}",
    )  # fmt: skip


def marked_pids(sandbox_id: str) -> set[int]:
    """Host processes whose environment carries ``HAL_SANDBOX=<sandbox_id>``."""
    return _pids_marked(MARKER_VAR, sandbox_id)


def _pids_marked(var: str, value: str) -> set[int]:
    wanted = value.encode()
    return {pid for pid, found in environ_values(var) if found == wanted}


def _marked(pid: int, var: str, value: str) -> Callable[[], bool]:
    """Whether ``pid``'s environment still has ``var=value``."""
    entry = f"{var}={value}".encode()
    return lambda: entry in read_all(f"/proc/{pid}/environ").split(b"\0")


def environ_values(var: str) -> Iterator[tuple[int, bytes]]:
    """``(pid, value)`` for each ``var=value`` entry in a host process's environment (each
    one, as a process may list a variable twice); a process that exits meanwhile, or is
    not ours to read, is passed over."""
    # Every host process, on every stop and destroy: one open, read and close each (see
    # hostread), and no split of an environment that does not name the variable.
    key = f"{var}=".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = read_all(f"/proc/{name}/environ")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if key not in environ:
            continue
        pid = int(name)
        # NUL-separated entries (the last may lack its NUL); only whole ones count.
        for entry in environ.split(b"\0"):
            if entry.startswith(key):
                yield pid, entry[len(key) :]


async def kill_marked(sandbox_id: str) -> None:
    """SIGKILL every process of the sandbox found by its environment marker, until none is left.

    The fallback when no cgroup tracks the sandbox: a process that scrubs its environment
    escapes it, which is why cgroups are preferred whenever the host offers one.
    """
    await kill_marked_by(MARKER_VAR, sandbox_id, what="sandbox")


async def kill_marked_by(var: str, value: str, *, what: str) -> None:
    """SIGKILL every process whose environment has ``var=value``, until none is left."""
    deadline = time.monotonic() + KILL_DEADLINE
    # The scan reads every host process's environment (a few ms with a few hundred): in a
    # thread, so a daemon's loop answers requests and moves other tasks meanwhile.
    while pids := await asyncio.to_thread(_pids_marked, var, value) - {os.getpid()}:
        for pid in pids:
            # Pinned: a marked process that ended since the scan may have left its pid
            # to an unrelated one, which must not be killed.
            kill_pinned(pid, _marked(pid, var, value))
        if time.monotonic() > deadline:
            raise ProviderError(f"processes {sorted(pids)} of {what} {value} survived")
        await asyncio.sleep(0.01)
