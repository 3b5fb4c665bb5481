"""``hal image container``: a container image for the ``docker`` provider, no registry needed.

It reuses the cached debootstrap rootfs stage of the qemu image builder
(:mod:`hal9999.providers.qemu.image.build`: the same Debian the ``qemu`` images run), streams
it as a tar with a few changes and hands that to the engine's import
(``POST /images/create?fromSrc=-``, what ``docker import``/``podman import`` do):

- ``/workspace`` and ``/home/hal`` exist, ``/home/hal`` world-writable with the sticky bit like
  ``/tmp``: the sandbox runs as a uid the image cannot know (a reserved one per sandbox when
  hal runs as root), so its home must not depend on ownership;
- a ``hal`` entry in ``/etc/passwd`` (uid 1000) for tools that look the user up;
- nothing is set up as root at run time, so the container needs no capability.
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hal9999.errors import ConfigError, ProviderError
from hal9999.providers.qemu.image import workdirs
from hal9999.providers.qemu.image.build import Builder, default_mirror
from hal9999.providers.qemu.image.store import (
    ImageStore,
    check_mirror,
    check_name,
    check_packages,
    check_suite,
)

REPOSITORY = "hal9999"
"""Images are tagged ``hal9999:<name>`` in the engine."""
SKIP = ("proc/", "sys/", "dev/", "run/", ".hal-done")
"""Rootfs entries left out: the engine provides these at run time."""
PASSWD_LINE = b"hal:x:1000:1000:hal sandbox user:/home/hal:/bin/bash\n"
GROUP_LINE = b"hal:x:1000:\n"


def image_ref(name: str) -> str:
    """The engine's reference for hal image ``name``."""
    return f"{REPOSITORY}:{name}"


def _rootfs_tar(rootfs: Path, out: Path) -> None:
    """Write ``rootfs`` as a tar with the changes in the module docstring (blocking)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(rootfs):
            rel = path.relative_to(rootfs).as_posix()
            if any(rel == s.rstrip("/") or rel.startswith(s) for s in SKIP):
                continue
            info = tar.gettarinfo(str(path), arcname=rel)
            if rel in ("etc/passwd", "etc/group"):
                extra = PASSWD_LINE if rel == "etc/passwd" else GROUP_LINE
                data = path.read_bytes()
                if not any(line.startswith(b"hal:") for line in data.splitlines()):
                    data = data.rstrip(b"\n") + b"\n" + extra
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif info.isreg():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
        for rel, mode in (("workspace", 0o755), ("home/hal", 0o1777)):
            info = tarfile.TarInfo(rel)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
            tar.addfile(info)
        for rel in ("proc", "sys", "dev", "run"):
            info = tarfile.TarInfo(rel)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)


def _walk(root: Path) -> Iterator[Path]:
    """Every entry under ``root``, parents first, never following a symlink."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            yield base / name


async def build_container_image(
    store: ImageStore,
    name: str,
    *,
    client: Any,
    packages: list[str] | None = None,
    suite: str = "bookworm",
    mirror: str | None = None,
    progress: Callable[[str], None],
) -> str:
    """Build ``hal9999:<name>`` in the engine ``client`` talks to; returns its image id."""
    check_name(name)  # before it names a log: never a path out of the cache
    check_suite(suite)
    check_packages(packages or [])
    check_mirror(mirror)
    if os.geteuid() != 0:
        raise ConfigError("hal image container needs root (debootstrap)", hint="run it with sudo")
    store.cache.mkdir(parents=True, exist_ok=True)
    log = store.cache / f"build-container-{name}.log"
    log.write_text("")
    builder = Builder(store, progress=progress, log=log)
    async with workdirs.stages_lock(store.cache):
        rootfs = await builder.rootfs(suite, mirror or default_mirror(), packages or [])
        tar = store.cache / f"container-{name}.tar.partial"
        progress("container: packing the rootfs")
        try:
            await asyncio.to_thread(_rootfs_tar, rootfs, tar)
            progress(f"container: importing as {image_ref(name)}")
            image_id = await asyncio.to_thread(_import, client, tar, name)
        finally:
            tar.unlink(missing_ok=True)
    progress(f"container: {image_ref(name)} is {image_id[:19]}")
    return image_id


def _imported_id(reply: str) -> str:
    """The image id in an import reply (a stream of JSON lines, the id in the last status)."""
    import json

    for line in reversed(reply.strip().splitlines()):
        try:
            status = str(json.loads(line).get("status", ""))
        except ValueError:
            continue
        found = status.removeprefix("sha256:").strip()
        if found and all(c in "0123456789abcdef" for c in found):
            return found
    raise ProviderError(f"the engine's import reply names no image: {reply[-200:]!r}")


def _import(client: Any, tar: Path, name: str) -> str:
    from hal9999.providers.docker.engine import docker_sdk

    docker = docker_sdk()

    try:
        reply = client.api.import_image_from_file(
            str(tar), repository=REPOSITORY, tag=name,
            changes=["USER 1000:1000", "WORKDIR /workspace", "ENV HOME=/home/hal"],
        )  # fmt: skip
        # Podman's compatible service ignores ``tag`` on import; tagging after works on both.
        image_id = _imported_id(str(reply))
        client.api.tag(image_id, REPOSITORY, name)
        found: str = client.images.get(image_ref(name)).id
        return found
    except docker.errors.DockerException as exc:
        raise ProviderError(f"importing the container image failed: {exc}") from exc
