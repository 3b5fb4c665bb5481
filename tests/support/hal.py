"""Driving the real ``hal`` command as a subprocess against real git repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

AGENT = """#!/bin/sh
# A tiny custom agent: reads its prompt, fixes the bug, runs the test.
# No bytecode cache: an edit within the same second as the first run would look stale.
export PYTHONDONTWRITEBYTECODE=1
echo "agent: prompt: $(cat "$1")"
python3 test_calc.py || echo "agent: test fails, fixing"
sed -i 's/a - b/a + b/' calc.py
python3 test_calc.py
"""


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return stdout."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


BUGGY_CALC = "def add(a, b):\n    return a - b\n"
"""The planted bug every demo repository carries."""


def commit_repo(repo: Path, files: Mapping[str, str]) -> Path:
    """A new git repository at ``repo`` holding ``files`` in one commit on ``main``."""
    repo.mkdir(parents=True)
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "initial")
    return repo


def private_env(home: Path, config: Path, **more: str) -> dict[str, str]:
    """This environment for a hal subprocess, without the caller's ``HAL_*`` settings: a
    private HAL_HOME and config directory, and ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    return env | {"HAL_HOME": str(home), "XDG_CONFIG_HOME": str(config)} | more


Hal = Callable[..., subprocess.CompletedProcess[str]]


def tasks_json(hal: Hal) -> list[dict[str, Any]]:
    """``hal task list --json`` parsed."""
    out = hal("task", "list", "--json")
    assert out.returncode == 0, out.stderr
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data


def events_of(hal: Hal, task_id: str) -> list[dict[str, Any]]:
    """``hal task events --json`` parsed."""
    out = hal("task", "events", task_id, "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def env_of(hal: Hal) -> Mapping[str, str] | None:
    """The environment a ``hal`` of the ``hal`` fixture runs with (None for another)."""
    env: Mapping[str, str] | None = getattr(hal, "hal_env", None)
    return env


def daemon_tasks(hal: Hal) -> list[dict[str, Any]] | None:
    """``hal task list --json``'s document as the daemon of ``hal``'s home answers it (the
    same ``GET /v1/tasks`` that command sends it), asked from this process: a poll that
    starts no ``hal`` (each start ~0.3 s of CPU, taken from the work polled on a 2-core CI
    host). None when no daemon answers there."""
    from hal9999.errors import HalError
    from hal9999.server.client import DaemonClient

    env = env_of(hal)
    client = None if env is None else DaemonClient.find(env["HAL_HOME"])
    if client is None:
        return None
    try:
        found: list[dict[str, Any]] = client.request("GET", "/v1/tasks")
    except HalError:  # it went away
        return None
    return found


def tasks_now(hal: Hal) -> list[dict[str, Any]]:
    """The home's tasks for a poll: :func:`daemon_tasks`, else ``hal task list --json``."""
    found = daemon_tasks(hal)
    return tasks_json(hal) if found is None else found


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The single error line; asserts there is no traceback and no crash report."""
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    assert len(lines) == 1, out.stderr
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def no_sessions(hal_env: dict[str, str]) -> bool:
    """Whether ``HAL_HOME`` holds no task session."""
    sessions = Path(hal_env["HAL_HOME"], "sessions")
    return not sessions.exists() or not any(sessions.iterdir())


_started: list[subprocess.Popen[str]] = []


def start_hal(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    """``hal ARGS...`` in the background (killed at the end of the test if still running)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _started.append(proc)
    return proc


def reap_started() -> None:
    """Kill and wait for every ``start_hal`` process still running."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
