"""A bare ``hal task list`` that the store alone answers is printed from the entry point,
without click; everything else about it is click's, as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.closed_stdout import closed_and_broken
from tests.support.cli import IMPORTED
from tests.support.tasks import make_task

from hal9999.store import Store

CLICK_PATH = """
import sys
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.main import main
main()
"""
"""``hal ARGS`` through click (the full entry point, past the thin ones)."""
LIST_MODULES = 100
"""At most this many modules in a bare ``hal task list`` run by ``IMPORTED`` (87 at this
writing, 150 through click, which is what the ceiling is to catch)."""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAL_", "XDG_"))}
    env.update(HAL_HOME=str(home), HOME=str(home.parent / "user"), **extra)
    return env


def _run(argv: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=_env(home, **extra), cwd=home.parent / "here", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def _modules(home: Path, **extra: str) -> tuple[str, list[str]]:
    """stdout and the modules of a real bare ``hal task list``."""
    done = _run([sys.executable, "-c", IMPORTED, "task", "list"], home, **extra)
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (tmp_path / "here").mkdir()
    with Store.open(home) as store:
        for n, status in enumerate(("succeeded", "failed")):
            store.insert_task(make_task(home, f"t{n:07d}", status, created_at=1_000.0 + n))
    return home


def test_a_bare_task_list_imports_no_click_and_prints_clicks_table(home: Path) -> None:
    out, loaded = _modules(home)
    assert not [m for m in loaded if m.split(".")[0] in {"click", "typing", "pathlib"}]
    assert len(loaded) <= LIST_MODULES, len(loaded)
    through_click = _run([sys.executable, "-c", CLICK_PATH, "task", "list"], home)
    assert (through_click.returncode, through_click.stderr) == (0, "")
    assert out == through_click.stdout
    assert [line.split()[0] for line in out.splitlines()] == ["ID", "t0000001", "t0000000"]


def test_an_empty_store_says_so_as_click_does(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "here").mkdir()
    Store.open(home).close()
    out, loaded = _modules(home)
    assert "click" not in loaded
    assert out == _run([sys.executable, "-c", CLICK_PATH, "task", "list"], home).stdout
    assert out == 'no tasks yet; start one with: hal run "PROMPT"\n'


@pytest.mark.parametrize(
    "extra",
    [{"HAL_LOG_LEVEL": "WARNING"},  # a variable only the full config reads: the full path
     {"PYTHONIOENCODING": "ascii"}],  # a stream click's echo must take over
)  # fmt: skip
def test_what_the_thin_list_cannot_answer_goes_to_click(home: Path, extra: dict[str, str]) -> None:
    out, loaded = _modules(home, **extra)
    assert "click" in loaded
    assert out == _modules(home)[0]


def test_closed_and_broken_output_end_as_clicks_do(home: Path) -> None:
    for argv in (
        [sys.executable, "-m", "hal9999", "task", "list"],
        [sys.executable, "-c", CLICK_PATH, "task", "list"],
    ):
        closed, broken = closed_and_broken(argv, env=_env(home), cwd=home.parent / "here")
        assert (closed, broken) == ((0, b""), (141, b"")), argv
