"""The curated, read-only ``/etc`` of bwrap sandboxes, in a handful of mounts.

Binding each curated host entry on its own costs bwrap a mount (and a walk of the mount
table) per entry on every command. Instead :class:`EtcView` keeps a directory holding a copy
of the curated host files and an empty mount point for each curated directory; a command
binds it as ``/etc`` and binds just those few directories (``ssl``, ``alternatives``, ...)
over their mount points. Nothing outside :data:`ETC` is in it, so the sandbox sees what the
per-entry binds showed: no shadow, no sudoers, none of the rest.

The copy follows the host exactly: every command first stats the curated entries (about 20
``stat`` calls), and any change gives a fresh copy under a new name; the directories are
bound live. Copies nobody has used for :data:`KEEP` seconds are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from hal9999 import fs

ETC = (
    "passwd", "group", "hosts", "resolv.conf", "nsswitch.conf", "host.conf", "gai.conf",
    "services", "protocols", "ssl", "ca-certificates", "pki", "alternatives", "ld.so.cache",
    "localtime", "gitconfig", "os-release", "mime.types",
)  # fmt: skip
"""What toolchains (git, node, python, TLS, DNS) need from the host's /etc; no shadow, no
sudoers, none of the rest."""
KEEP = 600.0
"""Seconds an unused copy is kept: another ``hal`` process that has just picked it (each
command marks the copy it uses) never finds it gone."""
SEEN = 16
"""Host states remembered by one :class:`EtcView` (see ``_seen``); more are forgotten."""
DIR = ".host-etc"
"""Under a state dir outside a HAL_HOME (see :func:`root_for`)."""
HOME_DIR = ("cache", "bwrap-etc")
SHARED_DIR = ".shared"
SHARED_HOME_DIR = ("cache", "bwrap-shared")
"""Under a HAL_HOME: outside ``sandboxes/``, whose entries are providers and sandboxes."""
ACCOUNTS = ("passwd", "group")
ACCOUNTS_AT = "/.hal"
"""Where, with ``accounts``, the view's ``passwd`` and ``group`` lead: each sandbox's own
account files, which bwrap writes into its read-only root from the launcher's pipes
(:data:`hal9999.providers.host.user.OWN_DIR`, :func:`.args.account_data`)."""


_State = list[tuple[str, os.stat_result | None]]
_Key = tuple[tuple[int, int, int, int, int, int] | None, ...]


def _state(source: str, names: tuple[str, ...]) -> _State:
    """Each entry followed, as a bind mount follows its source (None: absent)."""
    found: _State = []
    for name in names:
        try:
            found.append((name, os.stat(f"{source}/{name}")))
        except OSError:
            found.append((name, None))
    return found


def _key(state: _State) -> _Key:
    """What the fingerprint covers of each entry, as plain numbers (a dict key)."""
    return tuple(
        None
        if st is None
        else (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        for _, st in state
    )


def _fingerprint(state: _State, accounts: bool) -> str:
    digest = hashlib.sha256(b"accounts" if accounts else b"host")
    for (name, _), fields in zip(state, _key(state), strict=True):
        text = "-" if fields is None else ":".join(str(v) for v in fields)
        digest.update(f"{name}\0{text}\n".encode())
    return digest.hexdigest()[:20]


def _build(source: Path, state: _State, target: Path, accounts: bool) -> None:
    """Fill the new directory ``target``: a copy of each regular file (mode kept; empty if we
    cannot read it), an empty directory for each directory; anything else left out. With
    ``accounts``, ``passwd`` and ``group`` are links to :data:`ACCOUNTS_AT` instead."""
    for name, st in state:
        dst = target / name
        if accounts and name in ACCOUNTS:
            os.symlink(f"{ACCOUNTS_AT}/{name}", dst)
        elif st is None:
            continue
        elif stat.S_ISDIR(st.st_mode):
            dst.mkdir(mode=0o755)
        elif stat.S_ISREG(st.st_mode):
            with open(dst, "xb") as out:
                with contextlib.suppress(OSError):
                    # O_NONBLOCK: a fifo swapped in meanwhile never blocks us; only a regular
                    # file is copied.
                    with open(os.open(source / name, os.O_RDONLY | os.O_NONBLOCK), "rb") as inp:
                        if stat.S_ISREG(os.fstat(inp.fileno()).st_mode):
                            shutil.copyfileobj(inp, out)
            os.chmod(dst, stat.S_IMODE(st.st_mode))


def root_for(state_dir: Path) -> Path:
    """Where the copies live for the provider at ``state_dir``: ``<home>/cache/bwrap-etc``
    when it is a HAL_HOME's ``sandboxes/<name>``, else ``<state_dir>/.host-etc``."""
    return _beside(state_dir, HOME_DIR, DIR)


def shared_for(state_dir: Path) -> Path:
    """Where the read-only files every sandbox of the provider at ``state_dir`` links to live
    (its seccomp filter, the usernet ``resolv.conf``): ``<home>/cache/bwrap-shared`` when it
    is a HAL_HOME's ``sandboxes/<name>``, else ``<state_dir>/.shared``. Not in the state
    directory itself, which holds the sandboxes and nothing else once they are gone."""
    return _beside(state_dir, SHARED_HOME_DIR, SHARED_DIR)


def _beside(state_dir: Path, in_home: tuple[str, ...], own: str) -> Path:
    # `sandboxes/<name>/` holds only sandboxes (recovery and `hal sandbox list` take each
    # entry for one): under a HAL_HOME, what is not a sandbox goes to its cache.
    if state_dir.parent.name == "sandboxes":
        return state_dir.parent.parent.joinpath(*in_home)
    return state_dir / own


class EtcView:
    """The current ``/etc`` directory for sandboxes of the provider at ``state_dir``."""

    def __init__(self, state_dir: Path, *, source: Path = Path("/etc")) -> None:
        self.root = root_for(state_dir)
        self.source = source
        self._source = str(source)
        self._seen: dict[tuple[bool, _Key], tuple[Path, list[str]]] = {}
        """Views already named, by what the host's entries were: every command stats them,
        the hash and the paths are worked out only when they change."""

    def current(self, *, accounts: bool = False) -> tuple[Path, list[str]]:
        """The directory to bind as ``/etc`` (made now if the host's entries changed) and the
        names of the directories in it to bind from the host on top. ``accounts``: the
        sandbox's own ``passwd`` and ``group`` are bound at :data:`ACCOUNTS_AT`."""
        state = _state(self._source, ETC)
        key = (accounts, _key(state))
        known = self._seen.get(key)
        if known is None:
            path = self.root / _fingerprint(state, accounts)
            dirs = [name for name, st in state if st is not None and stat.S_ISDIR(st.st_mode)]
            if len(self._seen) >= SEEN:
                self._seen.clear()
            known = self._seen[key] = (path, dirs)
        path, dirs = known
        try:
            os.utime(path)  # marks it in use (see KEEP)
        except FileNotFoundError:
            self._make(path, state, accounts)
        return path, list(dirs)

    def _make(self, path: Path, state: _State, accounts: bool) -> None:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
        try:
            _build(self.source, state, tmp, accounts)
            os.chmod(tmp, 0o755)
            fs.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not path.is_dir():  # not merely another process having made it first
                raise
        cutoff = time.time() - KEEP
        for entry in os.scandir(self.root):
            with contextlib.suppress(OSError):
                if entry.path != str(path) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path)
