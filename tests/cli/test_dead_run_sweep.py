"""What a run killed after its final status left (its sandbox: a directory, a uid, maybe a
keeper) is swept by the next hal command, not only by the next ``hal serve``
(tasks/deadruns.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import hal_processes_of
from tests.support.crash import KILLER
from tests.support.hal import Hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow]


def _left(hal_env: dict[str, str]) -> list[str]:
    state = Path(hal_env["HAL_HOME"]) / "sandboxes" / "bwrap"
    return sorted(p.name for p in state.iterdir()) if state.exists() else []


def _killed_after_its_end(hal_env: dict[str, str], repo: Path, point: str) -> dict[str, object]:
    agent = "sh -c 'exit 3'" if point == "failed_written" else "sh -c 'exit 0'"
    done = subprocess.run(
        [sys.executable, str(KILLER), point, "run", "--agent", agent, "do it"],
        cwd=repo, env=hal_env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -9, done.stderr
    return {"status": "failed" if point == "failed_written" else "succeeded"}


@pytest.mark.parametrize("point", ["failed_written", "final_status_written", "bwrap_destroyed"])
@pytest.mark.parametrize("command", ["list", "run"])
def test_a_run_killed_before_its_sandbox_went_is_swept_by_the_next_command(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, point: str, command: str
) -> None:
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    wanted = _killed_after_its_end(hal_env, demo_repo, point)
    # The killed run's, but for one killed once it was destroyed (its record not yet
    # cleared): then the sweep's destroy finds nothing, and clears the record all the same.
    sandbox = _left(hal_env)
    assert len(sandbox) == (0 if point == "bwrap_destroyed" else 1)
    if command == "list":
        listed = hal("task", "list", env=hal_env)  # the table: the thin path steps aside
        assert listed.returncode == 0, listed.stderr
    else:
        again = hal("run", "--agent", "sh -c 'exit 0'", "again", env=hal_env)
        assert again.returncode == 0, again.stderr
    assert _left(hal_env) == [], f"{sandbox} left"
    task = tasks_json(hal)[-1]
    assert task["status"] == wanted["status"]
    assert (task["sandbox_id"], task["runner_pid"]) == (None, None)
    assert hal_processes_of(task) == []


def test_the_sweep_takes_the_credential_files_out_of_the_killed_runs_session(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    # The run's end takes them out before it destroys the sandbox: killed after its final
    # status, it left them in the session's agent home too.
    hal_env = {**hal_env, "HAL_NO_DAEMON": "1"}
    cred = tmp_path / "token.json"
    cred.write_text('{"token": "cred-file-canary"}')
    config_dir = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        f'[[credentials]]\nsource = "{cred}"\ntarget = ".config/tool/token.json"\n'
    )
    _killed_after_its_end(hal_env, demo_repo, "failed_written")
    # Found without hal (any `hal task list`, `--json` too, sweeps).
    [session] = (Path(hal_env["HAL_HOME"]) / "sessions").iterdir()
    left = session / "home" / ".config" / "tool" / "token.json"
    assert left.exists(), "the killed run's end had not taken it out yet"
    assert hal("task", "list", env=hal_env).returncode == 0
    assert not left.exists()
    assert _left(hal_env) == []
