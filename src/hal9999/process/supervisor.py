"""The process supervisor: runs one command, parses and masks its output, records its exit.

Both process managers run the agent under this small program (a ``python -I -S`` that calls
:func:`main`, see :func:`hal9999.process.launch.supervised`) so that output handling is the same
whether the agent lives in a tmux pane or is a plain child. The agent's *raw* output goes to its
parser first (``--parser`` names the agent), so usage, cost and tool calls are read from what
the agent really printed; the parsed events are masked field by field (numbers are never
touched) and appended to the ``--events`` file, each line tagged with the log offset it belongs
to, for the runner to emit. Only then is the text masked, for the terminal (what ``hal task
attach`` shows) and for the log, which is capped (see :mod:`hal9999.process.caplog`). When the
command ends its exit status is written atomically to the exit file, which survives the ``hal``
process that started the run.

The names of the secret variables come in ``--mask-var`` options (values read from this
process's own environment, never from argv); ``--mask-file`` names host credential files whose
token-like values are secrets too.
"""

from __future__ import annotations

import codecs
import posix
import sys

from hal9999 import fs
from hal9999.process.caplog import CappedLog, beside
from hal9999.process.parsedevents import ParsedEvents, load_site
from hal9999.process.runlock import hold_running

# Every task starts this program, so at run time it imports only what a run uses: no
# argparse, subprocess, typing or pathlib, and the masker only when there is a secret to mask
# (every task starts one). The agents' code, the event
# models and the credential reader come only with a parser or mask files. Not even `os`
# (`posix` has its calls): with `posixpath` and `_collections_abc`, a sixth of its start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    import signal
    from typing import Any, TextIO

    from hal9999.redact import SecretMasker
else:
    # The C module under `signal` (same names), which builds its enums at import with
    # `enum`, `functools` and `collections`, on every task's supervisor start.
    import _signal as signal

USAGE = (
    "usage: hal-supervisor --log LOG --exit EXIT [--mask-var NAME]... [--mask-file PATH]... "
    "[--parser AGENT --events PATH] [--log-cap BYTES] [--go FIFO] [--restarts N] "
    "[--dies-with LAUNCHER] [--claim MARKER [--claim-as PATH]] [--stop-grace SECONDS] "
    "-- COMMAND..."
)


def ended_path(exit_file: str | os.PathLike[str]) -> str:
    """The FIFO beside ``exit_file`` that hal makes before a start and listens on: once the
    exit status is written, a byte there wakes the follower at once instead of at its next
    poll."""
    path = posix.fspath(exit_file)
    return beside(path, f".{path.rpartition('/')[2]}.ended")


def go_path(exit_file: str | os.PathLike[str]) -> str:
    """The FIFO beside ``exit_file`` a supervisor started ahead of its run (``--go``) waits
    on: a ``g`` there starts the command; its end without one (its writer, hal, gone or
    done with the run) ends the supervisor without starting anything."""
    path = posix.fspath(exit_file)
    return beside(path, f".{path.rpartition('/')[2]}.go")


def unstarted_path(exit_file: str | os.PathLike[str]) -> str:
    """The marker beside ``exit_file`` a supervisor started ahead of its run (``--go``)
    makes when its go FIFO ends without a ``g``: its command never started, so a next
    daemon knows the run left no agent (nothing ran, no exit status) rather than one that
    may have run and gone."""
    path = posix.fspath(exit_file)
    return beside(path, f".{path.rpartition('/')[2]}.unstarted")


def mark_unstarted(exit_file: str) -> None:
    """Make the :func:`unstarted_path` marker of ``exit_file`` (one ``open``: there or not;
    never through a link). Best effort: without it the run's end is what it always was."""
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC
    try:
        posix.close(posix.open(unstarted_path(exit_file), flags, 0o600))
    except OSError:
        pass


