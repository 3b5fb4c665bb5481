"""What a qemu image built by an older hal lacks, read from its ``meta.json``, each with the
command that rebuilds it (``hal doctor`` and ``hal image list`` say them).

Kept out of :mod:`.image`: every file there goes into the qemu test image's digest
(``tests/qemu_image.py``), so an edit there rebuilds that image."""

from __future__ import annotations

import sys
from pathlib import Path

from hal9999.providers.qemu.image.store import Image, ImageMeta, hang_notice

_NOTED: set[Path] = set()
"""Images this process has said :func:`note_unadopted` of (once each, not every VM)."""


def adopt_notice(meta: ImageMeta) -> tuple[str, str] | None:
    """(what, how to fix it) for an image whose guest ``hal-setup`` predates ``adopt UID
    DIR`` (no ``setup_adopts``): a root hal's start, restore or fork of it runs a separate
    find/chown in the guest (``QemuProvider.adopt_argv``); None for others."""
    if meta.setup_adopts:
        return None
    what = (
        f"qemu image {meta.name!r} was built before its guest setup could hand a sandbox's "
        "uid its files: each start, restore or fork of it by a root hal runs a separate "
        "find/chown in the guest (two more execs, ~200-400 ms of guest CPU under TCG)"
    )
    return what, rebuild_fix(meta)


def rebuild_fix(meta: ImageMeta) -> str:
    """The command that rebuilds ``meta``'s image as this hal builds images (for a snapshot:
    rebuild the image it comes from, then snapshot a sandbox of it again): the one
    :func:`hang_notice` gives, asked of the same image as if it predated pings."""
    found = hang_notice(meta.model_copy(update={"exec_ports": 1, "agent_pings": False}))
    assert found is not None
    return found[1]


def notices(meta: ImageMeta, *, root: bool) -> list[tuple[str, str]]:
    """Every (what, how to fix it) of ``meta``'s image: built before pings
    (:func:`hang_notice`) and, for a ``root`` hal, before ``adopt`` (:func:`adopt_notice`;
    only a root hal's sandboxes have a uid of their own to hand the files to)."""
    found = [hang_notice(meta), adopt_notice(meta) if root else None]
    return [notice for notice in found if notice is not None]


def note_unadopted(image: Image) -> None:
    """Say on stderr, in one ``hal: note:`` line with the command that rebuilds it, that a
    root hal's VM of ``image`` runs the separate find/chown (:func:`adopt_notice`): once per
    process and image, at the first VM's start, restore or fork (its meta is read anyway,
    and a user who never runs ``hal doctor`` or ``hal image list`` is told too)."""
    if image.meta.setup_adopts or image.dir in _NOTED:
        return
    _NOTED.add(image.dir)
    found = adopt_notice(image.meta)
    if found is not None:
        sys.stderr.write(f"hal: note: {found[0]}; {found[1]}\n")
        sys.stderr.flush()
