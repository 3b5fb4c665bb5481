"""The tmux process manager: each process runs in a tmux session of its own.

In-process (``hal run`` without a daemon) each process has its own tmux server (its own
socket), and ``kill-server`` ends everything of that run. The server is a daemon, so the
agent outlives the ``hal`` process that started it, and ``hal task attach`` opens the live
pane. A foreground ``hal run`` opens that server with a warm pane while it imports
(:mod:`hal9999.process.tmuxearly`): its prestart claims the pane (the socket renamed to the
run's, the session to the run's name) and hands it the run through a private FIFO, as a
daemon's warm pane; otherwise the server's environment, which the pane inherits, holds
exactly the process's exec-time environment.

``hal serve`` shares one server among its runs (:func:`share_server`, a socket per runtime dir,
started or adopted at the daemon's first tmux run: :func:`share_lazily`), and keeps an idle
*warm pane* there whose supervisor has started, for the next run's prestart to claim
(:mod:`hal9999.process.tmuxwarm`: the run's command and environment reach it through a private
FIFO, so no interpreter starts on the run's path). A server's start is dear (its
option tables and key bindings), a session on a live one cheap; sharing keeps the start off
every task's path.
The run's socket is then a symlink to the shared one, so whoever computes it
(``hal task attach``, the next daemon) reaches the run's session, ``=<name>-<key>``, exactly.
The run's exec-time environment reaches the pane through the client's own environment:
``update-environment`` is set to the run's variable names in the same command list as its
``new-session`` (one client's commands run in a row), so the session's environment is copied
from that client, never from argv, and the server's global environment is empty but for tmux's
``PWD``. Stopping a run kills its session (its pane's SIGHUP reaches the supervisor, which ends
the process group), nothing of another run's. The server is held by a *holder* session, ``cat``
of a FIFO the daemon keeps open: it ends when the daemon does, even by ``kill -9``, so the
server ends with its last run's session and is never left empty; a next daemon adopts the live
server, adding its own holder, or starts a new one. A server that dies takes its runs' panes
with it: each is then ``missing`` (status from ``/proc``), as when a per-run server dies.

The server reads no tmux configuration (``-f /dev/null``): a host's or user's ``tmux.conf``
could set hooks or ``run-shell`` commands that run on the host in hal's sessions, or change
how a run ends (``remain-on-exit``, ``default-command``).

The server loads :data:`NO_UTMP_BUILT` where ``scripts/setup.sh`` built it: tmux records no
utmp login for the pane through libutempter's setgid helper (an agent is not a login; two
processes a task). ``LD_PRELOAD`` names it for the server only:
the server's global environment drops it before the pane opens.

Whether a run still lives is asked of the kernel, not of tmux: the manager learns the pane's
process (the supervisor) and its start time once, from ``new-session -P`` when it starts
the run, or from one ``display-message`` for a run it did not start (an adopted one), and
:meth:`status` reads ``/proc`` for it after that. A ``tmux has-session`` (a fork and exec,
and a tmux client's CPU) every second for every running agent would make a daemon with many idle
agents busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from hal9999 import fs, procs
from hal9999.errors import HalError, ProcessError
from hal9999.process import tmuxearly
from hal9999.process.base import (
    ProcessStatus,
    read_exit_status,
    run_ended,
)
from hal9999.process.launch import run_host, supervised
from hal9999.process.supervisor import go_path
from hal9999.process.tmuxearly import new_session, start_argv
from hal9999.process.tmuxowned import OwnSockets
from hal9999.process.tmuxwarm import MESSAGE_MAX, WarmPane, WarmPanes, let_go, message
from hal9999.providers.base import Launch, Sandbox
from hal9999.providers.host.user import trusted_program
from hal9999.spec import ProcessSpec

_SOCKET_DIR = Path(tmuxearly.SOCKET_DIR)
NO_UTMP_BUILT = Path(tmuxearly.NO_UTMP_BUILT)


logger = logging.getLogger(__name__)

_SHARED: dict[Path, tuple[Path, int]] = {}
"""Per runtime dir of a daemon that shares a server: its socket, and the holder's FIFO (held
open by the daemon; the holder session ends at its end)."""

_WARM: dict[Path, WarmPanes] = {}
"""Per runtime dir of a daemon that shares a server: its warm panes."""

_LAZY: dict[Path, asyncio.Lock] = {}
"""The runtime dirs of daemons whose server is started at their first tmux run."""


def share_lazily(runtime_dir: Path) -> None:
    """Share a server among the runs of ``runtime_dir``'s daemon, started (or adopted) at
    its first tmux run: a daemon whose runs use another manager starts none."""
    _LAZY.setdefault(runtime_dir, asyncio.Lock())


async def _shared_of(runtime_dir: Path | None) -> tuple[Path, int] | None:
    """The shared server of ``runtime_dir``'s daemon, started now if it shares lazily; None
    when it shares none (or cannot: each run then starts its own, as in-process)."""
    if runtime_dir is None:
        return None
    shared = _SHARED.get(runtime_dir)
    lock = _LAZY.get(runtime_dir)
    if shared is not None or lock is None:
        return shared
    async with lock:
        if runtime_dir not in _SHARED and runtime_dir in _LAZY:
            try:
                await share_server(runtime_dir)
            except (HalError, OSError) as exc:
                logger.warning("tmux: no shared server: %s", exc)
                _LAZY.pop(runtime_dir, None)  # not tried again for every run
    return _SHARED.get(runtime_dir)


def shared_socket(runtime_dir: Path) -> Path:
    """The socket of the server the daemon of ``runtime_dir`` shares among its runs."""
    key = hashlib.sha256(f"shared\0{runtime_dir}".encode()).hexdigest()[:20]
    return _SOCKET_DIR / f"s-{key}"


async def share_server(runtime_dir: Path) -> Path | None:
    """Start (or adopt) the server the runs of ``runtime_dir``'s daemon share, held by a
    session of this process's; None when tmux is not installed."""
    tmux = shutil.which("tmux")
    if tmux is None:
        return None
    await _release(runtime_dir)
    socket = shared_socket(runtime_dir)
    runtime_dir.mkdir(parents=True, exist_ok=True)
    fifo = runtime_dir / f"tmux-holder-{os.getpid()}"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo, 0o600)
    # Held here (read and write: never waits): the holder's `cat` reads its end when this
    # process ends, however it ends.
    held = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        await _start_shared(tmux, socket, fifo)
    except BaseException:
        os.close(held)
        fifo.unlink(missing_ok=True)
        raise
    _SHARED[runtime_dir] = (socket, held)
    warm = _WARM[runtime_dir] = WarmPanes(tmux, socket)
    warm.sweep()
    return socket


