"""``hal image ...`` and ``hal sandbox snapshot|fork`` on the run's qemu test image."""

from __future__ import annotations

import json
import os
import re

import pytest
from tests.support.hal import Hal

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(300)]


@pytest.fixture
def qemu_env(hal_env: dict[str, str]) -> dict[str, str]:
    hal_env["HAL_QEMU_IMAGES"] = os.environ["HAL_QEMU_IMAGES"]
    return hal_env


def images(hal: Hal) -> dict[str, dict[str, object]]:
    out = hal("image", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {i["name"]: i for i in json.loads(out.stdout)}


def test_build_reuses_cached_stages_list_shows_it_rm_removes_it(
    qemu_env: dict[str, str], hal: Hal
) -> None:
    golden = images(hal)["default"]
    assert golden["kind"] == "golden" and golden["states"] and golden["kernel"]
    name = f"cli-{os.getpid()}"
    built = hal("image", "build", "--name", name, "--no-state", timeout=240)
    assert built.returncode == 0, built.stderr[-2000:]
    # Re-running reuses the cached stages; only the image's own disk is made.
    assert "rootfs: cached" in built.stderr and "kernel: cached" in built.stderr, built.stderr
    assert built.stdout.strip() == name
    listed = images(hal)[name]
    assert listed["kind"] == "golden" and listed["states"] == []
    assert hal("image", "rm", name).returncode == 0
    assert name not in images(hal)


def test_bad_image_names_and_missing_images_are_clear_errors(
    qemu_env: dict[str, str], hal: Hal
) -> None:
    bad = hal("image", "build", "--name", "../etc")
    assert bad.returncode != 0
    assert "invalid image name '../etc'" in bad.stderr and "letters, digits" in bad.stderr
    missing = hal("image", "rm", "no-such-image")
    assert missing.returncode != 0
    assert "no qemu image 'no-such-image'" in missing.stderr
    assert "hal image build" in missing.stderr


def test_fork_snapshot_and_rm_guards(qemu_env: dict[str, str], hal: Hal) -> None:
    fork = hal("sandbox", "fork", "default", "1", "--json", timeout=120)
    assert fork.returncode == 0, fork.stderr
    [sandbox_id] = json.loads(fork.stdout)["sandboxes"]
    snap = f"cli-snap-{sandbox_id}"
    try:
        wrote = hal("sandbox", "exec", sandbox_id, "--", "sh", "-c", "echo kept > /var/tmp/k")
        assert wrote.returncode == 0, wrote.stderr
        made = hal("sandbox", "snapshot", sandbox_id, "--name", snap, "--json", timeout=120)
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout) == {"image": snap, "sandbox_id": sandbox_id}
        assert images(hal)[snap]["parent"] == "default"

        base = hal("image", "rm", "default")
        assert base.returncode != 0, base.stdout
        bases = re.search(r"image 'default' is the base of (.+) \(remove those first", base.stderr)
        assert bases is not None, base.stderr
        assert snap in bases.group(1).split(", ")
        in_use = hal("image", "rm", snap)
        assert in_use.returncode != 0 and f"used by sandbox(es) {sandbox_id}" in in_use.stderr

        copies = hal("sandbox", "fork", snap, "2", "--json", timeout=180)
        assert copies.returncode == 0, copies.stderr
        ids = json.loads(copies.stdout)["sandboxes"]
        assert len(ids) == 2
        for copy in ids:
            seen = hal("sandbox", "exec", copy, "--", "cat", "/var/tmp/k")
            assert seen.stdout == "kept\n", seen.stderr
            assert hal("sandbox", "destroy", copy).returncode == 0
    finally:
        hal("sandbox", "destroy", sandbox_id)
    assert hal("image", "rm", snap).returncode == 0
    assert snap not in images(hal)
    assert hal("sandbox", "list", "--json").stdout.strip() == "[]"
