"""A module hal starts in a new interpreter never runs a file of the directory it is started
from: ``python -m`` puts the working directory first on the path, and hal starts the gateway,
the runner, the daemon and the relays from wherever it runs, usually the user's repository."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

import hal9999
from hal9999.gateway.channel import GatewayPaths, ensure_running, gateway_pid
from hal9999.pymodule import module_argv

pytestmark = pytest.mark.timeout(120)

SHADOWS = ("typing", "enum", "json", "textwrap", "shutil", "dataclasses", "pathlib", "secrets")


def shadowing_repo(root: Path) -> tuple[Path, Path]:
    """A directory whose files shadow standard modules; each one that runs leaves a mark."""
    repo = root / "repo"
    repo.mkdir()
    marks = root / "marks"
    marks.mkdir()
    for name in SHADOWS:
        (repo / f"{name}.py").write_text(
            f"open({str(marks / name)!r}, 'w').close()\nraise SystemExit('ran {name}.py')\n"
        )
    return repo, marks


def test_a_hal_module_started_from_a_repository_runs_none_of_its_files(tmp_path: Path) -> None:
    repo, marks = shadowing_repo(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.pop("PYTHONSAFEPATH", None)
    env["HAL_HOME"] = str(tmp_path / "home")
    for module in ("hal9999", "hal9999.gateway"):
        done = subprocess.run(module_argv(module, "--help"), cwd=repo, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in marks.iterdir()) == [], done.stderr


def test_the_gateway_started_from_a_repository_runs_none_of_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a cloned project's ``enum.py`` ran as the gateway, which holds the keys."""
    repo, marks = shadowing_repo(tmp_path)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.chdir(repo)
    paths = GatewayPaths(tmp_path / "home")
    try:
        asyncio.run(ensure_running(paths))
        assert asyncio.run(gateway_pid(paths)) is not None
    finally:
        pid = asyncio.run(gateway_pid(paths))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    assert sorted(p.name for p in marks.iterdir()) == []


def test_every_python_m_start_of_hal_goes_through_module_argv() -> None:
    """The one place that adds ``-P``: a new spawn written as ``sys.executable, "-m"`` would
    put the working directory back on its path."""
    src = Path(hal9999.__file__).parent
    spawn = re.compile(r"sys\.executable,\s*\"-m\"")
    found = [str(p.relative_to(src)) for p in sorted(src.rglob("*.py"))
             if spawn.search(p.read_text())]  # fmt: skip
    assert found == []
