"""A root hal's VM of an image built before hal-setup's adopt step says so, once per process
and image, on stderr with the command that rebuilds it (only ``hal doctor`` and
``hal image list`` said it; each start, restore or fork ran the find/chown without a word)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal9999.providers.qemu import notice as qemunotice
from hal9999.providers.qemu.image.store import Image, ImageMeta


def test_an_image_before_adopt_is_noted_once_per_process_with_its_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemunotice, "_NOTED", set())
    meta = ImageMeta(name="old", kind="golden", created_at=1.0, exec_ports=4,
                     agent_pings=True, packages=["make"])  # fmt: skip
    old = Image(tmp_path / "old", meta)
    new = Image(tmp_path / "new", meta.model_copy(update={"name": "new", "setup_adopts": True}))
    other = Image(tmp_path / "other", meta.model_copy(update={"name": "other"}))
    for image in (old, new, old, other, old, new):
        qemunotice.note_unadopted(image)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("hal: note: qemu image 'old' was built before its guest setup")
    assert lines[0].endswith(
        "; rebuild it (as root): hal image rm old && hal image build --name old --packages make"
    )
    assert lines[1].startswith("hal: note: qemu image 'other' ")
