"""The system calls of one submission (``TaskService.create_blocking``, what the daemon's
``POST /v1/tasks`` does in its worker thread), counted under strace (a daemon takes
a thousand in a burst, on the same process that runs them). Counted, not timed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests.support.tasks import git_repo, trivial_request

import hal9999
from hal9999.config import HalConfig
from hal9999.events.log import EventLog
from hal9999.events.models import TaskCreated
from hal9999.events.reader import read_events
from hal9999.store import Store
from hal9999.tasks.service import TaskService

_SUBMIT = """
import os, sys
from pathlib import Path
from hal9999.config import HalConfig
from hal9999.store import Store
from hal9999.tasks.request import RunRequest
from hal9999.tasks.service import TaskService

service = TaskService(HalConfig(home=Path(sys.argv[1])), Store.open(Path(sys.argv[1])), {})
def request():
    return RunRequest(prompt="p", repo=sys.argv[2], ref=None, agent="true {{prompt_file}}",
                      provider="bwrap", process_manager="direct", timeout_s=60)
service.create_blocking(request())  # the first: the store's and the home's first writes
os.write(1, b"<<submit>>")
service.create_blocking(request())
os.write(1, b"<<submitted>>")
"""


def submission_calls(tmp_path: Path) -> Counter[str]:
    """The system calls of a second submission in a fresh process, by name (without the
    ``lstat`` of each directory above the source, which its path's depth sets)."""
    trace = tmp_path / "trace"
    src = Path(hal9999.__file__).parents[1]  # the tree under test, whatever the venv holds
    env = {**os.environ, "PYTHONPATH": str(src)}
    repo = git_repo(tmp_path / "repo")
    argv = ["strace", "-qq", "-o", str(trace), sys.executable, "-c", _SUBMIT,
            str(tmp_path / "home"), str(repo)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, env=env)
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('write(1, "<<submit>>"'))
    end = next(i for i, line in enumerate(lines) if line.startswith('write(1, "<<submitted'))
    names = (re.match(r"(\w+)\(", line) for line in lines[start + 1 : end])
    calls = Counter(m.group(1) for m in names if m and m.group(1) != "futex")  # the flusher's
    calls["newfstatat"] -= len(repo.parts) - 1  # resolving the source's path
    return calls


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_submission_makes_its_session_without_checking_the_home_again(tmp_path: Path) -> None:
    # What a submission need not do: the home's
    # four directories stat'ed and access()ed again at every submission (7), the session's
    # root asked for twice more and the events' directory once more (mkdirs failing with
    # EEXIST, and their stats), the prompt and the events written through buffered files
    # (an fstat, an ioctl TCGETS, lseeks), a read of the kernel's random source a letter of
    # the id (12-19), the source stat'ed three times more.
    calls = submission_calls(tmp_path)
    assert calls["mkdir"] == 5, calls  # the session: its root, home, input, run, workspace
    assert calls["access"] == 0, calls
    assert calls["getrandom"] <= 1, calls
    assert calls["ioctl"] <= 2, calls  # the source's HEAD and config, read as git reads them
    assert calls["newfstatat"] <= 15, calls
    # A pin: lower it when a call goes, never raise it.
    assert sum(calls.values()) <= 83, calls


def test_a_submission_makes_the_homes_directories_again_when_they_went(tmp_path: Path) -> None:
    # The one mkdir of the session's root fails without its parent: then the home is
    # checked and made as at the service's start (its directories private, mode 700).
    home = tmp_path / "home"
    with Store.open(home) as store:
        service = TaskService(HalConfig(home=home), store, {})
        shutil.rmtree(home / "sessions")
        task = service.create_blocking(trivial_request(git_repo(tmp_path / "repo")))
        assert (home / "sessions").stat().st_mode & 0o777 == 0o700
        assert Path(task.session_dir).stat().st_mode & 0o777 == 0o700
        assert (Path(task.session_dir) / "events.jsonl").read_text().count("task_created") == 1


def test_an_event_log_makes_its_directory_when_it_is_not_there(tmp_path: Path) -> None:
    path = tmp_path / "gone" / "events.jsonl"
    with EventLog(path, "t1") as log:
        log.emit(TaskCreated(prompt_chars=1, agent="a", provider="p", repo="r", ref=None))
    assert [e.seq for e in read_events(path)] == [1]
