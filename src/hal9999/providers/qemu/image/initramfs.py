"""The pieces of the guest's initramfs: a static busybox, kernel modules in load order, and
a minimal writer of the ``newc`` cpio format the kernel unpacks."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from hal9999.errors import ProviderUnavailable


def static_busybox() -> Path:
    """A statically linked busybox of the host (the initramfs has no libc)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:16384]:
            return path
    raise ProviderUnavailable(
        "a static busybox is needed for the initramfs", hint="apt-get install busybox-static"
    )


def module_order(modules_dir: Path, wanted: Sequence[str]) -> list[tuple[str, Path]]:
    """``wanted`` modules and their dependencies, dependencies first (from ``.modinfo``)."""
    index = {p.name.removesuffix(".ko").replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            return  # built into the kernel
        deps = re.search(rb"depends=([^\0]*)\0", path.read_bytes())
        for dep in deps.group(1).decode().split(",") if deps else []:
            if dep:
                visit(dep)
        order.append((name, path))

    for name in wanted:
        visit(name)
    return order


class Cpio:
    """A minimal writer of the ``newc`` cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        """Append one entry."""
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts.append(pad(header + encoded) + pad(data))
        self._ino += 1

    def finish(self) -> bytes:
        """The archive, with its trailer."""
        self.add("TRAILER!!!", 0)
        return b"".join(self._parts)


def pad(data: bytes) -> bytes:
    """``data`` padded with NULs to a multiple of four bytes (cpio alignment)."""
    return data + b"\0" * (-len(data) % 4)
