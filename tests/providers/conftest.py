"""Fixtures the provider tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal9999.providers.qemu.vm import RunDir


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A sandbox's workspace holding one file, ``README`` (``hello``)."""
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "README").write_text("hello\n")
    return path


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunDir:
    """A qemu VM's run directory (its agent ports' sockets) under a private HAL_QEMU_RUN_DIR."""
    monkeypatch.setenv("HAL_QEMU_RUN_DIR", str(tmp_path / "run"))
    run = RunDir("vm")
    run.path.mkdir(parents=True)
    return run
