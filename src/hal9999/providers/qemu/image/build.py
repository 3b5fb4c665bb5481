"""``hal image build``: a Debian golden image for the ``qemu`` provider, in cached stages.

Stages (cached ones are shared by every image and reused when re-run):

1. rootfs (cached): ``debootstrap --variant=minbase`` with git, tmux, bash, sshd, tini.
2. kernel (cached): the package ``linux-image-amd64`` points at, unpacked with
   ``dpkg-deb``; only ``vmlinuz`` and the modules the guest needs are kept.
3. helpers (cached): the guest's exec and start-up helpers, compiled static from
   ``guest/hal-exec.c`` and ``guest/hal-setup.c``.
4. initramfs: busybox, those modules and a tiny init that mounts the root disk.
5. disk: a copy of the rootfs with an ``agent`` user (uid 1000), the guest init, a fresh
   sshd host key and client key for this image, made into an ext4 qcow2.
6. state: the image booted once and its VM state saved, so sandboxes start by restoring.

Every command's output goes to a build log; a failure reports its last lines and the log.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from hal9999 import fs
from hal9999.errors import ConfigError, ProviderError, ProviderUnavailable
from hal9999.procs import kill_group_until_gone
from hal9999.providers.qemu.agent import PORTS as AGENT_PORTS
from hal9999.providers.qemu.image import workdirs
from hal9999.providers.qemu.image.initramfs import Cpio, module_order, static_busybox
from hal9999.providers.qemu.image.store import (
    Image,
    ImageMeta,
    ImageStore,
    check_mirror,
    check_name,
    check_packages,
    check_suite,
    now,
)

BASE_PACKAGES = (
    "openssh-server", "git", "tmux", "bash", "tini", "iproute2", "ca-certificates", "procps",
)  # fmt: skip
MODULES = (
    "virtio_mmio", "virtio_blk", "virtio_console", "virtio_net", "virtio_rng", "ext4", "9p",
    "9pnet_virtio", "crc32c_generic",
)  # fmt: skip
"""Guest kernel modules, loaded by the initramfs (dependencies are found and loaded first)."""
DISK_SIZE = 4 << 30
"""Size of the root filesystem; the qcow2 holds only what is written."""
GUEST_FILES = {"init": "lib/hal/init", "quiesce": "lib/hal/quiesce"}
HELPERS = {"hal-exec": "bin/hal-exec", "hal-setup": "lib/hal/setup", "hal-agent": "lib/hal/agent"}
"""Static C programs of the guest side: source ``guest/<name>.c``, path under /usr/local."""
INCLUDES = {"hal-agent": ("hal-exec",)}
"""Guest C files a helper ``#include``s (the agent runs hal-exec's code without an exec)."""

Progress = Callable[[str], None]


def guest_file(name: str) -> bytes:
    """A file of the guest side (``hal9999/providers/qemu/image/guest/``)."""
    return resources.files("hal9999.providers.qemu.image").joinpath("guest", name).read_bytes()


