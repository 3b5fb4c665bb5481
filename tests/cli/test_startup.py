"""CLI start-up: ``hal --version`` and ``hal --help`` import no heavy package, and the lazy
command table still reaches every command."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import hal9999.cli
from hal9999.cli.lazy import COMMANDS
from hal9999.cli.main import cli
from hal9999.store import Store

HEAVY = {"pydantic", "pydantic_core", "httpx", "asyncssh", "docker", "starlette", "uvicorn",
         "mcp", "anyio", "asyncio", "sqlite3"}  # fmt: skip
"""Packages a ``--version`` or ``--help`` has no use for."""
STDLIB_UNUSED = {"dataclasses", "pathlib"}
"""Standard modules click itself does not import and ``--help`` does not need: with their
own imports (``copy``, ``urllib.parse``, ``ipaddress``...) a visible share of its start-up."""

IMPORTED = """
import json, runpy, sys
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("\\n" + json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def top_level_modules(args: list[str], home: Path) -> tuple[set[str], str]:
    """The top-level packages a real ``hal ARGS`` has imported when it exits, and its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(home), HAL_NO_DAEMON="1")
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *args], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    *said, modules = done.stderr.strip().splitlines()
    return set(json.loads(modules)), done.stdout + "\n".join(said)


@pytest.mark.parametrize("args", [["--version"], ["--help"], []])
def test_version_and_help_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    loaded, out = top_level_modules(args, tmp_path)
    assert "hal" in out  # it did run: the version line or the usage
    assert loaded & HEAVY == set(), sorted(loaded & HEAVY)
    assert loaded & STDLIB_UNUSED == set(), sorted(loaded & STDLIB_UNUSED)
    assert not (tmp_path / "hal.db").exists()  # and touched no home


def load_every_cli_module() -> None:
    for info in pkgutil.iter_modules(hal9999.cli.__path__):
        if info.name != "__main__":
            importlib.import_module(f"hal9999.cli.{info.name}")


def test_the_table_names_every_registered_command_and_its_module() -> None:
    load_every_cli_module()
    assert set(cli.commands) == set(COMMANDS), "add new commands to hal9999.cli.lazy.COMMANDS"
    for name, entry in COMMANDS.items():
        command = cli.commands[name]
        assert command.callback is not None
        assert command.callback.__module__ == entry.modules[0], name
        for width in (30, 45, 70, 200):
            assert command.get_short_help_str(width) == click.Command(
                name, help=entry.short_help
            ).get_short_help_str(width), name


EAGER_HELP = """
import importlib, pkgutil, sys
import hal9999.cli
for info in pkgutil.iter_modules(hal9999.cli.__path__):
    if info.name != "__main__":
        importlib.import_module(f"hal9999.cli.{info.name}")
sys.argv = ["hal", "--help"]
from hal9999.cli.main import main
main()
"""


def test_lazy_help_is_the_help_of_the_loaded_commands(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path), HAL_NO_DAEMON="1", COLUMNS="100")
    lazy, eager = (
        subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
        for argv in (
            [sys.executable, "-m", "hal9999", "--help"],
            [sys.executable, "-c", EAGER_HELP],
        )
    )
    assert "Commands:" in lazy.stdout
    assert lazy.stdout == eager.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_loads_and_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="hal")
    assert result.exit_code == 0, result.output
    assert f"Usage: hal {name}" in result.output


def test_a_subcommand_added_by_a_second_module_loads_with_its_group(tmp_path: Path) -> None:
    # `hal task requests` is defined in cli/requests.py, not cli/task.py.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path), HAL_NO_DAEMON="1")
    done = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "requests", "--help"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Usage: hal task requests" in done.stdout


def test_an_unknown_command_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path), HAL_NO_DAEMON="1")
    done = subprocess.run(
        [sys.executable, "-m", "hal9999", "nope"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "hal: error: No such command 'nope'. (see: hal --help)"


@pytest.mark.parametrize(
    "args",
    [["task", "list"], ["task", "list", "--json"],
     ["task", "list", "--status", "failed", "--limit=5", "--json"]],
)  # fmt: skip
def test_task_list_with_a_provider_set_imports_neither_click_nor_pydantic(
    args: list[str], tmp_path: Path
) -> None:
    # HAL_PROVIDER (which every hal the suite starts has, and users export) cannot change a
    # listing, so it must not send the listing to the full click + pydantic CLI.
    Store.open(tmp_path).close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAL_", "XDG_"))}
    env.update(HAL_HOME=str(tmp_path), HOME=str(tmp_path), HAL_PROVIDER="bwrap",
               HAL_AGENT="claude", HAL_PROCESS_MANAGER="direct")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *args], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    *_, modules = done.stderr.strip().splitlines()
    loaded = set(json.loads(modules))
    assert done.stdout.startswith(("no tasks yet", "[]")), done.stdout
    assert loaded & {"click", "pydantic", "pydantic_core"} == set()
    assert loaded & HEAVY == {"sqlite3"}
