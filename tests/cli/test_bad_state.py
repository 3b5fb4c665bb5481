"""A task's session files and the daemon's files in a state hal cannot read (a directory
where a file should be, mode 000) end in one line naming the file and the fix, never a crash
report, and leave the task as it was: ``hal task list`` still shows it unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import Hal, one_error_line, tasks_json

WORK = ("run", "--provider", "local", "--agent", "sh -c 'echo hi > new.txt' {{prompt_file}}",
        "--json", "x")  # fmt: skip
READERS = {
    "events.jsonl": (("task", "events"), ("task", "events", "--json"), ("task", "events", "-f"),
                     ("task", "resume", "--", "more")),
    "agent.log": (("task", "logs"), ("task", "logs", "-f")),
    "result.patch": (("task", "diff"),),
}  # fmt: skip


def test_a_session_file_that_is_a_directory_is_one_line(hal: Hal) -> None:
    """Each was "internal error (IsADirectoryError ...)" and a crash log."""
    out = hal(*WORK, env={"HAL_LOCAL_NETWORK": "host"})
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    for name in READERS:
        (session / name).unlink()
        (session / name).mkdir()
    for name, commands in READERS.items():
        for command in commands:
            args = [*command[:2], task["id"], *command[3:]]
            out = hal(*args, timeout=30)
            assert out.returncode == 2, (command, out.stderr)
            line = one_error_line(out)
            assert f"cannot open {session / name}: it is a directory" in line, line
            assert "move it aside" in line, line
    [listed] = tasks_json(hal)
    assert listed["status"] == "succeeded" and listed["files_changed"] == 1, listed
    assert not list(session.parent.parent.glob("run/hal-crash-*"))


def test_a_task_whose_session_directory_is_gone_does_not_resume(hal: Hal) -> None:
    """The resume ran anyway (the directory made again, empty) and turned the succeeded task
    into a failed one ("bind source ... does not exist"), with no error line."""
    out = hal(*WORK, env={"HAL_LOCAL_NETWORK": "host"})
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    shutil.rmtree(session)
    for detach in ((), ("--detach",)):
        out = hal("task", "resume", *detach, task["id"], "more", timeout=30)
        assert out.returncode == 9, out.stderr
        line = one_error_line(out)
        assert f"its session directory {session} is gone" in line, line
        assert f"hal task rm {task['id']}" in line, line
    [listed] = tasks_json(hal)
    assert listed["status"] == "succeeded" and listed["resumes"] == 0, listed
    assert not session.exists()


SETPRIV = shutil.which("setpriv")


def hal_without_file_powers(
    hal_env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``hal ARGS`` as root without the powers that ignore file modes (as any other user)."""
    if SETPRIV is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    return subprocess.run(
        [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-m",
         "hal9999", *args], env=hal_env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_files_hal_may_not_read_are_one_line(hal: Hal, hal_env: dict[str, str]) -> None:
    """Each was "internal error (PermissionError ...)": a session directory of mode 000
    under ``hal task resume``, a run directory of mode 000 under ``hal serve``, a token file
    of mode 000 when a daemon runs."""
    out = hal(*WORK, env={"HAL_LOCAL_NETWORK": "host"})
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    session = Path(task["session_dir"])
    session.chmod(0)
    try:
        out = hal_without_file_powers(hal_env, "task", "resume", task["id"], "more")
    finally:
        session.chmod(0o700)
    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert f"cannot open {session / 'run' / 'resume.lock'}: Permission denied" in line, line
    home = Path(hal_env["HAL_HOME"])
    (home / "run").chmod(0)
    try:
        for args in (("serve", "--detach"), ("serve", "--stop")):
            out = hal_without_file_powers(hal_env, *args)
            assert out.returncode == 2, out.stderr
            line = one_error_line(out)
            # The lock is read first: whether a daemon holds it decides, not the info file.
            assert f"cannot read {home / 'run' / 'serve.lock'}: Permission denied" in line, line
    finally:
        (home / "run").chmod(0o700)
    from hal9999.server.runtime import DaemonFiles, DaemonInfo

    files = DaemonFiles(home)
    files.ensure_token()
    (home / "token").chmod(0)
    socket = home / "run" / "hal.sock"
    socket.write_text("")  # stands for the daemon's socket: only its being there is checked
    with files.lock():  # held, as by a running daemon
        files.write_info(DaemonInfo(pid=1, socket=str(socket), port=1, started_at=0.0))
        out = hal_without_file_powers(hal_env, "status")
        # A listing reads the store, as it does without a daemon (the thin path): the
        # daemon's token is not needed for it.
        listing = hal_without_file_powers(hal_env, "task", "list")
    assert out.returncode == 2, out.stderr
    assert f"cannot read {home / 'token'}: Permission denied" in one_error_line(out)
    assert listing.returncode == 0 and task["id"] in listing.stdout, listing.stderr
    [listed] = tasks_json(hal)  # as root: the files are as they were
    assert listed["status"] == "succeeded" and listed["resumes"] == 0, listed
