"""Pool keys, and how a warm sandbox is handed its task's session.

A pool key is the whole :class:`SandboxSpec` except what belongs to one task: the *sources*
of the workspace and binds (their targets and modes stay in the key) and the labels. Two
tasks with the same key can therefore share a sandbox one after the other.

A warm sandbox is created over a *slot*: a private directory holding one symlink per mount
(``ws`` for the workspace, ``b0``, ``b1``... for the binds), each showing an empty directory
of ``empty/`` while the sandbox is idle. Handing the sandbox to a task points them, atomically,
at the task's session directories: those inside the session through the one link ``cur``
to it (``ws`` -> ``cur/workspace``), so a hand-over makes one new symlink, not one per mount.
This works for every provider that resolves its mounts when a command starts (``bwrap``
binds, ``local`` and ``fake`` paths), which is what ``host_launch`` providers do; a provider
that cannot (a VM mounting its share at boot) implements
:class:`~hal9999.providers.base.WorkspaceAttach` instead (``qemu``: host bind mounts, see
:mod:`hal9999.providers.qemu.mount`), or is not pooled.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from hal9999 import fs
from hal9999.home import spread_once
from hal9999.providers.base import SLOT_LABEL
from hal9999.spec import Bind, SandboxSpec

_PLACEHOLDER = Path("/")
OWN_WARM_FILE = "own-warm"
"""In the slot directory: one provider name per line (see :meth:`SlotDir.own_warm`)."""
KEY_LABEL = "hal.pool"
"""Label holding a pooled sandbox's pool key."""
IDLE_LINK = "idle"
"""In the slot directory: the symlink to ``empty/`` that idle links are hard links of."""
CUR_LINK = "cur"
"""In the slot directory: the link to the current task's session (see :meth:`Slot.point`)."""


def pool_key(spec: SandboxSpec) -> str:
    """``<provider>:<digest>`` of everything in ``spec`` that is not per task."""
    shape = spec.model_copy(
        update={
            "workspace": None if spec.workspace is None else _PLACEHOLDER,
            "binds": tuple(b.model_copy(update={"source": _PLACEHOLDER}) for b in spec.binds),
            "labels": {},
        }
    )
    blob = json.dumps(shape.model_dump(mode="json"), sort_keys=True).encode()
    return f"{spec.provider}:{hashlib.sha256(blob).hexdigest()[:12]}"