async def _start_shared(tmux: str, socket: Path, fifo: Path, *, check: bool = True) -> None:
    """The shared server at ``socket``, started or found, with a holder reading ``fifo``."""
    tmuxearly.own_socket_dir()
    no_utmp = trusted_program(NO_UTMP_BUILT)
    # The global environment, every pane's base, holds nothing of hal's (the server
    # loads the no-utmp library, the pane does not).
    env = {"LD_PRELOAD": no_utmp} if no_utmp is not None else {}
    holder = f"hal-holder-{os.getpid()}"
    cat = shutil.which("cat") or "/bin/cat"
    argv = start_argv(tmux, str(socket), no_utmp is not None)
    argv += ["new-session", "-d", "-s", holder, "--", cat, str(fifo)]
    await run_host(argv, env=env, check=check)


async def unshare_server(runtime_dir: Path) -> None:
    """Let the shared server of ``runtime_dir`` go: its holder and warm panes end, and the
    server with its last run (running agents stay, for the next daemon to adopt)."""
    _LAZY.pop(runtime_dir, None)
    await _release(runtime_dir)


async def _release(runtime_dir: Path) -> None:
    warm = _WARM.pop(runtime_dir, None)
    if warm is not None:
        await warm.close()
    shared = _SHARED.pop(runtime_dir, None)
    if shared is not None:
        os.close(shared[1])
        (runtime_dir / f"tmux-holder-{os.getpid()}").unlink(missing_ok=True)


