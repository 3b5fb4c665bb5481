"""Fixtures the provider tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A sandbox's workspace holding one file, ``README`` (``hello``)."""
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "README").write_text("hello\n")
    return path
