"""Golden images and snapshot layers for the ``qemu`` provider, under ``HAL_HOME/images/``.

::

    images/<name>/meta.json          what the image is (ImageMeta)
    images/<name>/disk.qcow2         its disk (a snapshot's: a layer over its parent's)
    images/<name>/vmlinuz, initrd.img    the kernel and the initramfs that loads its modules
    images/<name>/id_ed25519, known_hosts    the exec channel's client key and host key
    images/<name>/states/<shape>/    a saved VM state: vm.state and the disk layer it goes with
    images/.cache/                   cached build stages (rootfs, kernel, hal-exec)

A saved VM state is only valid with the exact disk it was taken over, so each state keeps
its own disk layer (an overlay of the image's disk, written only while that VM booted);
sandboxes restored from it get a fresh overlay on that layer.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from hal9999 import fs
from hal9999.envvars import absolute_dir
from hal9999.errors import ConfigError, NotFoundError, ProviderError
from hal9999.providers.qemu.image import workdirs

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUITE = re.compile(r"[a-z][a-z0-9.-]{0,63}")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,127}")
_MIRROR = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[!-~]+")
"""A Debian release as debootstrap takes it (``bookworm``, ``stable``): never an option."""
META = "meta.json"
BUILD_HINT = "build one with `hal image build`"


class ImageMeta(BaseModel):
    """What ``meta.json`` holds."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Image name (a directory under ``images/``)."""
    kind: Literal["golden", "snapshot"]
    """Built from scratch, or a sandbox's disk saved as a layer."""
    created_at: float
    """Seconds since the epoch."""
    parent: str | None = None
    """For a snapshot: the image its disk is layered on."""
    suite: str = "bookworm"
    """Debian release of the root filesystem."""
    kernel: str = ""
    """Kernel release, e.g. ``6.1.0-56-amd64``."""
    packages: list[str] = []
    """Packages installed on top of the base set."""
    build_s: float | None = None
    """How long the build took, in seconds."""
    exec_ports: int = 0
    """Ports its guest's exec agent serves (``hal.exec.N``); 0 for images built before the
    agent, whose commands all go over ssh (their saved states have no such ports)."""
    agent_pings: bool = False
    """Whether its exec agent answers the host's pings (``P`` with ``p``), so a command
    whose guest answers nothing for a while is taken for hung; false for images built
    before, whose agent takes a ping for a no-op (their quiet commands are never failed).
    A snapshot has its parent's."""
    setup_adopts: bool = False
    """Whether its guest's hal-setup knows the ``adopt UID DIR`` step (a root hal's sandbox
    hands its files to its uid in that one process); false for images built before, whose
    sandboxes run a find/chown command for it (two more execs at every start). A snapshot
    has its parent's."""


def hang_notice(meta: ImageMeta) -> tuple[str, str] | None:
    """(what, how to fix it) for an image whose exec agent predates pings, so hal cannot tell
    a hung VM of it from a quiet command; None for others (``hal doctor`` and a VM's start
    say it)."""
    if not meta.exec_ports or meta.agent_pings:
        return None
    what = (
        f"qemu image {meta.name!r} was built before hal could tell a hung VM from a quiet "
        "command (its exec agent does not answer pings): a command whose VM hangs waits "
        "forever instead of failing"
    )
    if meta.kind == "snapshot":
        return what, (
            f"it is a snapshot (of {meta.parent!r}): rebuild the image it comes from with "
            "`hal image build`, then snapshot a sandbox of the new one"
        )
    build = ["hal", "image", "build", "--name", meta.name]
    if meta.packages:
        build += ["--packages", ",".join(meta.packages)]
    if meta.suite != "bookworm":
        build += ["--suite", meta.suite]
    return what, f"rebuild it (as root): hal image rm {meta.name} && {shlex.join(build)}"


def images_root(home: Path) -> Path:
    """Where images live: ``HAL_QEMU_IMAGES`` when set, else ``<home>/images``."""
    override = absolute_dir(os.environ, "HAL_QEMU_IMAGES")
    return Path(override) if override else home / "images"


