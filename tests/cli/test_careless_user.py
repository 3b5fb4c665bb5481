"""What a careless or hurried user does to hal (a home behind a symlink, a stuck daemon, an
attach from no terminal, an empty ``--repo``, a daemon killed under a run, a read-only
repository) ends in the task's work or in one clear line and the documented status, never a
failure hal made."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.cli import wait_for_status
from tests.support.hal import Hal, git, no_sessions, one_error_line

from hal9999.cli import daemon_run
from hal9999.server import client
from hal9999.server.client import DaemonUnavailable


@pytest.mark.bwrap
@pytest.mark.tmux
def test_a_hal_home_behind_a_symlink_runs_tasks(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    # HAL_HOME=~/hal, a link to a bigger disk: git saw the workspace by its real path, not
    # the one hal made it safe under, and every task as root failed "dubious ownership".
    real = tmp_path / "real-home"
    real.mkdir()
    link = tmp_path / "home-link"
    link.symlink_to(real)
    out = hal("run", "--json", "--agent", "sh agent.sh {{prompt_file}}", "fix it",
              env={"HAL_HOME": str(link)})  # fmt: skip
    task = json.loads(out.stdout)
    assert (out.returncode, task["status"]) == (0, "succeeded"), task["error_message"]
    assert "a + b" in git(demo_repo, "show", f"hal/{task['id']}:calc.py")


@pytest.mark.slow
def test_status_of_a_stuck_daemon_says_so_rather_than_wait_forever(
    hal: Hal, hal_env: dict[str, str]
) -> None:
    # A daemon stopped (Ctrl-Z in its terminal, SIGSTOP) or stuck: `hal status`, the command
    # every daemon error's hint names, waited for its answer without end.
    assert hal("serve", "--detach").returncode == 0
    pid = json.loads(Path(hal_env["HAL_HOME"], "run", "serve.json").read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        out = hal("status", "--json", timeout=40)
    finally:
        os.kill(pid, signal.SIGCONT)
        hal("serve", "--stop")
    assert out.returncode == 1
    line = one_error_line(out)
    assert f"the hal daemon (pid {pid}) did not answer in 10 s" in line
    assert "hal serve --stop" in line
    assert json.loads(out.stdout)["error"]["code"] == "daemon_unavailable"


@pytest.mark.bwrap
@pytest.mark.tmux
def test_attach_without_a_terminal_says_so_in_one_line(hal: Hal) -> None:
    # `hal task attach ID` from a script, an editor's task runner or `< /dev/null`: tmux's
    # own "open terminal failed: not a terminal" and exit 1, no hal line, no way on.
    out = hal("run", "--detach", "--json", "--agent", "sh -c 'sleep 60' {{prompt_file}}", "wait")
    task_id = json.loads(out.stdout)["id"]
    try:
        wait_for_status(hal, "running")
        out = hal("task", "attach", task_id)  # stdin is /dev/null
    finally:
        hal("task", "cancel", task_id)
    assert out.returncode == 2
    line = one_error_line(out)
    assert "hal task attach needs a terminal" in line
    assert f"hal task logs -f {task_id}" in line


@pytest.mark.parametrize("form", [("--repo", ""), ("--repo=",)])
def test_an_empty_repo_is_refused_not_read_as_the_current_one(
    hal: Hal, hal_env: dict[str, str], form: tuple[str, ...]
) -> None:
    # `hal run --repo "$REPO"` with REPO unset: the agent worked on whatever repository the
    # shell stood in, and the task succeeded there.
    out = hal("run", "--json", *form, "--agent", "true {{prompt_file}}", "x")
    assert out.returncode == 4
    assert "hal: error: --repo is empty (" in one_error_line(out)
    assert json.loads(out.stdout)["error"]["code"] == "repo_invalid"
    assert no_sessions(hal_env)


class _GoneDaemon:
    """A daemon client whose daemon was killed (-9) while its task ran."""

    def request(self, *args: object, **kwargs: object) -> object:
        raise DaemonUnavailable("cannot reach the hal daemon at x.sock: Connection refused")


def test_a_run_whose_daemon_died_says_so_and_names_its_task(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `hal run` through a daemon killed mid-task: a minute without a word, then "cannot
    # reach the hal daemon", naming neither the task nor that its work is still to be had.
    monkeypatch.setattr(client, "RECONNECT_S", 0.0)
    monkeypatch.setattr(daemon_run.time, "sleep", lambda s: None)
    with pytest.raises(DaemonUnavailable) as raised:
        daemon_run.see_through(_GoneDaemon(), "ab12cd34", None, None)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    # The note says what failed (here the daemon's socket refuses), once.
    note = "hal: note: cannot reach the hal daemon at x.sock: Connection refused; waiting up to 0 s"
    assert err.count(note) == 1, err
    assert "task ab12cd34 goes on without it" in err
    error = raised.value
    assert "went away while task ab12cd34 ran" in str(error) and "Connection refused" in str(error)
    assert error.hint is not None and "hal serve --detach" in error.hint
    assert "hal task show ab12cd34" in error.hint


@pytest.mark.bwrap
@pytest.mark.tmux
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bwrap for a read-only mount")
def test_a_read_only_repository_says_where_the_work_is(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # A checkout on a read-only mount: the result's fetch failed, saying where the work is
    # safe, and the clean-up of its private ref failed too, in its place: the line said only
    # "dropping the private ref failed", and not where the finished work was.
    argv = [str(shutil.which("bwrap")), "--dev-bind", "/", "/",
            "--ro-bind", str(demo_repo), str(demo_repo), "--chdir", str(demo_repo),
            sys.executable, "-m", "hal9999",
            "run", "--json", "--agent", "sh agent.sh {{prompt_file}}", "fix it"]  # fmt: skip
    out = subprocess.run(argv, env=hal_env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 4, out.stderr
    task = json.loads(out.stdout)
    assert task["error_code"] == "repo_invalid"
    assert "Read-only file system" in task["error_message"]
    assert f"the work is safe in the session: {task['session_dir']}" in task["error_message"]
    assert "a + b" in Path(task["session_dir"], "result.patch").read_text()
