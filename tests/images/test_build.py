"""``hal image build`` never leaves a mount behind: a failing step (a fake debootstrap that
mounts proc and tmpfs in its target, as the real one does, then fails) is cleaned up, a stage
is cached only with nothing mounted in it, the error gives the step's own output, and two
builds of one image cannot collide. Real mounts: needs root."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hal9999.errors import ConfigError, ProviderError
from hal9999.providers.qemu.image.build import Builder, build_image
from hal9999.providers.qemu.image.store import ImageStore
from hal9999.providers.qemu.mount import mounts_under


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    """Real mounts need root: skipped locally without it, a failure under ``CI=true``."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but the image build tests need root (they mount)", pytrace=False)
    pytest.skip("mounting needs root")


# Called as: debootstrap --variant=minbase --include=... SUITE TARGET MIRROR
FAKE_DEBOOTSTRAP = """#!/bin/sh
target=$4
mkdir -p "$target/proc" "$target/run"
mount -t proc proc "$target/proc"
mount -t tmpfs tmpfs "$target/run"
echo "I: Retrieving InRelease" >&2
{body}
"""
FAILS = 'echo "E: Failed getting release file http://mirror.invalid/dists" >&2; exit 1'
SUCCEEDS = "exit 0"
SLOW_FAIL = "sleep 3; exit 1"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A private directory; whatever a failing test leaves mounted in it is detached."""
    yield tmp_path
    for point in mounts_under(tmp_path.resolve()):
        subprocess.run(["umount", "-l", str(point)], check=False)


def fake_debootstrap(root: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Put a fake ``debootstrap`` first on PATH."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "debootstrap"
    script.write_text(FAKE_DEBOOTSTRAP.format(body=body))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def progress(line: str) -> None:
    """Build progress goes nowhere in tests."""


async def test_a_failing_step_leaves_no_mount_and_says_why(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_debootstrap(root, monkeypatch, FAILS)
    store = ImageStore(root / "images")
    with pytest.raises(ProviderError) as failed:
        await build_image(store, "t", mirror="http://mirror.invalid", progress=progress)
    message = failed.value.one_line()
    assert "debootstrap failed (exit 1)" in message
    assert "Failed getting release file" in message  # the failing step's own output
    assert mounts_under(root.resolve()) == []
    assert not store.path("t").exists()
    assert not list(store.cache.glob("rootfs-*"))


async def test_a_stage_is_cached_only_with_nothing_mounted_in_it(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_debootstrap(root, monkeypatch, SUCCEEDS)
    store = ImageStore(root / "images")
    store.cache.mkdir(parents=True)
    builder = Builder(store, progress=progress, log=store.cache / "build.log")
    done = await builder.rootfs("bookworm", "http://mirror.invalid", [])
    assert (done / ".hal-done").exists()
    assert mounts_under(root.resolve()) == []


async def test_a_cached_stage_with_a_leftover_mount_is_unmounted_on_reuse(root: Path) -> None:
    store = ImageStore(root / "images")
    store.cache.mkdir(parents=True)
    builder = Builder(store, progress=progress, log=store.cache / "build.log")
    # What an older build left: a cached rootfs with proc still mounted inside.
    from hal9999.providers.qemu.image.build import BASE_PACKAGES, _digest

    wanted = sorted(BASE_PACKAGES)
    done = store.cache / f"rootfs-{_digest('bookworm', 'http://m', *wanted)}"
    (done / "proc").mkdir(parents=True)
    (done / ".hal-done").write_text("")
    subprocess.run(["mount", "-t", "proc", "proc", str(done / "proc")], check=True)
    assert await builder.rootfs("bookworm", "http://m", []) == done
    assert mounts_under(root.resolve()) == []


async def test_two_builds_of_one_image_cannot_collide(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_debootstrap(root, monkeypatch, SLOW_FAIL)
    store = ImageStore(root / "images")
    first = asyncio.create_task(
        build_image(store, "t", mirror="http://mirror.invalid", progress=progress)
    )
    log = store.cache / "build-t.log"
    for _ in range(100):
        if log.exists() and "Retrieving" in log.read_text():
            break
        await asyncio.sleep(0.05)
    with pytest.raises(ConfigError, match="'t' is being built by another"):
        await build_image(store, "t", mirror="http://mirror.invalid", progress=progress)
    assert store.path("t").is_dir(), "the running build's directory was left alone"
    with pytest.raises(ProviderError, match="debootstrap failed"):
        await first
    assert mounts_under(root.resolve()) == []


def test_sigterm_to_hal_image_build_kills_the_step_and_unmounts(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_debootstrap(root, monkeypatch, "sleep 60; exit 0")
    images = root / "images"
    env = {
        **os.environ,
        "HAL_HOME": str(root / "home"),
        "HAL_QEMU_IMAGES": str(images),
        "XDG_CONFIG_HOME": str(root / "xdg"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", "image", "build", "--name", "t",
         "--mirror", "http://mirror.invalid", "--no-state"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        log = images / ".cache" / "build-t.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if log.exists() and "Retrieving" in log.read_text():
                break
            time.sleep(0.1)
        assert mounts_under(root.resolve()), "the fake debootstrap mounted nothing"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 143, err
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    assert mounts_under(root.resolve()) == []
    assert not [cmd for cmd in _cmdlines() if str(images) in cmd], "the build step survived"
    assert not (images / "t").exists()


def _cmdlines() -> list[str]:
    """Command lines of live processes."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                found.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found