def _run_key(
    sandbox: Sandbox, spec: ProcessSpec, env: Mapping[str, str] | None
) -> tuple[object, ...]:
    """What a prestarted pane was opened for: its supervisor's command and environment."""
    return (sandbox.id, spec, dict(env or {}))


def verbatim(arg: str) -> str:
    """``arg`` as tmux reads it back from its command line: tmux takes an argument ending in
    ``;`` for the end of a command (the ``;`` dropped, the arguments after it a tmux command,
    ``run-shell`` say, run on the host outside the sandbox), unless it is escaped as ``\\;``.
    For every argument of an agent's command hal hands tmux, here and on an ssh host."""
    return arg[:-1] + "\\;" if arg.endswith(";") else arg


class TmuxProcessManager:
    """Runs each process in a detached tmux session on the host."""

    name = "tmux"
    survives_caller = True

    def __init__(self, *, runtime_dir: Path | None = None) -> None:
        self._tmux = shutil.which("tmux")
        self._runtime = runtime_dir
        # As trustworthy as hal's own code, as the launcher must be: tmux runs it.
        self._no_utmp = trusted_program(NO_UTMP_BUILT)
        self._panes: dict[Path, tuple[int, int]] = {}
        """Per socket, the pane's process and its start time (a reused pid has another)."""
        self._early: dict[Path, tuple[int, tuple[object, ...]]] = {}
        """Per socket, a run :meth:`prestart` opened: its FIFO and what it was opened for."""
        self._go: dict[Path, int] = {}
        """Per socket, the FIFO of a run :meth:`start` let start, held until it ended."""
        self._claimed: dict[Path, WarmPane] = {}
        """Per socket, the warm pane a run claimed (its FIFO held until the run ended)."""
        self._own = OwnSockets()  # the entries it made: removed when it sees the run end

    def socket(self, spec: ProcessSpec) -> Path:
        """The tmux socket of the process (derived from its log path and name)."""
        key = hashlib.sha256(f"{spec.log_path}\0{spec.name}".encode()).hexdigest()[:20]
        return _SOCKET_DIR / key

    def target(self, spec: ProcessSpec) -> str:
        """The session of ``spec``'s run, exactly (``=``: tmux matches prefixes otherwise):
        on a shared server (the run's socket a link to it) its name has the run's key."""
        socket = self.socket(spec)
        if socket.is_symlink():
            return f"={self._shared_name(spec)}:"  # `:`: its window, for a pane's target
        return spec.name

    def _shared_name(self, spec: ProcessSpec) -> str:
        """The session name of ``spec``'s run on a shared server (names are per home)."""
        return f"{spec.name}-{self.socket(spec).name[:8]}"

    def _base(self, spec: ProcessSpec) -> list[str]:
        if self._tmux is None:
            raise ProcessError("tmux is not installed", hint="apt-get install tmux")
        # -f: the server hal starts loads no /etc/tmux.conf, ~/.tmux.conf or XDG's, whose
        # hooks, run-shell or default-command would run host commands in hal's sessions
        # (only a starting server reads it: a client attaching is unaffected).
        return [self._tmux, "-S", str(self.socket(spec)), "-f", "/dev/null"]

    async def prestart(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Open ``spec``'s session while the caller does other work (a task's checkout), its
        supervisor waiting on a FIFO (``--go``) until :meth:`start` with the same sandbox,
        spec and environment lets the command start: the server's start (its option tables
        and key bindings) and the supervisor's interpreter leave the run's path.

        The FIFO is held open here until the run has ended or is stopped: should this
        process end first, the waiting supervisor reads the FIFO's end and exits without
        starting anything (no exit status), its pane and server with it.

        On a daemon's shared server the run claims a warm pane when one is idle
        (:mod:`hal9999.process.tmuxwarm`): its supervisor has started already."""
        await self.stop(spec)
        launch = supervised(sandbox, spec, env, go=True, restarts=True)
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW  # never waits
        go = os.open(go_path(spec.exit_path), flags)
        try:
            if not await self._claim(spec, launch):
                await self._open(spec, launch)
        except BaseException:
            os.close(go)
            raise
        self._early[self.socket(spec)] = (go, _run_key(sandbox, spec, env))

    async def _claim(self, spec: ProcessSpec, launch: Launch) -> bool:
        """Hand ``spec``'s run to an idle warm pane of the shared server, renamed as the
        run's session, or without a shared server to this process's early pane; False when
        there is none (or the run does not fit one). A hand-over
        that fails raises: the prestart fails, and the start opens the run's own pane."""
        shared = await _shared_of(self._runtime)
        if shared is None:  # in-process: the pane opened while hal imported, if any
            return await self._claim_early(spec, launch)
        warm = _WARM.get(self._runtime) if self._runtime is not None else None
        if warm is None:
            return False
        cwd = str(launch.cwd) if launch.cwd else str(spec.log_path.parent)
        handed = message(launch, cwd)
        if len(handed) > MESSAGE_MAX:
            return False
        pane = warm.claim()
        if pane is None:
            return False
        socket = self.socket(spec)
        tmuxearly.own_socket_dir()
        socket.unlink(missing_ok=True)
        os.symlink(shared[0], socket)  # first: a session is never out of reach of its run
        self._own.note(socket)
        self._claimed[socket] = pane
        self._panes[socket] = (pane.pid, pane.started)
        client = [str(self._tmux), "-N", "-S", str(shared[0])]
        try:
            # One write into an empty pipe of 64 KiB: all of it, at once.
            if os.write(pane.fd, handed) != len(handed):
                raise ProcessError("the warm pane took part of its run")
            rename = ["rename-session", "-t", f"={pane.name}", self._shared_name(spec)]
            await run_host([*client, *rename], env={})
        except BaseException:
            # Not a pane opened anew on the same go FIFO (the claimed supervisor may wait
            # on it): the prestart fails, its go ends, and the start opens the run's own.
            with contextlib.suppress(HalError, OSError):
                await run_host([*client, "kill-session", "-t", f"={pane.name}"], check=False)
            await self.stop(spec)  # its FIFOs and link
            raise
        return True

    async def _claim_early(self, spec: ProcessSpec, launch: Launch) -> bool:
        """Hand ``spec``'s run to the pane this process opened while it imported
        (:mod:`hal9999.process.tmuxearly`): its server, renamed to the run's socket, is the
        run's own from here on. False when there is none (or the run does not fit it)."""
        early = tmuxearly.take_early(self._tmux)
        if early is None:
            return False
        cwd = str(launch.cwd) if launch.cwd else str(spec.log_path.parent)
        handed = message(launch, cwd)
        try:
            printed = await early.printed()
        except OSError:
            printed = None
        lines = printed.strip().splitlines() if printed is not None else []
        pid = int(lines[-1]) if lines and lines[-1].strip().isdigit() else None
        started = procs.started(pid) if pid is not None else None
        if pid is None or started is None or len(handed) > MESSAGE_MAX:
            early.let_go()
            return False
        pane = WarmPane(early.name, Path(early.fifo), early.fd, pid, started)
        socket = self.socket(spec)
        try:
            fs.replace(early.socket, socket)  # first: a session is never out of its run's reach
        except OSError:
            early.let_go()
            return False
        self._own.note(socket)
        self._claimed[socket] = pane
        self._panes[socket] = (pid, started)
        client = [str(self._tmux), "-N", "-S", str(socket)]
        try:
            # One write into an empty pipe of 64 KiB: all of it, at once.
            if os.write(pane.fd, handed) != len(handed):
                raise ProcessError("the early pane took part of its run")
            await run_host([*client, "rename-session", "-t", f"={pane.name}", spec.name], env={})
        except BaseException:
            await self.stop(spec)  # its server, FIFOs and socket
            raise
        return True

    async def start(
        self, sandbox: Sandbox, spec: ProcessSpec, *, env: Mapping[str, str] | None = None
    ) -> None:
        """Start ``spec`` in a new tmux server, or let the one :meth:`prestart` opened for
        the same sandbox, spec and environment start; its pane runs the supervised command."""
        socket = self.socket(spec)
        early = self._early.pop(socket, None)
        if early is not None:
            go, key = early
            pane = self._panes.get(socket)
            alive = pane is not None and procs.started(pane[0]) == pane[1]
            if alive and key == _run_key(sandbox, spec, env):
                os.write(go, b"g")
                self._go[socket] = go  # until the supervisor has surely read it
                self._refill()
                return
            os.close(go)  # another run's pane, or one already gone: not this run's
            if pane is not None and not alive:
                # Ended before its start: killed by a stop from another process (or its
                # server died). A pane opened anew here would run the agent of a run that
                # was stopped, while that stop waits for it to end.
                await self.stop(spec)  # its link, FIFOs and entries
                raise ProcessError(
                    f"the tmux session opened for {spec.name} ended before the run's start "
                    "(stopped, or its tmux server died)"
                )
        await self.stop(spec)
        await self._open(spec, supervised(sandbox, spec, env, restarts=True))
        self._refill()

    def _refill(self) -> None:
        """The next warm pane, opened now that this run has been let start."""
        warm = _WARM.get(self._runtime) if self._runtime is not None else None
        if warm is not None:
            warm.refill()

    def _session(self, spec: ProcessSpec, launch: Launch, name: str) -> list[str]:
        """The ``new-session`` command of ``spec``'s pane running ``launch``."""
        cwd = str(launch.cwd) if launch.cwd else str(spec.log_path.parent)
        return [*new_session(name, cwd), *map(verbatim, launch.argv)]

    async def _open(self, spec: ProcessSpec, launch: Launch) -> None:
        """A new session for ``spec`` whose pane runs ``launch``: on the shared server of
        this manager's daemon, or on a new server of its own."""
        tmux = self._base(spec)[0]  # raises without tmux
        shared = await _shared_of(self._runtime)
        if shared is not None:
            await self._open_shared(spec, launch, shared[0])
            return
        tmuxearly.own_socket_dir()
        server_env = dict(launch.env)
        server_env.setdefault("TERM", "xterm-256color")
        preload = self._no_utmp is not None and "LD_PRELOAD" not in server_env
        if preload:
            server_env["LD_PRELOAD"] = str(self._no_utmp)  # the server's, not the pane's
        argv = start_argv(tmux, str(self.socket(spec)), preload)
        _, out = await run_host([*argv, *self._session(spec, launch, spec.name)], env=server_env)
        self._own.note(self.socket(spec))
        self._remember(spec, out)

    async def _open_shared(self, spec: ProcessSpec, launch: Launch, shared: Path) -> None:
        """``spec``'s session on the daemon's shared server, its socket linked to it."""
        socket = self.socket(spec)
        tmuxearly.own_socket_dir()
        socket.unlink(missing_ok=True)
        os.symlink(shared, socket)  # first: a session is never out of reach of its run
        self._own.note(socket)
        env = dict(launch.env)
        env.setdefault("TERM", "xterm-256color")
        # -N: never a server of this environment (the server's would be every pane's). The
        # session's environment is copied from this client's, the run's exact one (names
        # only in argv; an unset name is unset in the pane).
        names = verbatim(" ".join(sorted(env)))
        argv = [str(self._tmux), "-N", "-S", str(shared),
                "set-option", "-g", "update-environment", names, ";",
                *self._session(spec, launch, self._shared_name(spec))]  # fmt: skip
        try:
            status, out = await run_host(argv, env=env, check=False)
            if status != 0 and self._runtime is not None:
                # The shared server is gone (its runs are missing now): a new one, once (a
                # live one is found, its holder there already).
                await _start_shared(str(self._tmux), shared, self._holder_fifo(), check=False)
                status, out = await run_host(argv, env=env, check=False)
            if status != 0:
                raise ProcessError(f"tmux new-session failed: {out.strip()}")
        except BaseException:
            socket.unlink(missing_ok=True)
            raise
        self._remember(spec, out)

    def _holder_fifo(self) -> Path:
        assert self._runtime is not None
        return self._runtime / f"tmux-holder-{os.getpid()}"

    async def status(self, spec: ProcessSpec) -> ProcessStatus:
        """Exited (with status) once the exit file exists; running while the session lives."""
        code = read_exit_status(spec.exit_path)
        if code is not None:
            self._let_go(self.socket(spec))
            return ProcessStatus("exited", code)
        socket = self.socket(spec)
        pane = self._panes.get(socket)
        if pane is None and self._tmux is not None and socket.exists():
            # A run this manager did not start: tmux names its pane once (and fails as
            # has-session did when the session is gone).
            target = self.target(spec)
            status, out = await run_host(
                [*self._base(spec), "display-message", "-p", "-t", target, "#{pane_pid}"],
                check=False,
            )
            if status == 0:
                self._remember(spec, out)
                self._own.note(socket)  # an adopted run's entry, as its maker's: gone at its end
                pane = self._panes.get(socket)
        if pane is not None and procs.started(pane[0]) == pane[1]:
            return ProcessStatus("running")
        self._panes.pop(socket, None)
        self._let_go(socket)
        # The process may have ended, writing its status, since the first read.
        code = read_exit_status(spec.exit_path)
        return ProcessStatus("exited", code) if code is not None else ProcessStatus("missing")

    def _remember(self, spec: ProcessSpec, printed: str) -> None:
        """Note the pane's process tmux printed (``#{pane_pid}``); nothing when the output
        is not a pid or the process is gone already."""
        lines = printed.strip().splitlines()
        if lines and lines[-1].strip().isdigit():
            pid = int(lines[-1])
            started = procs.started(pid)
            if started is not None:
                self._panes[self.socket(spec)] = (pid, started)

    def _let_go(self, socket: Path) -> None:
        """Close the FIFO of the run at ``socket``: a supervisor still waiting on it ends; its
        socket entry goes if this manager made it (the run has ended, or :meth:`stop` ends it)."""
        self._own.remove(socket)
        early = self._early.pop(socket, None)
        for fd in (early[0] if early is not None else None, self._go.pop(socket, None)):
            if fd is not None:
                os.close(fd)
        pane = self._claimed.pop(socket, None)
        if pane is not None:
            let_go(pane.fd, pane.fifo)

    async def stop(self, spec: ProcessSpec) -> None:
        """Kill the run's tmux server, or its session on a shared one (nothing of another
        run's); the supervisor passes the pane's SIGHUP on to the process group."""
        sock = self.socket(spec)
        self._panes.pop(sock, None)
        self._own.forget(sock)  # not before its server or session is killed: unlinked below
        self._let_go(sock)
        if self._tmux is None:
            return
        if sock.is_symlink():
            target = self.target(spec)
            if sock.exists():
                await run_host([*self._base(spec), "kill-session", "-t", target], check=False)
        elif sock.exists():
            await run_host([*self._base(spec), "kill-server"], check=False)
        sock.unlink(missing_ok=True)
        # tmux returns once the pane is told: the supervisor ends after its command, a relay
        # after bringing the work back, which the sandbox must outlast.
        await run_ended(spec.exit_path)

    def attach_command(self, spec: ProcessSpec) -> list[str] | None:
        """``tmux attach`` to the live session."""
        return [*self._base(spec), "attach-session", "-t", self.target(spec)]
