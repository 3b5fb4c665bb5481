"""``hal --help`` and ``hal -h`` print click's page without importing click:
the same text at every width, the same status, far fewer modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from tests.cli.closed_stdout import closed_and_broken

from hal9999.cli import command_table, entry, root_help
from hal9999.cli.main import cli

CLICK_HELP = """
import sys
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.main import main
main()
"""
"""The page as click prints it (the full entry point, past the thin one)."""
MODULES = """
import runpy, sys
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("\\n" + " ".join(sorted(sys.modules)))
"""
HELP_MODULES = 70
"""At most this many modules in a ``hal --help`` (58 at this writing, from the
interpreter's start; 119 through click, which is what the ceiling is to catch)."""


def env_with(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAL_", "COLUMNS"))}
    env.update(HAL_HOME=str(home), HAL_NO_DAEMON="1", **extra)
    return env


@pytest.mark.parametrize("width", range(50, 79))
def test_the_page_is_clicks_at_every_formatter_width(width: int) -> None:
    clicks = CliRunner().invoke(cli, ["--help"], prog_name="hal", terminal_width=width)
    assert clicks.exit_code == 0
    assert root_help.render(width) == clicks.output


SHORT_HELPS = [
    *(entry.short_help for entry in command_table.COMMANDS.values()),
    *(entry.short_help for entry in command_table.TASK_COMMANDS.values()),
    "", "   ", "One.", "A supercalifragilisticexpialidocious word leads. Then more.",
    "Supercalifragilisticexpialidocious-and-hyphenated words at the start of it all",
    "vs. abbreviations are not sentence ends. But this is one", "\b\nRaw block\n\nsecond",
    "Two\tspaced   words\nacross lines, going on and on and on until it must be cut",
]  # fmt: skip


@pytest.mark.parametrize("text", SHORT_HELPS)
def test_short_help_is_clicks_at_every_limit(text: str) -> None:
    for limit in range(0, 110):
        clicks = click.Command("c", help=text).get_short_help_str(limit)
        assert root_help.short_help(text, limit) == clicks, limit


@pytest.mark.parametrize("columns", ["1", "30", "49", "50", "51", "52", "79", "80", "81", "200",
                                     "0", "-3", "wide"])  # fmt: skip
def test_the_width_is_clicks(columns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    assert root_help.formatter_width() == click.HelpFormatter().width


def test_the_help_options_are_the_groups() -> None:
    assert entry.HELP_OPTIONS == command_table.HELP_OPTIONS
    context = click.Context(cli, info_name="hal", **cli.context_settings)
    assert cli.get_help_option_names(context) == list(command_table.HELP_OPTIONS)
    help_record = cli.get_help_option(context)
    assert help_record is not None
    assert help_record.get_help_record(context) == (
        root_help.help_options(),
        "Show this message and exit.",
    )


@pytest.mark.parametrize("columns", [None, "100", "60", "30"])
@pytest.mark.parametrize("option", ["--help", "-h"])
def test_a_real_hal_help_prints_clicks_page(
    option: str, columns: str | None, tmp_path: Path
) -> None:
    env = env_with(tmp_path, **({"COLUMNS": columns} if columns else {}))
    thin, full = (
        subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        for argv in (
            [sys.executable, "-m", "hal9999", option],
            [sys.executable, "-c", CLICK_HELP, option],
        )
    )
    assert (thin.returncode, thin.stdout, thin.stderr) == (0, full.stdout, "")
    assert full.returncode == 0
    assert "Commands:" in thin.stdout
    assert not (tmp_path / "hal.db").exists()


def test_help_imports_no_click(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MODULES, "--help"], env=env_with(tmp_path),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "Commands:" in done.stdout
    loaded = done.stderr.strip().splitlines()[-1].split()
    unwanted = {"click", "typing", "shutil", "inspect", "textwrap", "re"}
    assert not [m for m in loaded if m.split(".")[0] in unwanted]
    assert len(loaded) <= HELP_MODULES, len(loaded)


def test_closed_and_broken_output_end_as_clicks_do(tmp_path: Path) -> None:
    for argv in (
        [sys.executable, "-m", "hal9999", "--help"],
        [sys.executable, "-c", CLICK_HELP, "--help"],
    ):
        closed, broken = closed_and_broken(argv, env=env_with(tmp_path))
        assert (closed, broken) == ((0, b""), (1, b"")), argv
