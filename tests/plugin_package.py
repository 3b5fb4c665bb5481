"""A made-up installed package that registers hal plugins through real entry points: a
``*.dist-info`` directory (with its ``entry_points.txt``) and modules, on ``sys.path``."""

from __future__ import annotations

from pathlib import Path

import pytest


def install_package(
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
    entry_points: str,
    modules: dict[str, str] | None = None,
    name: str = "hal-test-plugin",
) -> Path:
    """Install package ``name`` into ``site`` (put on ``sys.path``) with ``entry_points``
    (an ``entry_points.txt``) and ``modules`` (module name -> source); ``site``."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(site))
    return site
