"""Where ``hal run`` takes its prompt from, and what it says before the task starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests.support.hal import Hal

from hal9999.cli.crash import internal_error
from hal9999.tasks.session import Session

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

AGENT = ["--agent", "sh agent.sh {{prompt_file}}"]


def run_with_stdin(
    hal_env: dict[str, str], repo: Path, stdin: bytes, *args: str
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "hal9999", "run", *args],
        cwd=repo, env=hal_env, input=stdin, capture_output=True, timeout=120,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        out.args, out.returncode, out.stdout.decode(), out.stderr.decode()
    )


def prompt_of(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return Session(Path(json.loads(out.stdout)["session_dir"])).prompt_file.read_text()


def test_prompt_larger_than_argv_from_stdin(hal_env: dict[str, str], demo_repo: Path) -> None:
    prompt = "fix the test\n" + "context line\n" * 40_000  # ~520 KB: over one argv string
    out = run_with_stdin(hal_env, demo_repo, prompt.encode(), *AGENT, "--json", "-")
    assert prompt_of(out) == prompt


def test_prompt_file(hal: Hal, demo_repo: Path, tmp_path: Path) -> None:
    file = tmp_path / "prompt.txt"
    file.write_text("fix the failing test, ünïcode kept\n")
    out = hal("run", *AGENT, "--json", "--prompt-file", str(file))
    assert prompt_of(out) == file.read_text()


def test_prompt_file_dash_reads_stdin(hal_env: dict[str, str], demo_repo: Path) -> None:
    out = run_with_stdin(hal_env, demo_repo, b"from stdin", *AGENT, "--json", "--prompt-file", "-")
    assert prompt_of(out) == "from stdin"


def run_without_stdin(
    hal_env: dict[str, str], repo: Path, *args: str, fd: int = 0
) -> subprocess.CompletedProcess[str]:
    """``hal run ARGS`` started with its standard input (or ``fd``) closed (``<&-``,
    ``>&-``, some schedulers)."""
    return subprocess.run(
        [sys.executable, "-m", "hal9999", "run", *args], cwd=repo, env=hal_env,
        preexec_fn=lambda: os.close(fd), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_run_started_with_stdin_closed_runs_or_says_the_prompt_is_empty(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    """Python then has no ``sys.stdin``: every ``hal run`` was an internal error
    (AttributeError: 'NoneType' object has no attribute 'buffer'). A closed stdin reads
    as empty."""
    assert prompt_of(run_without_stdin(hal_env, demo_repo, *AGENT, "--json", "fix it")) == "fix it"
    out = run_without_stdin(hal_env, demo_repo, *AGENT, "-")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("hal: error: the prompt is empty"), out.stderr


def test_a_run_started_with_stdout_closed_runs_and_writes_nothing_into_its_files(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    """``sys.stdout.isatty()`` was an internal error; and descriptor 1 left free goes to
    the first file hal opens, where its lines would have landed."""
    out = run_without_stdin(hal_env, demo_repo, *AGENT, "fix it", fd=1)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    [task] = json.loads(subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "list", "--json"], env=hal_env,
        capture_output=True, text=True, check=True,
    ).stdout)  # fmt: skip
    assert task["status"] == "succeeded", task


def test_uncommitted_changes_are_named(hal: Hal, demo_repo: Path) -> None:
    (demo_repo / "calc.py").write_text("def add(a, b):\n    return a + b  # fixed by hand\n")
    (demo_repo / "notes.txt").write_text("new file\n")
    out = hal("run", "--agent", "true {{prompt_file}}", "x", "--json")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if "uncommitted" in line]
    assert len(notes) == 1
    assert "starts from the last commit (HEAD)" in notes[0] and "2 uncommitted" in notes[0]
    assert "fixed by hand" not in Path(json.loads(out.stdout)["session_dir"],
                                       "workspace", "calc.py").read_text()  # fmt: skip
    clean = hal("run", "--ref", "main", "--agent", "true {{prompt_file}}", "x")
    assert "uncommitted" not in clean.stderr  # an explicit ref is not HEAD


def test_unexpected_exception_is_one_line_and_a_private_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    environ = {"HAL_HOME": str(home), "MY_API_TOKEN": "tok-very-secret"}
    try:
        raise RuntimeError("boom with tok-very-secret inside\nsecond line")
    except RuntimeError as exc:
        error = internal_error(exc, environ)
    line = error.one_line()
    assert "\n" not in line and error.code == "internal" and error.exit_status == 1
    assert "RuntimeError: boom" in line and "tok-very-secret" not in line
    [log] = (home / "run").glob("hal-crash-*.log")
    assert str(log) in line
    assert (log.stat().st_mode & 0o777) == 0o600
    text = log.read_text()
    assert "Traceback" in text and "tok-very-secret" not in text and "[REDACTED]" in text


def test_a_home_that_cannot_even_be_looked_at_still_gets_a_crash_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # stat() of a name over 255 bytes raised from the crash reporter itself: a raw traceback.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    environ = {"HAL_HOME": str(tmp_path / ("h" * 300))}
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        error = internal_error(exc, environ)
    [log] = tmp_path.glob("hal-crash-*.log")
    assert str(log) in error.one_line()