def default_mirror() -> str:
    """The Debian mirror apt uses here (from its sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"(?m)^(?:deb\s+(?:\[[^]]*\]\s+)?|URIs:\s*)(\S+)", text):
            url = match.group(1).rstrip("/")
            # The Debian archive itself, not its security suite or a third-party repo.
            if url.endswith("/debian") and "security" not in url:
                return url
    return "http://deb.debian.org/debian"


class Builder:
    """Builds one image; every step's output goes to ``log``."""

    def __init__(self, store: ImageStore, *, progress: Progress, log: Path) -> None:
        self.store = store
        self.progress = progress
        self.log = log

    async def run(
        self, argv: Sequence[str], *, what: str, cwd: Path | None = None, out: Path | None = None
    ) -> bytes:
        """Run a build command, its output into the log (or ``out``); fail with the tail of
        this step's own output."""
        with self.log.open("ab") as log:
            log.write(f"\n$ {' '.join(argv)}\n".encode())
            log.flush()
            step_start = log.tell()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise ProviderUnavailable(
                    f"{argv[0]} is not installed", hint=_INSTALL.get(argv[0], "apt-get install it")
                ) from exc
            try:
                data, _ = await proc.communicate()
            except BaseException:
                await kill_group_until_gone(proc)  # cancelled: the step must not run on
                raise
            if out is None:
                log.write(data)
        if proc.returncode != 0:
            raise ProviderError(
                f"image build: {what} failed (exit {proc.returncode}): "
                f"{step_tail(self.log, step_start)}",
                hint=f"full log: {self.log}",
            )
        return data

    # -- cached stages ------------------------------------------------------------------
    async def rootfs(self, suite: str, mirror: str, packages: Sequence[str]) -> Path:
        """The debootstrapped root filesystem (cached by suite, mirror and packages)."""
        wanted = sorted({*BASE_PACKAGES, *packages})
        key = _digest(suite, mirror, *wanted)
        done = self.store.cache / f"rootfs-{key}"
        if (done / ".hal-done").exists():
            # A build before this fix may have cached it with proc still mounted inside.
            await asyncio.to_thread(workdirs.unmount_under, done)
            self.progress(f"rootfs: cached ({done.name})")
            return done
        if shutil.which("debootstrap") is None:
            raise ProviderUnavailable("debootstrap is not installed", hint=_INSTALL["debootstrap"])
        partial = done.with_name(done.name + ".partial")
        await asyncio.to_thread(workdirs.clear, partial)
        self.progress(f"rootfs: debootstrap {suite} from {mirror} (about a minute)")
        started = time.monotonic()
        try:
            await self.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(wanted)}", suite,
                 str(partial), mirror],
                what="debootstrap",
            )  # fmt: skip
        except BaseException:
            # debootstrap mounts proc and sys inside; a failed or killed one leaves them.
            await asyncio.to_thread(workdirs.clear, partial)
            raise
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (partial / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        (partial / ".hal-done").write_text(" ".join(wanted))
        await asyncio.to_thread(workdirs.seal, partial, done)
        self.progress(f"rootfs: done in {time.monotonic() - started:.0f}s")
        return done

    async def kernel(self) -> Path:
        """vmlinuz and the guest's modules, from Debian's kernel package (cached by version)."""
        depends = await self.run(["apt-cache", "depends", "linux-image-amd64"], what="apt-cache")
        found = re.search(rb"Depends: (linux-image-[0-9][^\s]*)", depends)
        if found is None:
            raise ProviderError(
                "cannot find the kernel package linux-image-amd64 depends on",
                hint="run apt-get update",
            )
        package = found.group(1).decode()
        release = package.removeprefix("linux-image-")
        done = self.store.cache / f"kernel-{release}-{_digest(*MODULES)}"
        if (done / ".hal-done").exists():
            self.progress(f"kernel: cached ({package})")
            return done
        self.progress(f"kernel: downloading {package}")
        work = done.with_name(done.name + ".partial")
        await asyncio.to_thread(workdirs.clear, work)
        work.mkdir(parents=True)
        await self.run(["apt-get", "download", package], what="apt-get download", cwd=work)
        (deb,) = work.glob("*.deb")
        await self.run(["dpkg-deb", "-x", str(deb), str(work / "x")], what="dpkg-deb")
        shutil.copy(work / "x" / "boot" / f"vmlinuz-{release}", work / "vmlinuz")
        modules_dir = work / "x" / "lib" / "modules" / release
        order = module_order(modules_dir, MODULES)
        (work / "modules").mkdir()
        for name, path in order:
            shutil.copy(path, work / "modules" / f"{name}.ko")
        (work / "modules.order").write_text("\n".join(name for name, _ in order) + "\n")
        (work / "release").write_text(release)
        await asyncio.to_thread(shutil.rmtree, work / "x")
        deb.unlink()
        (work / ".hal-done").touch()
        await asyncio.to_thread(workdirs.seal, work, done)
        return done

    async def helpers(self) -> dict[str, Path]:
        """The static guest helpers (:data:`HELPERS`), each cached by its source."""
        built = {}
        for name in HELPERS:
            source = guest_file(f"{name}.c")
            included = {other: guest_file(f"{other}.c") for other in INCLUDES.get(name, ())}
            parts = [source.decode(), *(text.decode() for text in included.values())]
            done = self.store.cache / f"{name}-{_digest(*parts)}"
            built[name] = done
            if done.exists():
                continue
            if shutil.which("gcc") is None:
                raise ProviderUnavailable("gcc is not installed", hint=_INSTALL["gcc"])
            self.progress(f"{name}: compiling a guest helper")
            src = done.with_suffix(".c")
            src.write_bytes(source)
            for other, text in included.items():  # beside it, for its #include "other.c"
                (self.store.cache / f"{other}.c").write_bytes(text)
            with fs.atomic(done, mode=None, durable=False) as out:  # gcc writes it
                argv = ["gcc", "-O2", "-static", "-Wall", "-Werror", "-o", out.tmp, str(src)]
                await self.run(argv, what=f"gcc {name}")
        return built

    # -- per image ----------------------------------------------------------------------
    def initramfs(self, kernel: Path, target: Path) -> None:
        """busybox + modules + init as a gzipped newc cpio."""
        busybox = static_busybox()
        order = (kernel / "modules.order").read_text().split()
        cpio = Cpio()
        for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
            cpio.add(directory, stat.S_IFDIR | 0o755)
        cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        cpio.add("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
        cpio.add("init", stat.S_IFREG | 0o755, guest_file("initramfs-init"))
        cpio.add("modules", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode())
        for name in order:
            data = (kernel / "modules" / f"{name}.ko").read_bytes()
            cpio.add(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data)
        target.write_bytes(gzip.compress(cpio.finish(), compresslevel=6))

    async def disk(self, rootfs: Path, helpers: dict[str, Path], image_dir: Path) -> None:
        """The image's root disk: the rootfs plus hal's guest side and fresh keys."""
        work = image_dir / "root"
        self.progress("disk: customizing the rootfs (agent user, exec channel, keys)")
        await self.run(["cp", "-a", "--reflink=auto", str(rootfs), str(work)], what="copy rootfs")
        (work / ".hal-done").unlink(missing_ok=True)
        await self.run(
            ["chroot", str(work), "useradd", "-m", "-u", "1000", "-U", "-s", "/bin/bash", "agent"],
            what="useradd agent",
        )
        # sshd runs each command as "SHELL -c COMMAND": root's shell is hal-exec, which
        # splits hal's command lines itself (no shell exec per command; see hal-exec.c).
        await self.run(
            ["chroot", str(work), "usermod", "-s", "/usr/local/bin/hal-exec", "root"],
            what="usermod",
        )
        for name, target in GUEST_FILES.items():
            path = work / "usr/local" / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(guest_file(name))
            path.chmod(0o755)
        for name, built in helpers.items():
            path = work / "usr/local" / HELPERS[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(built, path)
            path.chmod(0o755)
        for directory, mode in (("home/hal", 0o755), ("workspace", 0o755), ("hal", 0o755)):
            (work / directory).mkdir(parents=True, exist_ok=True)
            (work / directory).chmod(mode)
        os.chown(work / "home/hal", 1000, 1000)
        (work / "etc/hostname").write_text("hal\n")
        (work / "etc/hosts").write_text("127.0.0.1 localhost hal\n")
        (work / "etc/machine-id").write_text("")
        (work / "etc/ssh/sshd_config").write_bytes(guest_file("sshd.conf"))
        for old in (work / "etc/ssh").glob("ssh_host_*"):
            old.unlink()
        await self.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hal-host",
             "-f", str(work / "etc/ssh/ssh_host_ed25519_key")],
            what="ssh-keygen (host key)",
        )  # fmt: skip
        host_pub = (work / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        (image_dir / "known_hosts").write_text(f"hal {host_pub[0]} {host_pub[1]}\n")
        key = image_dir / "id_ed25519"
        await self.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hal", "-f", str(key)],
            what="ssh-keygen (client key)",
        )
        ssh_dir = work / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text((image_dir / "id_ed25519.pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        self.progress("disk: making the ext4 qcow2")
        # mkfs copies the tree: nothing a chroot step left mounted may go into the disk.
        await asyncio.to_thread(workdirs.unmount_under, work)
        raw = image_dir / "disk.raw"
        with raw.open("wb") as handle:
            handle.truncate(DISK_SIZE)
        await self.run(
            ["mkfs.ext4", "-q", "-F", "-L", "hal-root", "-d", str(work), str(raw)], what="mkfs.ext4"
        )
        await asyncio.to_thread(workdirs.clear, work)
        await self.run(
            ["qemu-img", "convert", "-O", "qcow2", str(raw), str(image_dir / "disk.qcow2")],
            what="qemu-img convert",
        )
        raw.unlink()


async def build_image(
    store: ImageStore,
    name: str,
    *,
    packages: Sequence[str] = (),
    suite: str = "bookworm",
    mirror: str | None = None,
    progress: Progress,
    save_state: bool = True,
) -> Image:
    """Build image ``name`` (see the module docstring); re-running reuses cached stages."""
    check_name(name)  # before it names a lock or a log: never a path out of the cache
    check_suite(suite)
    check_packages(packages)
    check_mirror(mirror)
    if os.geteuid() != 0:
        raise ConfigError(
            "hal image build needs root (debootstrap, chroot)", hint="run it with sudo"
        )
    store.cache.mkdir(parents=True, exist_ok=True)
    with workdirs.build_lock(store.cache, name):
        image_dir = store.new_dir(name)
        log = store.cache / f"build-{name}.log"
        log.write_text("")
        builder = Builder(store, progress=progress, log=log)
        try:
            meta = await _build_into(builder, image_dir, name, packages, suite, mirror, save_state)
        except BaseException:
            try:
                await asyncio.to_thread(workdirs.clear, image_dir)
            except ProviderError as exc:  # the build's own error matters more; say both
                progress(f"cleaning up failed: {exc.one_line()}")
            raise
    progress(f"image {name!r} built in {meta.build_s:.0f}s: {image_dir}")
    return Image(image_dir, meta)


async def _build_into(
    builder: Builder,
    image_dir: Path,
    name: str,
    packages: Sequence[str],
    suite: str,
    mirror: str | None,
    save_state: bool,
) -> ImageMeta:
    """The stages of :func:`build_image`, into ``image_dir``; returns the saved metadata."""
    store, progress, started = builder.store, builder.progress, time.monotonic()
    async with workdirs.stages_lock(store.cache):
        rootfs = await builder.rootfs(suite, mirror or default_mirror(), packages)
        kernel = await builder.kernel()
        helpers = await builder.helpers()
    progress("initramfs: busybox and modules")
    await asyncio.to_thread(builder.initramfs, kernel, image_dir / "initrd.img")
    shutil.copy(kernel / "vmlinuz", image_dir / "vmlinuz")
    await builder.disk(rootfs, helpers, image_dir)
    meta = ImageMeta(
        name=name,
        kind="golden",
        created_at=now(),
        suite=suite,
        kernel=(kernel / "release").read_text().strip(),
        packages=sorted(packages),
        exec_ports=AGENT_PORTS,
        agent_pings=True,
        setup_adopts=True,
    )
    image = Image(image_dir, meta)
    if save_state:
        from hal9999.providers.qemu.state import default_shape, ensure_state

        shape = await default_shape(store, image)
        progress(f"state: booting once to save a VM state ({shape.key})")
        seconds = await ensure_state(image, shape)
        progress(f"state: saved (boot took {seconds:.1f}s)")
    meta = meta.model_copy(update={"build_s": round(time.monotonic() - started, 1)})
    store.save_meta(image_dir, meta)
    return meta


_INSTALL = {
    "debootstrap": "apt-get install debootstrap",
    "gcc": "apt-get install gcc libc6-dev",
    "qemu-img": "apt-get install qemu-utils",
    "mkfs.ext4": "apt-get install e2fsprogs",
    "ssh-keygen": "apt-get install openssh-client",
    "apt-get": "hal image build needs a Debian or Ubuntu host (apt-get, dpkg-deb)",
    "apt-cache": "hal image build needs a Debian or Ubuntu host (apt-get, dpkg-deb)",
    "dpkg-deb": "hal image build needs a Debian or Ubuntu host (apt-get, dpkg-deb)",
}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def step_tail(log: Path, offset: int, lines: int = 8) -> str:
    """The last lines a build step wrote to ``log`` from ``offset`` on (one line for errors)."""
    try:
        with log.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"
