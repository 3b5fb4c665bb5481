"""A task's session files in a state hal cannot read (a directory where a file should be)
end in one line naming the file and the fix, never a crash report, and leave the task as it
was: ``hal task list`` still shows it unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.cli.conftest import Hal, one_error_line, tasks_json

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
