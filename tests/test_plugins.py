"""plugins: one loader, one error policy, for providers, agent presets and process managers.

A made-up installed package registers a broken plugin of each kind (its module raises at
import): asked for by name, each is one error line naming it and the fix; where every
plugin of a kind is loaded, it is one warning line and the rest load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.plugin_package import install_package

from hal9999 import plugins
from hal9999.errors import HalError, ProcessError, ProviderUnavailable
from hal9999.process.registry import load_process_manager
from hal9999.providers.registry import load_provider

ENTRY_POINTS = """\
[hal9999.agents]
brokenagent = hal_broken_plugin:Agent

[hal9999.providers]
brokenprovider = hal_broken_plugin:Provider

[hal9999.process_managers]
brokenmanager = hal_broken_plugin:Manager
"""


@pytest.fixture
def broken_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on ``sys.path`` holding an installed package whose plugins are broken."""
    broken = {"hal_broken_plugin": "raise RuntimeError('this plugin is broken')\n"}
    return install_package(tmp_path / "site", monkeypatch, ENTRY_POINTS, broken)


def _one_line(exc: HalError, name: str) -> None:
    line = exc.one_line()
    assert "\n" not in line and name in line and "hal_broken_plugin:" in line, line
    assert "this plugin is broken" in line and plugins.FIX in line, line


def test_a_process_manager_that_cannot_be_loaded_is_one_error_line(broken_package: Path) -> None:
    with pytest.raises(ProcessError) as caught:
        load_process_manager("brokenmanager")
    _one_line(caught.value, "'brokenmanager'")


def test_a_provider_whose_import_raises_is_one_error_line(
    broken_package: Path, tmp_path: Path
) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        load_provider("brokenprovider", state_dir=tmp_path / "state")
    _one_line(caught.value, "'brokenprovider'")


def test_loading_every_plugin_warns_once_for_a_broken_one_and_loads_the_rest(
    broken_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind, broken, builtin in [
        (plugins.AGENTS, "brokenagent", "claude"),
        (plugins.PROVIDERS, "brokenprovider", "bwrap"),
        (plugins.PROCESS_MANAGERS, "brokenmanager", "tmux"),
    ]:
        loaded = plugins.load_all(kind)
        assert builtin in loaded and broken not in loaded
        warned = capsys.readouterr().err.splitlines()
        assert len(warned) == 1 and warned[0].startswith("hal: warning: "), warned
        assert f"{kind.what} '{broken}'" in warned[0] and plugins.FIX in warned[0], warned


def test_hal_doctor_warns_of_a_broken_agent_preset_and_checks_the_others(
    broken_package: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(broken_package), *sys.path]),
        "HAL_HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "hal9999", "doctor", "--json"], capture_output=True, env=env
    )
    report = json.loads(done.stdout)
    assert "checks" in report, (report, done.stderr)
    agents = {c["name"]: c for c in report["checks"] if c["name"].startswith("agent ")}
    broken = agents.pop("agent brokenagent")
    assert not broken["ok"] and not broken["required"] and broken["fix"] == plugins.FIX
    assert "this plugin is broken" in broken["detail"]
    assert "agent claude" in agents
