"""An in-process ``hal run``'s tmux server and its pane's supervisor, started while it imports.

Without a daemon, a run's tmux server (its option tables and key
bindings) and its pane's supervisor (an interpreter) would be started by the run's
prestart, after hal has imported its ~350 modules and made the task and its sandbox: on a
trivial run's path, most of the wall time between the sandbox and the agent's start. Here they
start first, in the background, as the uncommitted-changes check does
(:mod:`hal9999.cli.notices`), so they run on another core while this process imports.

The pane is a *warm* one (:mod:`hal9999.process.tmuxwarm`): its supervisor knows nothing of
any run, its argv names only a private FIFO (0600, in the per-user socket directory), the
server's global environment holds nothing of hal's (``TERM`` and tmux's own), and the run's
options, command and exact environment reach it through the FIFO (never argv). The FIFO is
held open (read and write: never waits) by this process: should it end before the run is
handed over, however it ends, the supervisor reads the FIFO's end and exits without starting
anything, its session and server with it. :meth:`TmuxProcessManager.prestart` claims the
pane (once) for the first tmux run of the process: the server's socket is renamed to the
run's own socket, the session renamed to the run's, and from there the run is that of a
server of its own, as before. A pane nobody claims (a config naming another process manager,
a command that failed first) is let go by :func:`let_early_go`. A ``hal`` killed before
its run claimed the pane leaves the socket and FIFO files behind; nothing sweeps the directory
on the run's path (a run's own entry goes at its end, :mod:`hal9999.process.tmuxowned`; the
rest a daemon's sweep removes off any run's path, :mod:`hal9999.process.tmuxsweep`).

Light at import: ``os``, ``tempfile`` and :mod:`hal9999.hostchild`; the event loop only where
the pane is claimed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from hal9999.hostchild import HostChild
from hal9999.process.supervisorargv import SUPERVISOR

SOCKET_DIR = os.path.join(tempfile.gettempdir(), f"hal9999-tmux-{os.getuid()}")
"""The per-user directory of hal's tmux sockets (Unix socket paths are limited to 107 bytes,
so they live in a short one)."""


def own_socket_dir() -> None:
    """:data:`SOCKET_DIR`, made (mode 700) or found as this user's alone. It is in a shared
    place (``/tmp``): whoever made it first could replace hal's sockets in it and take the
    panes of every agent, so one that is not is refused in one line (``ProcessError``)."""
    from hal9999.unixsock import own_dir  # here: the early start must stay light

    own_dir(Path(SOCKET_DIR), "tmux's sockets", "TMPDIR")


NO_UTMP_BUILT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))),
    "build",
    "hal-noutmp.so",
)
"""Where ``scripts/setup.sh`` builds ``scripts/hal-noutmp.c`` in a source checkout."""
_PREFIX = "e-"
"""The early servers' sockets and FIFOs: ``e-<pid>-<random>`` (and ``.fifo``), which no
other hal file in the directory starts with."""


STATUS_RIGHT = "%H:%M %d-%b-%y"
"""tmux's default right of the status line but the pane's title (the agent's to set)."""


def start_argv(tmux: str, socket: str, preload: bool) -> list[str]:
    """Start (or find) the server at ``socket`` with the options every hal server has."""
    return [
        tmux,
        "-S",
        socket,
        "-f",
        "/dev/null",
        # Before the agent's pane exists: the agent must not write the clipboard of
        # whoever attaches (OSC 52 passes through to the outer terminal otherwise),
        # nor pass any sequence through tmux to that terminal (`ESC P tmux; ...`),
        # whatever the defaults of this tmux say (-q: a tmux before 3.3 has no such
        # option, and passes nothing through).
        "start-server",
        ";",
        *(["set-environment", "-g", "-u", "LD_PRELOAD", ";"] if preload else []),
        "set-option",
        "-s",
        "set-clipboard",
        "off",
        ";",
        "set-option",
        "-gq",
        "allow-passthrough",
        "off",
        ";",
        # tmux's status line shows the pane's title, which the agent sets (OSC 2): "hal: run
        # succeeded" in the status line of whoever attaches. The same line without it.
        "set-option",
        "-g",
        "status-right",
        STATUS_RIGHT,
        ";",
    ]


def new_session(name: str, cwd: str) -> list[str]:
    """tmux's ``new-session`` of a detached 200x50 session ``name`` in ``cwd``, printing its
    pane's process (to be watched through /proc), up to the ``--`` its command follows."""
    return ["new-session", "-d", "-P", "-F", "#{pane_pid}", "-s", name,
            "-x", "200", "-y", "50", "-c", cwd, "--"]  # fmt: skip


class EarlyPane:
    """The server and warm pane :func:`open_early` started: the tmux program, the server's
    socket, the session's name, its FIFO (held open as ``fd``) and the client that made it."""

    def __init__(
        self, tmux: str, socket: str, name: str, fifo: str, fd: int, client: HostChild
    ) -> None:
        self.tmux, self.socket, self.name, self.fifo, self.fd = tmux, socket, name, fifo, fd
        self.client = client

    async def printed(self) -> str | None:
        """What the client printed (the pane's process) once it has ended; None when it
        failed. Its end is awaited on a pidfd, not polled."""
        import asyncio

        if self.client.poll() is None:
            loop = asyncio.get_running_loop()
            ended = loop.create_future()
            pidfd = os.pidfd_open(self.client.pid)
            loop.add_reader(pidfd, _set_done, ended)
            try:
                await ended
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        status = self.client.wait()
        assert self.client.stdout is not None
        os.set_blocking(self.client.stdout, False)
        out = b""
        with contextlib.suppress(BlockingIOError):
            out = os.read(self.client.stdout, 4096)
        self.client.stop()  # closes the pipe
        return out.decode("ascii", "replace") if status == 0 else None

    def let_go(self) -> None:
        """Close the FIFO (a waiting supervisor exits, its session and server with it) and
        remove the FIFO and the socket."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        for path in (self.fifo, self.socket):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self.client.poll() is not None and self.client.stdout is not None:
            self.client.stop()


def _set_done(future: Any) -> None:
    if not future.done():
        future.set_result(None)


_early: EarlyPane | None = None
"""This process's early pane, until a run claims it or it is let go."""


def open_early(tmux: str, no_utmp: str | None) -> None:
    """Start a tmux server with a warm pane for this process's run, in the background
    (``no_utmp``: the library the server loads, see :mod:`hal9999.process.tmux`). Nothing
    when it cannot (the run then opens its own, as before)."""
    global _early
    if _early is not None:
        return
    from hal9999.unixsock import private_dir

    try:  # not this user's alone: no early pane (the run refuses it in one line)
        private_dir(Path(SOCKET_DIR))
    except OSError:
        return
    key = f"{_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    socket = os.path.join(SOCKET_DIR, key)
    fifo = f"{socket}.fifo"
    try:
        os.mkfifo(fifo, 0o600)
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    name = f"hal-early-{os.getpid()}"
    # The server's global environment, every pane's base: nothing of hal's (the server loads
    # the no-utmp library, the pane does not); the session copies TERM from this client.
    env = {"TERM": "xterm-256color"}
    if no_utmp is not None:
        env["LD_PRELOAD"] = no_utmp
    argv = [
        *start_argv(tmux, socket, no_utmp is not None),
        *["set-option", "-g", "update-environment", "TERM", ";"],
        *new_session(name, SOCKET_DIR),
        *SUPERVISOR,
        "--warm",
        fifo,
    ]
    try:
        client = HostChild(tmux, argv, env, no_input=True)
    except OSError:
        os.close(fd)
        os.unlink(fifo)
        return
    _early = EarlyPane(tmux, socket, name, fifo, fd, client)


def take_early(tmux: str | None) -> EarlyPane | None:
    """This process's early pane for a run (once), if it was started with the same ``tmux``."""
    global _early
    early, _early = _early, None
    if early is not None and early.tmux != tmux:
        early.let_go()
        return None
    return early


def let_early_go() -> None:
    """Let this process's early pane go if no run claimed it."""
    global _early
    early, _early = _early, None
    if early is not None:
        early.let_go()