class Slot:
    """A slot directory: the symlinks a warm sandbox's mounts go through."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: set[str] = set()
        """The directories under ``empty/`` (``""``: itself) :meth:`clear` made or found: each
        made once per slot, not at every clear (a ``mkdir`` and a ``stat`` each;
        nothing but hal writes in the slot, and a sandbox cannot remove them)."""

    @property
    def name(self) -> str:
        """The slot's id (its directory name)."""
        return self.root.name

    @property
    def empty(self) -> Path:
        """What idle links point at."""
        return self.root / "empty"

    def _links(self, spec: SandboxSpec) -> list[Path]:
        links = [self.root / "ws"] if spec.workspace is not None else []
        return links + [self.root / f"b{i}" for i in range(len(spec.binds))]

    def spec_for(self, spec: SandboxSpec, key: str) -> SandboxSpec:
        """The spec a sandbox of this slot is created with: mounts through the links."""
        workspace = None if spec.workspace is None else self.root / "ws"
        binds = tuple(
            Bind(source=self.root / f"b{i}", target=b.target, read_only=b.read_only)
            for i, b in enumerate(spec.binds)
        )
        labels = {KEY_LABEL: key, SLOT_LABEL: self.name}
        return spec.model_copy(update={"workspace": workspace, "binds": binds, "labels": labels})

    def point(self, spec: SandboxSpec) -> None:
        """Re-point the links at ``spec``'s workspace and bind sources, atomically each.

        A source inside the task's session (the workspace's parent) is reached through the
        slot's one link ``cur`` to that session: ``ws`` -> ``cur/workspace``, ``b0`` ->
        ``cur/home``... Those links stay from task to task and only ``cur`` is made anew, one
        inode a task instead of one per mount (see :meth:`clear`). A source elsewhere gets a
        link of its own, as does one whose place in the session differs from the last."""
        sources = ([spec.workspace] if spec.workspace is not None else []) + [
            b.source for b in spec.binds
        ]
        session = Path(spec.workspace).parent if spec.workspace is not None else None
        for link, source in zip(self._links(spec), sources, strict=True):
            target = _through_cur(Path(source), session)
            if _readlink(link) != target:
                _relink(link, Path(target))
        if session is not None:
            _relink(self.root / CUR_LINK, session)

    @property
    def idle(self) -> Path:
        """The one symlink to :attr:`empty` that every idle link is a hard link of."""
        return self.root / IDLE_LINK

    def clear(self, spec: SandboxSpec) -> None:
        """Point every link at the empty directory (the sandbox sees no task's files).

        ``cur`` (and any link of its own) becomes a hard link of the slot's one symlink to
        ``empty/``, so a link through ``cur`` shows an empty directory of ``empty/`` made for
        it: no new symlink, where each new inode on ext4 without a journal (this machine's)
        scans past the inodes its group freed in the last minute, which a pool turning over
        tasks fills."""
        made = self._made
        if "" not in made:
            self.empty.mkdir(mode=0o755, exist_ok=True)
            made.add("")
        idle = self._idle_link()
        for link in self._links(spec):
            target = _readlink(link)
            rel = _below_cur(target)
            if rel is None:
                _hard_relink(link, idle)
            elif str(rel) not in made:
                (self.empty / rel).mkdir(mode=0o755, parents=True, exist_ok=True)
                made.add(str(rel))
        _hard_relink(self.root / CUR_LINK, idle)

    def _idle_link(self) -> Path:
        idle = self.idle
        try:
            if os.readlink(idle) == str(self.empty):
                return idle
        except OSError:  # not made yet (a slot of an older hal), or not a symlink
            pass
        _relink(idle, self.empty)
        return idle

    def remove(self) -> None:
        """Delete the slot (links only; never what they point at)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _relink(link: Path, target: Path) -> None:
    fs.symlink(target, link)


def _hard_relink(link: Path, symlink: Path) -> None:
    """Make ``link`` another name of the symlink ``symlink`` (no new inode), atomically."""
    fs.hardlink(symlink, link)


def _readlink(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:  # missing (a new slot), or not a link
        return None


def _through_cur(source: Path, session: Path | None) -> str:
    """The link target that reaches ``source``: through ``cur`` when it is in ``session``."""
    if session is not None and source != session and source.is_relative_to(session):
        rel = source.relative_to(session)
        if ".." not in rel.parts:
            return f"{CUR_LINK}/{rel}"
    return str(source)


def _below_cur(target: str | None) -> Path | None:
    """The path under the session of a link target through ``cur``; None for another."""
    if target is None or not target.startswith(f"{CUR_LINK}/"):
        return None
    rel = Path(target[len(CUR_LINK) + 1 :])
    return None if rel.is_absolute() or ".." in rel.parts or not rel.parts else rel


class SlotDir:
    """Where slots live (``<home>/pool/``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def own_warm(self) -> set[str]:
        """The providers a daemon of this home asked for warm sandboxes they keep themselves
        (see :class:`~hal9999.providers.base.OwnWarmPool`): a later daemon still reports and
        drains them."""
        try:
            text = (self.root / OWN_WARM_FILE).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {name for name in text.split() if name}

    def set_own_warm(self, names: set[str]) -> None:
        """Record :meth:`own_warm` (atomically)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = "".join(f"{name}\n" for name in sorted(names))
        fs.write_text(self.root / OWN_WARM_FILE, text, mode=None, durable=False)

    def new(self) -> Slot:
        """A fresh, empty slot."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Each slot in a block group of its own: a slot makes a symlink and frees one every
        # task (``cur``), and a group's freed inodes slow its next ones (home.py).
        spread_once(self.root)
        slot = Slot(self.root / secrets.token_hex(6))
        slot.root.mkdir(mode=0o700)
        slot.empty.mkdir(mode=0o755)
        _relink(slot.idle, slot.empty)
        return slot

    def get(self, name: str) -> Slot:
        """The slot called ``name``."""
        return Slot(self.root / name)

    def names(self) -> set[str]:
        """Every slot on disk."""
        try:
            return {p.name for p in self.root.iterdir() if p.is_dir()}
        except FileNotFoundError:
            return set()
