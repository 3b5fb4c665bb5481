"""The doctor runs of tests about something else start no real agent CLI
(tests/cli/quick_agents.py: ~6 s of CPU a doctor less, issue 16 stop 43), and what is not
installed stays missing. Counted, not timed: which agent checks the stubs answered."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tests.cli.conftest import Hal
from tests.cli.quick_agents import AGENTS, quick_agents_path

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
