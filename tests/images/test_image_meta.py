"""An image's ``meta.json`` says whether its exec agent answers pings: images built before
say nothing and are taken for agents that do not (their quiet commands are never failed),
and hal says once, with the command that rebuilds them, that a hung VM of them is not
noticed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hal9999.providers.qemu import provider as qemu
from hal9999.providers.qemu.image.store import Image, ImageMeta, ImageStore, hang_notice


def test_whether_the_agent_answers_pings_is_kept_and_absent_means_it_does_not(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path)
    new = ImageMeta(name="new", kind="golden", created_at=1.0, exec_ports=4, agent_pings=True)
    store.save_meta(store.new_dir("new"), new)
    assert store.get("new").meta == new
    # What `hal image build` wrote before pings: no such field.
    old = store.new_dir("old")
    fields = {"name": "old", "kind": "golden", "created_at": 1.0, "exec_ports": 4}
    (old / "meta.json").write_text(json.dumps(fields))
    assert store.get("old").meta.agent_pings is False
    # Nor whether its hal-setup hands a root hal's uid its files: a find/chown does it.
    assert store.get("old").meta.setup_adopts is False


def test_an_image_built_before_pings_is_named_with_the_command_that_rebuilds_it() -> None:
    old = ImageMeta(name="big", kind="golden", created_at=1.0, exec_ports=4,
                    packages=["git", "make"], suite="trixie")  # fmt: skip
    found = hang_notice(old)
    assert found is not None
    what, fix = found
    assert what.startswith("qemu image 'big' was built before hal could tell a hung VM")
    assert fix == (
        "rebuild it (as root): hal image rm big && "
        "hal image build --name big --packages git,make --suite trixie"
    )
    snap = old.model_copy(update={"name": "snap", "kind": "snapshot", "parent": "big"})
    assert "snapshot (of 'big')" in (hang_notice(snap) or ("", ""))[1]
    assert hang_notice(old.model_copy(update={"agent_pings": True})) is None
    assert hang_notice(old.model_copy(update={"exec_ports": 0})) is None, "ssh only: no agent"


def test_a_vm_of_such_an_image_warns_once_per_process_not_per_vm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "_WARNED", set())
    old = Image(tmp_path / "old", ImageMeta(name="old", kind="golden", created_at=1.0,
                                            exec_ports=4))  # fmt: skip
    new = Image(tmp_path / "new", old.meta.model_copy(update={"name": "new", "agent_pings": True}))
    with caplog.at_level(logging.WARNING, logger=qemu.__name__):
        for image in (old, new, old, new):
            qemu.warn_unpinged(image)
    assert [r.getMessage() for r in caplog.records] == ["; ".join(hang_notice(old.meta) or ())]
