"""A daemon loads a provider and a process manager at every run of every task, an in-process
``hal run`` one of each: the installed packages' metadata is scanned for them once, in one
scan for both (a scan per load is a large share of the daemon's CPU per task), and a plugin
installed later is still found."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

from hal9999 import entrypoints
from hal9999.errors import ConfigError, UnknownProvider
from hal9999.process import registry as managers
from hal9999.providers import registry as providers


class _Scan:
    """What ``entry_points()`` gives, plus the entry points in ``extra``."""

    def __init__(self, extra: list[EntryPoint]) -> None:
        self.extra = list(extra)

    def select(self, *, group: str) -> list[EntryPoint]:
        real: Callable[..., Any] = entry_points
        return [*real(group=group), *(ep for ep in self.extra if ep.group == group)]


def counting(monkeypatch: pytest.MonkeyPatch, extra: list[EntryPoint]) -> list[int]:
    """Count the metadata scans; each scan also finds the entry points in ``extra``."""
    calls: list[int] = []

    def scan() -> _Scan:
        calls.append(1)
        return _Scan(extra)

    monkeypatch.setattr(entrypoints, "entry_points", scan)
    monkeypatch.setattr(entrypoints, "_scan", None)
    monkeypatch.setattr(entrypoints, "_found", {})
    return calls


def test_providers_and_process_managers_are_looked_up_in_one_scan_for_many_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = counting(monkeypatch, [])
    for n in range(5):
        providers.load_provider("fake", state_dir=tmp_path / str(n))
        managers.load_process_manager("direct", runtime_dir=tmp_path)
    assert len(scans) == 1


def test_a_plugin_installed_after_the_first_scan_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra: list[EntryPoint] = []
    scans = counting(monkeypatch, extra)
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

    with pytest.raises(ConfigError):
        managers.load_process_manager("no-such-manager", runtime_dir=tmp_path)
    managers.load_process_manager("direct", runtime_dir=tmp_path)
    assert len(scans) == before + 1  # the unknown name scanned again; "direct" was in it
