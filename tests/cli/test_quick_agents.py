"""The doctor runs of tests about something else start no real agent CLI
(tests/cli/quick_agents.py: ~6 s of CPU a doctor less), and what is not
installed stays missing. Counted, not timed: which agent checks the stubs answered."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tests.cli.quick_agents import AGENTS, quick_agents_path
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap]


def test_doctor_on_the_quick_path_asks_only_the_stubs(hal: Hal, tmp_path: Path) -> None:
    path = os.environ["PATH"]
    quick = quick_agents_path(tmp_path / "quick-agents", path)
    out = hal("doctor", "--json", env={"PATH": quick}, timeout=120)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    for name in AGENTS:
        check = checks[f"agent {name}"]
        if shutil.which(name, path=path) is None:
            assert not check["ok"] and check["detail"] == "not installed", check
        else:
            assert check["ok"] and check["detail"].startswith(f"{name} (a stub of the test)")
    assert checks["git"]["ok"] and checks["bwrap sandbox"]["ok"]  # the rest as before


def test_the_agent_versions_tests_path_runs_no_installed_agent_cli(tmp_path: Path) -> None:
    """test_doctor.py's fake PATH: its claude and codex are the test's, aider is missing, and
    every other agent CLI is a stub (gemini and opencode from /usr/bin
    cost its two doctors ~12 s of CPU). Fails with the real CLIs back on that PATH."""
    from tests.support.cli import fake_bin

    path = fake_bin(tmp_path)
    for name in AGENTS:
        found = shutil.which(name, path=path)
        assert found is None or Path(found).is_relative_to(tmp_path), (name, found)
    assert shutil.which("aider", path=path) is None
