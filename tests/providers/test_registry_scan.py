"""A daemon loads a provider and a process manager at every run of every task: the installed
packages' metadata is scanned for them once, not each time (a scan was ~18% of the daemon's
CPU per task, issue 16), and a plugin installed later is still found."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hal9999.errors import ConfigError, UnknownProvider
from hal9999.process import registry as managers
from hal9999.providers import registry as providers


def counting(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch, extra: list[EntryPoint]
) -> list[int]:
    """Count the module's metadata scans; each scan also finds the entry points in ``extra``."""
    calls: list[int] = []
    real: Callable[..., Any] = entry_points

    def scan(group: str) -> list[EntryPoint]:
        calls.append(1)
        return [*real(group=group), *extra]

    monkeypatch.setattr(module, "entry_points", scan)
    monkeypatch.setattr(module, "_found", {})
    return calls


def test_providers_are_looked_up_once_for_many_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = counting(providers, monkeypatch, [])
    for n in range(5):
        providers.load_provider("fake", state_dir=tmp_path / str(n))
    assert len(scans) == 1


def test_process_managers_are_looked_up_once_for_many_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = counting(managers, monkeypatch, [])
    for _ in range(5):
        managers.load_process_manager("direct", runtime_dir=tmp_path)
    assert len(scans) == 1


def test_a_plugin_installed_after_the_first_scan_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra: list[EntryPoint] = []
    scans = counting(providers, monkeypatch, extra)
    providers.load_provider("fake", state_dir=tmp_path / "a")
    with pytest.raises(UnknownProvider):
        providers.load_provider("later", state_dir=tmp_path / "b")
    (fake,) = [ep for ep in entry_points(group=providers.GROUP) if ep.name == "fake"]
    extra.append(EntryPoint(name="later", value=fake.value, group=providers.GROUP))
    assert providers.load_provider("later", state_dir=tmp_path / "c").name == "fake"
    before = len(scans)
    providers.load_provider("fake", state_dir=tmp_path / "d")
    providers.load_provider("later", state_dir=tmp_path / "e")
    assert len(scans) == before, "both are kept now"

    manager_scans = counting(managers, monkeypatch, [])
    with pytest.raises(ConfigError):
        managers.load_process_manager("no-such-manager", runtime_dir=tmp_path)
    managers.load_process_manager("direct", runtime_dir=tmp_path)
    assert len(manager_scans) == 2
