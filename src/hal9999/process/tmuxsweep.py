"""The sweep of the per-user tmux socket directory: entries no live run, server or hal needs.

A run's entry goes at its end when the manager that made or adopted it sees that end
(:mod:`hal9999.process.tmuxowned`); the rest stayed for ever: entries of runs whose end no
such manager saw, of a killed ``hal`` (its run's socket, its early pane's socket and FIFO), a
killed daemon's warm-pane FIFOs, the shared servers' sockets once their last run ended,
tmux's lock files of a killed client, and everything from before (thousands of entries on a
busy host; the warm panes' sweep at a daemon's first tmux run lists them). :func:`sweep`
removes one only when it is provably dead and provably hal's, and runs where a pass costs
nothing on a task's path: in a thread of the daemon, at its keeper's first round and then
every :data:`SWEEP_EVERY` s.

Provably hal's: the directory is this uid's (not a link), the entry is this uid's and has a
name only hal gives (a run's ``<20 hex>``, a shared server's ``s-``, an early pane's ``e-``, a
warm pane's ``w-``, tmux's ``.lock`` of one of them). Anything else is left.

Provably dead:

- a server's socket (run, shared, early): tmux's own rule, as its client applies it before
  it unlinks a socket to start a server there. A connect is refused (a live server accepts,
  even a stopped one: its backlog), then with tmux's lock on ``<socket>.lock`` taken if
  there is one (a client starting a server there holds it from its refused connect until
  its server listens: between ``bind`` and ``listen`` a connect is refused too) a second
  connect is refused. A client that starts a server there after that binds a new socket, at
  a new inode, which the removal below leaves. A socket changed less than :data:`MIN_AGE_S`
  ago is left: a live server makes its socket anew on SIGUSR1, without the lock;
- a run's link to a shared server: the server's socket is dead (a new server there has none
  of the old sessions), or the live server has no session of the run's key (one
  ``list-sessions`` per server; a run links first and makes its session after, so a link
  younger than :data:`MIN_AGE_S` is left);
- an early or warm pane's FIFO: the ``hal`` named in it (its pid) is gone (it held the FIFO
  open; its pane's supervisor read the FIFO's end). A pid alive, even reused, keeps it (as
  :meth:`WarmPanes.sweep`, this takes the directory's hals to share this pid namespace);
- a lock file nobody holds, older than :data:`MIN_AGE_S`.

The entry removed is the one checked: it is renamed aside (atomic), compared
(:func:`tmuxowned.identity`: inode, type, and modification time, which a rename leaves) and
only then unlinked; one made at its path meanwhile (a resumed run of the same spec, an early
pane renamed to a run's socket) is linked back. A sweep killed in between leaves a
``.swept-`` name, removed by the next. Bounded per pass: at most ``most`` entries probed
(the listing stops there; the daemon's next pass comes :data:`SWEEP_SOON` after one that
stopped there: the dead ones probed are gone by then) and :data:`ASK_MOST` tmux clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from hal9999 import fs, procs
from hal9999.process.tmuxearly import SOCKET_DIR
from hal9999.process.tmuxowned import identity

MIN_AGE_S = 60.0
"""An entry changed more recently than this may be one being made right now: left."""

PASS_MOST = 2_000
"""Entries one pass probes (the listing stops there): a probe is dear,
an entry only listed (not hal's, or too young) costs only its lstat."""

ASK_MOST = 4
"""Live shared servers one pass asks for their sessions (a tmux client each)."""

SWEEP_EVERY = 3600.0
"""Seconds between a daemon's passes after its start's."""

SWEEP_SOON = 60.0
"""Seconds to the next pass when one stopped at its bound (more left to look at)."""

_RUN = re.compile(r"[0-9a-f]{20}")
_SHARED = re.compile(r"s-[0-9a-f]{20}")
_EARLY = re.compile(r"e-[0-9]+-[0-9a-f]{8}")
_FIFO = re.compile(r"e-([0-9]+)-[0-9a-f]{8}\.fifo|w-[0-9a-f]{12}-([0-9]+)-[0-9]+")
_GRAVE = ".swept-"
_graves = itertools.count()


class Swept(NamedTuple):
    """What a pass did: entries removed, and whether it stopped at its bound."""

    removed: int
    more: bool


@dataclass
class _Pass:
    """One pass over ``directory``: what it removed, what it learnt of each shared server
    the runs' links name (dead, live, or not to judge), and the links to live ones."""

    directory: str
    now: float
    removed: int = 0
    servers: dict[str, str] = field(default_factory=dict)
    links: dict[str, list[tuple[str, tuple[int, ...]]]] = field(default_factory=dict)


def sweep(directory: str = SOCKET_DIR, *, now: float | None = None, most: int = PASS_MOST) -> Swept:
    """Remove the dead hal entries of ``directory``, probing ``most`` at most."""
    uid = os.getuid()
    try:
        top = os.lstat(directory)
    except OSError:
        return Swept(0, False)
    if not stat.S_ISDIR(top.st_mode) or top.st_uid != uid:
        return Swept(0, False)  # not this uid's directory: nothing in it is provably hal's
    sweep_pass, probed = _Pass(directory, time.time() if now is None else now), 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if probed >= most:
                break
            with contextlib.suppress(OSError):
                made = entry.stat(follow_symlinks=False)
                if made.st_uid == uid and _probe(sweep_pass, entry.name, made):
                    probed += 1
    for shared, links in list(sweep_pass.links.items())[:ASK_MOST]:
        _sweep_links(sweep_pass, shared, links)
    return Swept(sweep_pass.removed, probed >= most)


def _probe(sweep_pass: _Pass, name: str, made: os.stat_result) -> bool:
    """Remove ``name`` if it is a dead hal entry (a link to a live server: noted); whether
    it was probed (anything past the listing's lstat: a connect, a read of /proc, a lock)."""
    path = os.path.join(sweep_pass.directory, name)
    fifo = _FIFO.fullmatch(name)
    if fifo is not None and stat.S_ISFIFO(made.st_mode):
        if procs.started(int(fifo[1] or fifo[2])) is None:
            sweep_pass.removed += _remove(path, made)
    elif sweep_pass.now - max(made.st_ctime, made.st_mtime) < MIN_AGE_S:
        return False
    elif stat.S_ISSOCK(made.st_mode) and _server_name(name):
        sweep_pass.removed += _remove_dead_socket(path, made)
    elif stat.S_ISLNK(made.st_mode) and _RUN.fullmatch(name):
        _look_at_link(sweep_pass, path, made)
    elif stat.S_ISREG(made.st_mode) and name.endswith(".lock") and _server_name(name[:-5]):
        with _tmux_lock(path) as locked:
            if locked:
                sweep_pass.removed += _remove(path, made)
    elif name.startswith(_GRAVE) and not stat.S_ISDIR(made.st_mode):
        sweep_pass.removed += _remove(path, made)
    else:
        return False
    return True


def _server_name(name: str) -> bool:
    return any(form.fullmatch(name) for form in (_RUN, _SHARED, _EARLY))


def _look_at_link(sweep_pass: _Pass, path: str, made: os.stat_result) -> None:
    """A run's link: removed when its shared server is dead, noted when it lives."""
    shared = os.readlink(path)
    if os.path.dirname(shared) != sweep_pass.directory:
        return
    if not _SHARED.fullmatch(os.path.basename(shared)):
        return
    server = sweep_pass.servers.get(shared)
    if server is None:
        server = sweep_pass.servers[shared] = _server(shared, sweep_pass.now)
    if server == "dead":  # none of its sessions is anywhere: a new server has none
        sweep_pass.removed += _remove(path, made)
    elif server == "live":
        sweep_pass.links.setdefault(shared, []).append((path, identity(made)))


def _server(shared: str, now: float) -> str:
    """The shared server at ``shared``: ``dead`` (no socket, or refused), ``live``, or
    ``left`` unjudged (a socket made less than :data:`MIN_AGE_S` ago: one a live server
    made anew on SIGUSR1 has its old sessions)."""
    try:
        server = os.lstat(shared)
    except FileNotFoundError:
        return "dead"
    if not stat.S_ISSOCK(server.st_mode) or server.st_uid != os.getuid():
        return "left"  # not a server's socket of this uid: nothing to judge by
    if now - max(server.st_ctime, server.st_mtime) < MIN_AGE_S:
        return "left"
    return "dead" if _refused(shared) else "live"


def _sweep_links(sweep_pass: _Pass, shared: str, links: list[tuple[str, tuple[int, ...]]]) -> None:
    """Remove the links to the live server at ``shared`` that no session of it is for (a
    run's session on a shared server is named ``<name>-<its key's first 8>``)."""
    try:
        listed = subprocess.run(
            ["tmux", "-N", "-S", shared, "list-sessions", "-F", "#{session_name}"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return
    if listed.returncode != 0:
        return  # not told: nothing is proven
    keys = {name.rpartition("-")[2] for name in listed.stdout.decode(errors="replace").splitlines()}
    for path, checked in links:
        if os.path.basename(path)[:8] not in keys:
            sweep_pass.removed += _remove_if(path, checked)


def _remove_dead_socket(path: str, made: os.stat_result) -> int:
    """tmux's rule: refused, then refused again with its lock held; 1 if removed."""
    if not _refused(path):
        return 0
    with _tmux_lock(f"{path}.lock", remove=True) as locked:
        if locked and _refused(path):
            return _remove(path, made)
    return 0


@contextlib.contextmanager
def _tmux_lock(lock: str, *, remove: bool = False) -> Iterator[bool]:
    """tmux's lock of a socket's path, as its client takes it: yields whether nobody holds it
    (no lock file: nobody; one is not made here: a new inode is dear). A lock taken
    is removed at the end with ``remove`` (a leftover: tmux's server removes its own)."""
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield True
        return
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        if remove:
            with contextlib.suppress(OSError):
                os.unlink(lock)
        os.close(fd)


def _refused(path: str) -> bool:
    """Whether a connect to the socket at ``path`` is refused (no server listens) or finds
    nothing; False when it connects or cannot tell (a full backlog: a live server)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _remove(path: str, made: os.stat_result) -> int:
    return _remove_if(path, identity(made))


def _remove_if(path: str, checked: tuple[int, ...]) -> int:
    """Unlink the entry at ``path`` if it is still the ``checked`` one; 1 if it was.
    Renamed aside first (atomic): what it was is known before anything is unlinked, and an
    entry made at ``path`` meanwhile is linked back (unless a newer one is there)."""
    grave = os.path.join(os.path.dirname(path), f"{_GRAVE}{os.getpid()}-{next(_graves)}")
    try:
        fs.replace(path, grave)
    except OSError:
        return 0
    try:
        same = identity(os.lstat(grave)) == checked
    except OSError:
        return 0
    if not same:
        try:
            os.link(grave, path, follow_symlinks=False)
        except FileExistsError:
            pass  # newer still: the one at the path stands
        except OSError:
            with contextlib.suppress(OSError):
                fs.replace(grave, path)
            return 0
    with contextlib.suppress(OSError):
        os.unlink(grave)
    return 1 if same else 0
