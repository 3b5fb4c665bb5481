"""The image the ``qemu`` tests run on: built once per test run, reused while unchanged.

It lives under ``HAL_TEST_QEMU_IMAGES`` (default ``/var/tmp/hal9999-test-images``) in a
directory named by a digest of everything that goes into it (the guest files and the
build code), so an edit rebuilds it and an unchanged checkout reuses it. ``prepare`` runs
once, before the first test (from ``pytest_collection_finish``), and exports
``HAL_QEMU_IMAGES`` so every qemu provider of the run finds the image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hal9999.providers.qemu.image
import hal9999.providers.qemu.state

ROOT = Path(os.environ.get("HAL_TEST_QEMU_IMAGES", "/var/tmp/hal9999-test-images"))
IMAGE = "default"
STALE_S = 24 * 3600
"""Images of other code older than this are removed (a checkout beside this one may still use
a newer one)."""
_state: dict[str, str | None] = {}


def digest() -> str:
    """A digest of the guest files and the code that builds the image."""
    package = Path(hal9999.providers.qemu.image.__file__).parent
    sources = sorted(package.rglob("*"))
    sources.append(Path(hal9999.providers.qemu.state.__file__))
    h = hashlib.sha256()
    for path in sources:
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def images_dir() -> Path:
    """Where this checkout's test image lives."""
    return ROOT / digest()


def prepare() -> None:
    """Build the test image unless it exists; remember why it cannot be had.

    Several test runs on one machine (CI's root and non-root passes, or checkouts side by
    side) share ``ROOT``: one builds while the others wait for it, then all reuse the image.
    """
    if "problem" in _state:
        return
    try:
        ROOT.mkdir(parents=True, exist_ok=True)
        fd = os.open(ROOT / ".prepare.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        _state["problem"] = f"cannot use {ROOT} for the qemu test image: {exc.strerror}"
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _state["problem"] = _prepare()
    finally:
        os.close(fd)


def _prepare() -> str | None:
    from hal9999.errors import HalError
    from hal9999.providers.qemu.image.store import ImageStore

    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        return "QEMU is not installed (apt-get install qemu-system-x86 qemu-utils)"
    store = ImageStore(images_dir())
    os.environ["HAL_QEMU_IMAGES"] = str(store.root)
    try:
        image = store.get(IMAGE)
        if image.states():
            # Snapshots that an interrupted run left layered on it are not this run's.
            for other in store.all():
                if other.name != IMAGE:
                    shutil.rmtree(other.dir, ignore_errors=True)
            return None
        store.remove(IMAGE)
    except HalError:
        pass
    if os.geteuid() != 0:
        return "building the qemu test image needs root (debootstrap); run as root"
    if ROOT.is_dir():
        for old in ROOT.iterdir():  # images of other checkouts' code, unused for a day
            stale = time.time() - old.stat().st_mtime > STALE_S
            if old.is_dir() and old.name != store.root.name and stale:
                shutil.rmtree(old, ignore_errors=True)
    started = time.monotonic()
    # Built by the real command line, as a user would: `hal image build`.
    env = {**os.environ, "HAL_QEMU_IMAGES": str(store.root), "HAL_NO_DAEMON": "1"}
    env["HAL_HOME"] = str(store.root / ".hal-home")
    build = subprocess.run(
        [sys.executable, "-m", "hal9999", "image", "build", "--name", IMAGE, "--json"],
        env=env, stdout=subprocess.PIPE, stderr=None, text=True, check=False,
    )  # fmt: skip
    if build.returncode != 0:
        return f"cannot build the qemu test image: hal image build exited {build.returncode}"
    built = json.loads(build.stdout)
    if built["name"] != IMAGE or not built["states"]:
        return f"hal image build made no usable image: {built}"

    def progress(line: str) -> None:
        print(f"qemu test image: {line}", file=sys.stderr, flush=True)

    progress(f"ready in {time.monotonic() - started:.0f}s")
    return None


def image_problem() -> str | None:
    """Why the qemu tests cannot run here (None when they can)."""
    prepare()
    return _state["problem"]