def claim_start(marker: str, keep_as: str | None = None) -> bool:
    """Whether this run may start: the :func:`unstarted_path` marker hal made before the
    run's ``running`` (``--claim``: direct, PM2) taken here by an ``unlink``, or a
    ``rename`` to ``keep_as`` (``--claim-as``: direct's pid file, one inode for both).
    Recovery takes it as well (:func:`hal9999.process.base.take_unstarted`): the command
    starts or the task is queued again, never both."""
    try:
        if keep_as is None:
            posix.unlink(marker)
        else:
            # Its pid in first (hal writes the same once its spawn returns: one killed before
            # then left the pid file empty, a run no next daemon could adopt or stop).
            fd = posix.open(marker, posix.O_WRONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
            try:
                posix.write(fd, str(posix.getpid()).encode())
            finally:
                posix.close(fd)
            fs.replace(marker, keep_as)
    except OSError:  # taken (gone) or not to be had: nothing may start
        return False
    return True


def wait_go(fifo: str) -> bool | None:
    """Whether the run may start: a ``g`` read from ``fifo``; None when it ended without one
    and ``fifo`` names another (a later try's: this one was dropped). Opened without waiting
    for a writer, so a hal that died before it held the FIFO cannot leave this waiting.
    A ^C in the pane (someone attached) has no command yet to be passed on to: SIGINT is
    ignored from before the FIFO is opened (one that came between the open and the read
    ended the supervisor with a traceback)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _read_go(fifo)
    finally:
        signal.signal(signal.SIGINT, previous)


def _open_fifo(fifo: str) -> tuple[int, os.stat_result] | None:
    """``fifo`` opened for blocking reads (without waiting for a writer, nor following a
    link) and its status; None when it cannot be opened or is not a FIFO."""
    try:
        fd = posix.open(
            fifo, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_NOFOLLOW | posix.O_CLOEXEC
        )
    except OSError:
        return None
    try:
        held = posix.fstat(fd)
        if held.st_mode & _S_IFMT == _S_IFIFO:
            posix.set_blocking(fd, True)
            return fd, held
    except OSError:
        pass
    posix.close(fd)
    return None


def _read_go(fifo: str) -> bool | None:
    opened = _open_fifo(fifo)
    if opened is None:
        return False
    fd, held = opened
    try:
        if posix.read(fd, 1) == b"g":
            return True
        try:
            named = posix.stat(fifo, follow_symlinks=False)
        except OSError:
            return None
        return False if (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev) else None
    except OSError:
        return False
    finally:
        posix.close(fd)


def wait_warm(fifo: str) -> tuple[list[str], dict[bytes, bytes]] | None:
    """The run a *warm* supervisor (``--warm FIFO``, started before its run was known, see
    :mod:`hal9999.process.tmuxwarm`) is handed: its options and command, and the exact
    environment of its command, read from ``fifo`` (never argv). None when the FIFO ends
    first (its writer, the daemon, gone or done with the pane): nothing is to run.

    The message is ``LENGTH\n`` then ``LENGTH`` bytes: the working directory, the number of
    arguments, the arguments and the ``NAME=value`` variables, each ended by a NUL. The
    working directory is entered here (a pane's is the one it was opened in)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as wait_go's
    try:
        return _read_warm(fifo)
    finally:
        signal.signal(signal.SIGINT, previous)


def _read_warm(fifo: str) -> tuple[list[str], dict[bytes, bytes]] | None:
    opened = _open_fifo(fifo)
    if opened is None:
        return None
    fd = opened[0]
    try:
        data = b""
        while b"\n" not in data:
            chunk = posix.read(fd, 64)
            if not chunk:
                return None
            data += chunk
        head, _, data = data.partition(b"\n")
        length = int(head)
        while len(data) < length:
            chunk = posix.read(fd, length - len(data))
            if not chunk:
                return None
            data += chunk
        fields = data[:length].split(b"\0")[:-1]
        count = int(fields[1])
        argv = [arg.decode(*_CODING) for arg in fields[2 : 2 + count]]
        env = dict(item.partition(b"=")[::2] for item in fields[2 + count :])
        posix.chdir(fields[0])
        return argv, env
    except (OSError, ValueError, IndexError):
        return None
    finally:
        posix.close(fd)


def write_exit_status(path: str | os.PathLike[str], status: int) -> None:
    """Record ``status`` at ``path`` atomically, then wake whoever listens for it."""
    path = posix.fspath(path)
    # Not fsynced: a run's end is on its hot path.
    fs.write_text(path, f"{status}\n", mode=None, durable=False)
    _notify_ended(ended_path(path))


_S_IFMT, _S_IFIFO = 0o170000, 0o010000  # stat.S_IFMT's mask, stat.S_IFIFO
_CODING = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # as os.fsdecode's


def _notify_ended(fifo: str) -> None:
    # Never blocks: no reader (ENXIO), no FIFO (a hal from before), or anything not a FIFO
    # where one is expected means the follower polls the exit file as it always did.
    try:
        flags = posix.O_WRONLY | posix.O_NONBLOCK | posix.O_NOFOLLOW | posix.O_CLOEXEC
        fd = posix.open(fifo, flags)
    except OSError:
        return
    try:
        if posix.fstat(fd).st_mode & _S_IFMT == _S_IFIFO:
            posix.write(fd, b"\n")
    except OSError:
        pass
    finally:
        posix.close(fd)


class Options:
    """The supervisor's command line (see :data:`USAGE`)."""

    def __init__(self) -> None:
        self.log = ""
        self.exit_file = ""
        self.mask_var: list[str] = []
        self.mask_file: list[str] = []
        self.parser: str | None = None  # the agent (preset or template) whose parser runs
        self.events: str | None = None  # where parsed events go (JSON lines)
        self.log_cap: int | None = None  # bytes of output kept in the log per run
        self.go: str | None = None  # a FIFO to wait on before the start (go_path)
        self.restarts = 0  # runs again after a failed one (on-failure's max_restarts)
        self.claim: str | None = None  # the marker taken before the start (claim_start)
        self.claim_as: str | None = None  # where it goes, this process's pid in it
        self.dies_with: str | None = None  # the launcher it dies with (dying_command)
        self.stop_grace: int | None = None  # seconds a stopped command has, then SIGKILL
        self.command: list[str] = []


class UsageError(Exception):
    """A command line the supervisor cannot run (exit status 2, like argparse's)."""


_LISTS = {"--mask-var": "mask_var", "--mask-file": "mask_file"}
_VALUES = {
    "--log": "log", "--exit": "exit_file", "--parser": "parser", "--events": "events",
    "--log-cap": "log_cap", "--go": "go", "--dies-with": "dies_with",
    "--restarts": "restarts", "--claim": "claim", "--claim-as": "claim_as",
    "--stop-grace": "stop_grace",
}  # fmt: skip


def parse_options(argv: list[str]) -> Options:
    """Read ``argv`` (options, ``--``, the command); :class:`UsageError` when it is wrong."""
    options = Options()
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            options.command = argv[index + 1 :]
            break
        name, eq, value = arg.partition("=")
        if name not in _LISTS and name not in _VALUES:
            if arg.startswith("-"):
                raise UsageError(f"unrecognized argument: {arg}")
            options.command = argv[index:]
            break
        if not eq:
            index += 1
            if index >= len(argv):
                raise UsageError(f"argument {name}: expected one argument")
            value = argv[index]
        if name in _LISTS:
            getattr(options, _LISTS[name]).append(value)
        elif name in ("--log-cap", "--restarts", "--stop-grace"):
            try:
                setattr(options, _VALUES[name], int(value))
            except ValueError:
                raise UsageError(f"argument {name}: invalid int value: {value!r}") from None
        else:
            setattr(options, _VALUES[name], value)
        index += 1
    missing = [flag for flag, attr in (("--log", "log"), ("--exit", "exit_file"))
               if not getattr(options, attr)]  # fmt: skip
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    if not options.command:
        raise UsageError("a command is required after --")
    return options


def _masker(options: Options, environ: dict[bytes, bytes]) -> SecretMasker | None:
    """The run's secrets, or None when there is none (nothing to mask, nothing imported)."""
    # os.environ's values, read as it does (bytes decoded as file names are).
    values = [
        raw.decode(*_CODING)
        for name in options.mask_var
        if (raw := environ.get(name.encode(*_CODING)))
    ]
    if options.mask_file:  # only then: hal9999.credentials brings the config's models
        load_site()
        from pathlib import Path

        from hal9999.credentials import file_secrets

        for path in options.mask_file:
            values.extend(file_secrets(Path(path)))
    if not values:
        return None
    from hal9999.redact import SecretMasker

    masker = SecretMasker()
    for value in values:
        masker.add(value)
    return masker


def supervise(argv: list[str], environ: dict[bytes, bytes] | None = None) -> int:
    """Run the command described by ``argv`` with ``environ`` (this process's own, as it
    started, by default); return its exit status.

    With ``--restarts N`` a failed run (any status but 0; a death by signal n is 128+n) is
    run again, at once, up to N times, as PM2 runs an ``on-failure`` app for hal: each run's
    output goes on in the same log and events, and the exit status, written once, is the
    last run's. A signal forwarded to the command (a stop) ends the restarts."""
    try:
        args = parse_options(argv)
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}\nhal-supervisor: error: {exc}\n")
        return 2
    if args.claim is not None and not claim_start(args.claim, args.claim_as):
        # Its run was taken by a next daemon's recovery (queued again): nothing starts and
        # nothing of the run is touched (its log, its events, its exit file).
        return 0
    if environ is None:
        environ = posix.environ  # bytes; the supervisor never changes it
    masker = _masker(args, environ)
    log = CappedLog(args.log, args.log_cap)
    parsed = ParsedEvents(args.parser, args.events, masker)

    def masked(text: str) -> str:
        return masker.mask(text) if masker is not None else text

    if args.go is not None and not (go := wait_go(args.go)):
        # Started ahead of a run that never came (it failed first, or hal is gone): nothing
        # ran, no exit status, but a marker saying so (not when a later try's FIFO is there).
        log.close()
        parsed.close(log.size)
        if go is False:
            mark_unstarted(args.exit_file)
        return 0

    child = [0]  # the running command's pid (its group's), for the signal handler
    stopped: list[int] = []
    running = hold_running(args.exit_file)  # released by this process's end, never before

    def forward(signum: int, _frame: object) -> None:
        # The child runs in its own session so a terminal's signals reach it only through us.
        if not stopped and args.stop_grace:
            # A stopped command has its grace to end by itself (a relay brings the work
            # back on its way out), then is killed: a stop waits for this process's end.
            signal.signal(signal.SIGALRM, kill)
            signal.alarm(args.stop_grace)
        stopped.append(signum)
        try:
            posix.killpg(child[0], signum)
        except ProcessLookupError:
            pass

    def kill(_signum: int, _frame: object) -> None:
        forward(signal.SIGKILL, None)

    restarts = args.restarts
    while True:
        try:
            child[0], output = _spawn(dying_command(args), environ)
        except OSError as exc:
            log.write(f"hal: cannot start {args.command[0]}: {exc.strerror}\n".encode())
            status = 127
            break
        if stopped:  # a stop came while the run restarted: it ends this run too
            forward(stopped[-1], None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        status = _follow(child[0], output, log, parsed, masker, stopped)
        if status == 0 or restarts <= 0 or stopped:
            break
        restarts -= 1
    parsed.close(log.size)
    for problem in parsed.problems:
        log.write(masked(problem).encode())
    log.close()
    write_exit_status(args.exit_file, status)
    del running  # held to the end: the process's exit lets go of it
    return status


DRAIN_S = 2.0
"""How long a stopped run's output is still read once its command has ended (what is left of
its process group killed then). What the command wrote is in the pipe by then; a process of
the sandbox outside that group may hold the pipe open until the sandbox is destroyed, which
waits for this supervisor's end (bwrap sets ``--die-with-parent`` in its child after the
clone: an outer bwrap killed before that leaves the sandbox's init running)."""


def _follow(
    child: int,
    output: int,
    log: CappedLog,
    parsed: ParsedEvents,
    masker: SecretMasker | None,
    stopped: list[int],
) -> int:
    """Copy one run's output (parsed, then masked) until it ends; its exit status. Once a
    stop was forwarded, it ends :data:`DRAIN_S` after the command, whoever holds the pipe."""
    import select  # a signal wakes the wait (its wakeup fd): a stop is seen while it waits
    import time

    stream = masker.stream() if masker is not None else None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    wake, woken = posix.pipe()
    posix.set_blocking(woken, False)
    previous = signal.set_wakeup_fd(woken)
    poller = select.poll()
    poller.register(output, select.POLLIN)
    poller.register(wake, select.POLLIN)
    ended: int | None = None  # the command's wait status, once reaped here
    until = 0.0
    final = False
    try:
        while not final:
            if stopped:
                if ended is None:
                    pid, raw = posix.waitpid(child, posix.WNOHANG)
                    if pid:
                        ended, until = raw, time.monotonic() + DRAIN_S
                        # What it left in its group (a shell's background job, a sandbox's
                        # init) is stopped with it: the command's part is done.
                        try:
                            posix.killpg(child, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                if ended is not None and time.monotonic() >= until:
                    final = True  # what is left is the sandbox's, not the command's
            ready = [] if final else [fd for fd, _ in poller.poll(200 if stopped else None)]
            if wake in ready:
                posix.read(wake, 512)
            if not final and output not in ready:
                continue
            chunk = b"" if final else posix.read(output, 65536)
            final = not chunk
            raw_text = decoder.decode(chunk, final=final)
            if stream is None:
                text = raw_text
            else:
                text = stream.feed(raw_text) + (stream.flush() if final else "")
            if text:
                # The log first: parsed events name the log offset they are covered by.
                log.write(text.encode())
                _emit(text, sys.stdout)
            parsed.feed(raw_text, log.size)
            while parsed.problems:
                problem = parsed.problems.pop(0)
                log.write((masker.mask(problem) if masker is not None else problem).encode())
    finally:
        signal.set_wakeup_fd(previous)
        posix.close(wake)
        posix.close(woken)
    posix.close(output)
    if ended is None:
        ended = posix.waitpid(child, 0)[1]
    status = posix.waitstatus_to_exitcode(ended)
    return 128 - status if status < 0 else status


def dying_command(options: Options) -> list[str]:
    """The command as it is spawned: with ``--dies-with``, under the launcher that sets its
    death signal (SIGKILL) tied to this process, then checks this process is its parent
    still, then ``exec``s it. A supervisor that is killed (``kill -9``, the OOM killer)
    cannot forward a signal: without it the command, in a session of its own, lived on
    unseen. For a bwrap sandbox (its own ``--die-with-parent``) or a keeper's (the launcher
    entering its namespaces is the PID namespace's monitor) the whole tree dies with it; for
    other providers, the process the launcher ``exec``s (the local command, the ssh or
    container client), the rest going when the sandbox is restarted after the run."""
    if options.dies_with is None:
        return options.command
    return [options.dies_with, "--dies-with", str(posix.getpid()), "--", *options.command]


def _spawn(command: list[str], environ: dict[bytes, bytes]) -> tuple[int, int]:
    """Start ``command`` in a new session, stdout and stderr into a pipe, stdin from
    /dev/null unless it is a terminal; its pid and the pipe's read end."""
    read, write = posix.pipe()  # both close-on-exec; the child's copies on 1 and 2 are not
    actions: list[tuple[Any, ...]] = [
        (posix.POSIX_SPAWN_DUP2, write, 1),
        (posix.POSIX_SPAWN_DUP2, write, 2),
    ]
    if not posix.isatty(0):
        actions.append((posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0))
    try:
        pid = posix.posix_spawnp(command[0], command, environ, file_actions=actions, setsid=True)
    except BaseException:
        posix.close(read)
        raise
    finally:
        posix.close(write)
    return pid, read


def _emit(text: str, sink: TextIO) -> None:
    try:
        sink.write(text)
        sink.flush()
    except (OSError, ValueError):
        # A closed terminal (detached tmux client gone) must not stop the log.
        pass


def main() -> None:
    """Entry point of the supervisor process (see :func:`hal9999.process.launch.supervised`)."""
    # Nothing this process inherited past stdio is the agent's (subprocess's close_fds did
    # this in the child; posix_spawn does not).
    posix.closerange(3, posix.sysconf("SC_OPEN_MAX"))
    argv = sys.argv[1:]
    if len(argv) == 2 and argv[0] == "--warm":
        # Started before its run (a daemon's warm pane): the run comes through the FIFO.
        run = wait_warm(argv[1])
        if run is None:
            raise SystemExit(0)  # no run came: nothing ran, no exit status
        raise SystemExit(supervise(run[0], _warm_environ(run[1])))
    raise SystemExit(supervise(argv))


_PANE_VARIABLES = (b"TERM", b"TMUX", b"TMUX_PANE")
"""What tmux sets in every pane's environment, over the session's (the run's)."""


def _warm_environ(run: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The environment a pane opened for the run would have had: the server's global one
    (this pane's, which has nothing of hal's), the run's over it, tmux's own over both."""
    environ = {**posix.environ, **run}
    for name in _PANE_VARIABLES:
        if name in posix.environ:
            environ[name] = posix.environ[name]
    return environ


if __name__ == "__main__":
    main()
