"""``hal task list`` reads the store without hal's models when nothing else can apply, and
prints exactly what the full path prints."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
from tests.support.cli import IMPORTED
from tests.support.tasks import make_task

from hal9999.cli.lazy import TASK_COMMANDS
from hal9999.cli.task_list import ACTIVE_STATES, FINAL_STATES, TASK_STATES, thin_home, thin_rows
from hal9999.config import load_config
from hal9999.home import DB_NAME
from hal9999.store import Store
from hal9999.tasks.state import ACTIVE, FINAL_VALUES, TaskStatus

MODELS = {"pydantic", "pydantic_core", "httpx", "asyncio", "anyio"}
"""What the thin path has no use for (the full path imports all of them)."""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAL_", "XDG_"))}
    env.update(HAL_HOME=str(home), HOME=str(home / "user"), **extra)
    return env


def _hal(home: Path, *args: str, cwd: Path, **extra: str) -> tuple[str, set[str], str]:
    """stdout, every module imported, and the rest of stderr of a real ``hal ARGS``."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *args], env=_env(home, **extra), cwd=cwd,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    *said, modules = done.stderr.strip().splitlines()
    return done.stdout, set(json.loads(modules)), "\n".join(said)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with three finished tasks and an empty working directory beside it."""
    home = tmp_path / "home"
    (tmp_path / "here").mkdir()
    with Store.open(home) as store:
        for n, status in enumerate(("succeeded", "failed", "cancelled")):
            store.insert_task(make_task(home, f"t{n:07d}", status, created_at=1_000.0 + n))
    return home


def test_task_list_imports_no_models_and_prints_the_full_paths_table(home: Path) -> None:
    here = home.parent / "here"
    thin, loaded, _ = _hal(home, "task", "list", cwd=here)
    assert {m.split(".")[0] for m in loaded} & MODELS == set()
    assert "hal9999.store.records" not in loaded and "hal9999.config" not in loaded
    # HAL_LOG_LEVEL is a variable only the full config understands: it takes the full path.
    full, full_loaded, _ = _hal(home, "task", "list", cwd=here, HAL_LOG_LEVEL="WARNING")
    assert "pydantic" in full_loaded  # it did take the full path
    assert thin == full
    assert [line.split()[0] for line in thin.splitlines()] == ["ID", "t0000002", "t0000001",
                                                               "t0000000"]  # fmt: skip


def test_status_and_limit_filter_as_the_full_path_does(home: Path) -> None:
    here = home.parent / "here"
    args = ("task", "list", "--status", "failed", "--status", "cancelled", "--limit", "1")
    thin, loaded, _ = _hal(home, *args, cwd=here)
    full, _, _ = _hal(home, *args, cwd=here, HAL_LOG_LEVEL="WARNING")
    assert "pydantic" not in loaded
    assert thin == full
    assert [line.split()[0] for line in thin.splitlines()] == ["ID", "t0000002"]


def test_a_filter_nothing_matches_says_so_not_that_there_are_no_tasks(home: Path) -> None:
    # It said "no tasks yet; start one", of a home holding three.
    here = home.parent / "here"
    args = ("task", "list", "--status", "running", "--status", "timed_out")
    thin, loaded, _ = _hal(home, *args, cwd=here)
    full, _, _ = _hal(home, *args, cwd=here, HAL_LOG_LEVEL="WARNING")
    assert "pydantic" not in loaded
    assert thin == full == "no running or timed_out tasks (`hal task list` lists every task)\n"


def test_a_task_whose_runner_died_is_still_reconciled(home: Path) -> None:
    # The thin path does not write: a dead runner sends `list` down the full path, which
    # marks the task interrupted, exactly as before.
    with Store.open(home) as store:
        # Above the kernel's largest pid_max (2**22): no such process can exist.
        store.insert_task(
            make_task(home, "dead0001", "running", created_at=2_000.0, runner_pid=2**22 + 7)
        )
    out, loaded, _ = _hal(home, "task", "list", cwd=home.parent / "here")
    assert "pydantic" in loaded
    assert "dead0001  interrupted" in out
    with Store.open(home) as store:
        assert store.get_task("dead0001").status == "interrupted"


@pytest.mark.parametrize("runner", ["dead", "live"])
def test_a_killed_runs_sandbox_takes_the_full_path_which_sweeps_it(home: Path, runner: str) -> None:
    # A run killed between its final status and its sandbox's destroy: its record names
    # the sandbox and its dead runner; the thin path does not destroy, the full one does
    # (tasks/deadruns.py). A live runner's (a run in that moment) is not owed: thin.
    live = subprocess.Popen(["hal-live-runner", "60"], executable="/bin/sleep")
    pid = 2**22 + 7 if runner == "dead" else live.pid
    try:
        with Store.open(home) as store:
            store.insert_task(make_task(home, "kill0001", "failed", created_at=2_000.0,
                                        runner_pid=pid, sandbox_id="gone0001"))  # fmt: skip
        rows = thin_rows(_env(home), home.parent / "here", (), None)
        assert (rows is None) == (runner == "dead")
    finally:
        live.kill()
        live.wait()


def test_a_bad_hal_variable_is_still_one_clear_error(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "list"], env=_env(home, HAL_LOG_LEVEL="loud"),
        cwd=home.parent / "here", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.startswith("hal: error: HAL_LOG_LEVEL")


def test_the_thin_home_is_the_configs_home_or_none(tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    user = tmp_path / "user"
    cases: list[dict[str, str]] = [
        {"HOME": str(user)},
        {"HOME": str(user), "XDG_DATA_HOME": str(tmp_path / "data")},
        {"HOME": str(user), "XDG_DATA_HOME": "relative/ignored"},
        {"HOME": str(user), "HAL_HOME": str(tmp_path / "h")},
        {"HOME": str(user), "HAL_HOME": str(tmp_path / "h"), "HAL_NO_DAEMON": "1"},
        {"HOME": str(user), "HAL_MAX_CONCURRENT": ""},
    ]
    for env in cases:
        assert thin_home(env, here) == load_config(env, here).home, env
    # What only the full config can resolve or check: no thin home.
    assert thin_home({"HOME": str(user), "HAL_HOME": "rel/home"}, here) is None
    assert thin_home({"HOME": str(user), "HAL_HOME": ""}, here) is None  # refused
    assert thin_home({"HOME": str(user), "HAL_HOME": "~/h"}, here) is None
    assert thin_home({"HOME": str(user), "HAL_HOME": f"{tmp_path}/h "}, here) is None  # refused
    assert thin_home({"HOME": str(user), "HAL_LOG_LEVEL": "DEBUG"}, here) is None
    (here / "hal.toml").write_text("")
    assert thin_home({"HOME": str(user)}, here) is None
    (here / "hal.toml").unlink()
    (here / "hal.toml").symlink_to(here / "gone.toml")  # a broken link: the config refuses it
    assert thin_home({"HOME": str(user)}, here) is None
    (here / "hal.toml").unlink()
    (user / ".config" / "hal9999").mkdir(parents=True)
    (user / ".config" / "hal9999" / "config.toml").write_text(f'home = "{tmp_path / "o"}"\n')
    assert thin_home({"HOME": str(user)}, here) is None


def test_no_thin_rows_for_a_missing_or_newer_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(tmp_path), "HAL_HOME": str(home)}
    assert thin_rows(env, tmp_path, (), None) is None
    assert not (home / DB_NAME).exists()  # and it created nothing
    Store.open(home).close()
    assert thin_rows(env, tmp_path, (), None) == []
    with sqlite3.connect(home / DB_NAME) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    conn.close()
    assert thin_rows(env, tmp_path, (), None) is None  # the full path says it is newer


def test_the_state_names_are_the_state_machines() -> None:
    assert list(TASK_STATES) == [state.value for state in TaskStatus]
    assert ACTIVE_STATES == {state.value for state in ACTIVE}
    assert FINAL_STATES == FINAL_VALUES


def test_the_task_table_names_every_task_command_and_its_module() -> None:
    import hal9999.cli.requests
    import hal9999.cli.task
    import hal9999.cli.task_control
    import hal9999.cli.task_list
    from hal9999.cli.task_group import task

    del hal9999.cli.requests, hal9999.cli.task, hal9999.cli.task_control, hal9999.cli.task_list
    assert set(task.commands) == set(TASK_COMMANDS), "add it to hal9999.cli.lazy.TASK_COMMANDS"
    for name, entry in TASK_COMMANDS.items():
        command = task.commands[name]
        assert command.callback is not None
        assert command.callback.__module__ == entry.modules[0], name
        assert command.hidden == entry.hidden, name
        for width in (30, 45, 70, 200):
            assert command.get_short_help_str(width) == click.Command(
                name, help=entry.short_help
            ).get_short_help_str(width), name


EAGER_TASK_HELP = """
import sys
import hal9999.cli.task, hal9999.cli.requests, hal9999.cli.task_list
sys.argv = ["hal", "task", "--help"]
from hal9999.cli.main import main
main()
"""


def test_lazy_task_help_is_the_help_of_the_loaded_commands(tmp_path: Path) -> None:
    env = _env(tmp_path, COLUMNS="100")
    lazy, eager = (
        subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
        for argv in (
            [sys.executable, "-m", "hal9999", "task", "--help"],
            [sys.executable, "-c", EAGER_TASK_HELP],
        )
    )
    assert "list" in lazy.stdout and "_run" not in lazy.stdout
    assert lazy.stdout == eager.stdout