def check_name(name: str) -> str:
    """``name`` if it is a valid image name (it becomes a directory name)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"invalid image name {name!r}", hint="use letters, digits, '.', '_' and '-'"
        )
    return name


def check_suite(suite: str) -> str:
    """``suite`` if it can name a Debian release (debootstrap would take another as an option,
    or print its usage text)."""
    if not _SUITE.fullmatch(suite):
        raise ConfigError(
            f"invalid Debian suite {suite!r}", hint="give --suite a release name such as bookworm"
        )
    return suite


def check_packages(packages: Iterable[str]) -> None:
    """Refuse a name that is no Debian package (``-x`` would reach debootstrap as an option
    in its ``--include=`` list; ``hal image container`` let it through)."""
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise ConfigError(
                f"invalid package name {package!r}",
                hint="Debian package names are lowercase letters, digits, '.', '+' and '-'",
            )


def check_mirror(mirror: str | None) -> None:
    """Refuse a ``--mirror`` that is no URL (an empty one meant the default without a word;
    another reached debootstrap, which failed on it a long way in)."""
    if mirror is not None and not _MIRROR.fullmatch(mirror):
        raise ConfigError(
            f"invalid Debian mirror {mirror!r}",
            hint="give --mirror a URL such as http://deb.debian.org/debian, or leave it out "
            "for the one apt uses here",
        )


class Image:
    """One image directory."""

    def __init__(self, root: Path, meta: ImageMeta) -> None:
        self.dir = root
        self.meta = meta

    @property
    def name(self) -> str:
        """The image name."""
        return self.meta.name

    @property
    def disk(self) -> Path:
        """Its disk (qcow2)."""
        return self.dir / "disk.qcow2"

    @property
    def kernel(self) -> Path:
        """The kernel."""
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        """The initramfs."""
        return self.dir / "initrd.img"

    @property
    def key(self) -> Path:
        """The exec channel's private client key (mode 600)."""
        return self.dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """The guest sshd's host key, as a known_hosts line."""
        return self.dir / "known_hosts"

    def state_dir(self, shape_key: str) -> Path:
        """The saved state of one VM shape: ``vm.state`` + ``disk.qcow2``."""
        return self.dir / "states" / shape_key

    def states(self) -> list[str]:
        """Shape keys with a complete saved state."""
        root = self.dir / "states"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "vm.state").is_file())

    def size_bytes(self) -> int:
        """Bytes used on the host (sparse files count what they hold)."""
        return sum(p.stat().st_blocks * 512 for p in self.dir.rglob("*") if p.is_file())


class ImageStore:
    """The images under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def cache(self) -> Path:
        """Cached build stages shared by every image."""
        return self.root / ".cache"

    def path(self, name: str) -> Path:
        """The directory of image ``name``."""
        return self.root / check_name(name)

    def get(self, name: str) -> Image:
        """The image ``name``; NotFoundError naming the build command when absent."""
        root = self.path(name)
        try:
            meta = ImageMeta.model_validate_json((root / META).read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no qemu image {name!r} in {self.root}", hint=BUILD_HINT) from None
        except ValidationError as exc:
            raise ProviderError(f"corrupt image metadata {root / META}: {exc}") from exc
        return Image(root, meta)

    def all(self) -> list[Image]:
        """Every complete image, by name."""
        found = []
        for meta in sorted(self.root.glob(f"*/{META}")):
            try:
                found.append(self.get(meta.parent.name))
            except (NotFoundError, ProviderError, ConfigError):
                continue
        return found

    def children(self, name: str) -> list[str]:
        """Snapshot images layered directly on ``name``."""
        return [i.name for i in self.all() if i.meta.parent == name]

    def save_meta(self, root: Path, meta: ImageMeta) -> None:
        """Write ``meta.json`` last and atomically: an image exists once it has one."""
        fs.write_json(root / META, meta.model_dump(mode="json"), indent=2, mode=None)

    def remove(self, name: str) -> None:
        """Delete an image; refused while a snapshot is layered on it."""
        image = self.get(name)
        children = self.children(name)
        if children:
            raise ConfigError(
                f"image {name!r} is the base of {', '.join(children)}",
                hint="remove those first with `hal image rm`",
            )
        # The metadata goes first, so a half-removed image is never listed as usable.
        (image.dir / META).unlink()
        workdirs.clear(image.dir)

    def new_dir(self, name: str) -> Path:
        """A fresh directory for image ``name`` (refused if it exists)."""
        root = self.path(name)
        if (root / META).exists():
            raise ConfigError(
                f"image {name!r} already exists", hint=f"remove it first: hal image rm {name}"
            )
        # Leftovers of an interrupted build (never deleted through a mount left inside).
        workdirs.clear(root)
        root.mkdir(parents=True)
        return root


def now() -> float:
    """The current time (for metadata)."""
    return time.time()
