"""``hal serve`` killed (SIGKILL) before its run took the credential files out of the task's
session: the next ``hal serve`` takes them out (copies of the user's token files must not
outlive the run in ``$HAL_HOME``, nor meet the next task of the pooled sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.crash import killed_daemon, settle
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.parametrize(
    "point", ["final_status_written", "task_end_logged", "running_recorded", "mid_agent"]
)
def test_a_restart_takes_out_the_credentials_a_killed_daemons_run_left(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path, point: str, reaped: None
) -> None:
    cred = tmp_path / "token.json"
    cred.write_text('{"token": "cred-file-canary"}')
    config_dir = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.toml").write_text(
        f'[[credentials]]\nsource = "{cred}"\ntarget = ".config/tool/token.json"\n'
    )
    task_id = killed_daemon(hal, hal_env, demo_repo, point)
    [session] = (Path(hal_env["HAL_HOME"]) / "sessions").iterdir()
    left = session / "home" / ".config" / "tool" / "token.json"
    assert left.exists(), "the killed daemon's run had not taken it out yet"
    assert hal("serve", "--detach").returncode == 0
    try:
        task = settle(hal, task_id)
        assert task["status"] in ("succeeded", "interrupted"), task
        assert not left.exists(), f"left in the session of a {task['status']} task"
    finally:
        assert hal("serve", "--stop").returncode == 0
