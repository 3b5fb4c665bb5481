"""``hal image list`` names what an image built by an older hal lacks, with the command that
rebuilds it, as ``hal doctor`` does: an exec agent that answers pings, and (for a root hal)
``hal-setup``'s ``adopt`` step, without which each start, restore or fork of it runs a
separate find/chown in the guest. Read from ``meta.json`` only: no QEMU needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cli.quick_agents import quick_agents_path
from tests.support.hal import Hal

from hal9999.providers.qemu.image.store import ImageMeta, ImageStore


def test_image_list_names_an_image_built_before_adopt_and_the_rebuild(
    hal: Hal, tmp_path: Path
) -> None:
    store = ImageStore(tmp_path / "images")
    for name, adopts in (("old", False), ("new", True)):
        meta = ImageMeta(name=name, kind="golden", created_at=1.0, exec_ports=4,
                         agent_pings=True, setup_adopts=adopts)  # fmt: skip
        store.save_meta(store.new_dir(name), meta)
    env = {"HAL_QEMU_IMAGES": str(store.root)}
    root = os.geteuid() == 0  # only a root hal's sandboxes have a uid to hand files to
    fix = "rebuild it (as root): hal image rm old && hal image build --name old"

    listed = hal("image", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    found = {i["name"]: i["notices"] for i in json.loads(listed.stdout)}
    assert found["new"] == []
    if root:
        [notice] = found["old"]
        assert "separate find/chown in the guest" in notice["what"] and notice["fix"] == fix
    else:
        assert found["old"] == []

    text = hal("image", "list", env=env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == ["new", "old"]
    warned = [line for line in lines if line.startswith("  ")]
    if root:
        assert warned[0].startswith("  warn: qemu image 'old' was built before its guest setup")
        assert warned[1] == f"    fix: {fix}" and len(warned) == 2, lines
    else:
        assert warned == [], lines


def test_doctor_names_an_image_built_before_adopt_and_the_rebuild(hal: Hal, tmp_path: Path) -> None:
    # A snapshot alone: no golden image, so the doctor boots nothing to probe KVM with.
    store = ImageStore(tmp_path / "images")
    meta = ImageMeta(name="snap", kind="snapshot", parent="gone", created_at=1.0,
                     exec_ports=4, agent_pings=True)  # fmt: skip
    store.save_meta(store.new_dir("snap"), meta)
    # The agent CLIs answer at once (tests/cli/quick_agents.py): this is about images.
    path = quick_agents_path(tmp_path / "quick-agents", os.environ["PATH"])
    env = {"HAL_QEMU_IMAGES": str(store.root), "PATH": path}
    out = hal("doctor", "--json", env=env, timeout=180)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    found = checks.get("qemu image snap")
    if os.geteuid() != 0:
        assert found is None, found
        return
    assert found is not None and not found["ok"] and not found["required"], checks.keys()
    assert found["detail"].startswith("qemu image 'snap' was built before its guest setup")
    assert found["fix"].startswith("it is a snapshot (of 'gone'): rebuild the image"), found
