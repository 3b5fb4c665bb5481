"""More of what a careless user does (see ``test_careless_user.py``): a home that is a
system directory, a typo in ``[hive]``, a bad agent name: one clear line and status 2, never
a task made or a file written where it does not belong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.hal import Hal, no_sessions, one_error_line

import hal9999.home
from hal9999.errors import HomeError
from hal9999.home import HalPaths


def never_made(path: Path) -> None:
    raise AssertionError(f"hal would have made {path}")  # not in the real / as root, ever


@pytest.mark.parametrize("home", ["/", "/usr", "/usr/", "/etc", "/var/lib"])
def test_a_system_directory_is_refused_as_the_home(
    home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HAL_HOME=/ as root made /sessions, /sandboxes and /hal.db among the system's files.
    monkeypatch.setattr(hal9999.home, "_mkdir_private", never_made)
    with pytest.raises(HomeError, match="is a system directory"):
        HalPaths(Path(home)).ensure()


def test_a_link_to_a_system_directory_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hal9999.home, "_mkdir_private", never_made)
    link = tmp_path / "home"
    link.symlink_to("/usr")
    with pytest.raises(HomeError, match=r"is a system directory \(/usr\)"):
        HalPaths(link).ensure()


def test_a_system_home_is_one_line_and_status_2(hal: Hal) -> None:
    # /proc: a system directory nothing can be made in, so this never writes one, fix or not
    out = hal("task", "list", env={"HAL_HOME": "/proc"})
    assert out.returncode == 2
    assert "hal's data directory /proc is a system directory" in one_error_line(out)


@pytest.mark.parametrize(
    "args",
    [("run", "--agent", "true {{prompt_file}}", "x"), ("task", "list"), ("task", "list", "--json"),
     ("task", "show", "x"), ("task", "logs", "x"), ("status",)],
)  # fmt: skip
def test_an_empty_hal_home_is_refused_not_read_as_the_default(
    hal: Hal, tmp_path: Path, args: tuple[str, ...]
) -> None:
    # `HAL_HOME="$DIR"` with DIR unset: the task ran in the user's own home (its daemon, its
    # credentials), where the script meant a private one.
    default = tmp_path / "data"
    out = hal(*args, env={"HAL_HOME": "", "XDG_DATA_HOME": str(default)})
    assert out.returncode == 2, out.stderr
    line = one_error_line(out)
    assert line.startswith("hal: error: HAL_HOME is set but empty (set it to hal's data"), line
    assert not default.exists()


def test_an_unknown_hive_key_refuses_the_run(hal: Hal, hal_env: dict[str, str]) -> None:
    # Every other table's typo was refused; [hive] keep_wram = true made a task as if unset.
    config = Path(hal_env["XDG_CONFIG_HOME"], "hal9999", "config.toml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[hive]\nkeep_wram = true\n")
    out = hal("run", "--agent", "sh agent.sh {{prompt_file}}", "fix it")
    assert out.returncode == 2
    line = one_error_line(out)
    assert "[hive] keep_wram: unknown key" in line
    assert "keep_warm" in line
    assert no_sessions(hal_env)


def test_a_bad_agent_name_is_a_usage_error(hal: Hal) -> None:
    out = hal("agent", "spawn", "Bad Name!")
    assert out.returncode == 2
    assert "'Bad Name!' is not a valid agent name" in one_error_line(out)


INTERRUPTED_AT_IMPORT = """
import sys

MODULE = sys.argv[1]

class Interrupt:  # Ctrl-C landing while hal imports MODULE
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == MODULE:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt)
sys.argv[:2] = ["hal"]
from hal9999.cli.entry import main
main()
"""


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("click", ["status"]),
        ("hal9999.cli.root_help", ["--help"]),
        ("hal9999.cli.run_argv", ["run", "fix it"]),
        ("hal9999.cli.task_rows", ["task", "list"]),
    ],
)
def test_ctrl_c_while_hal_starts_is_interrupted_and_130(
    hal_env: dict[str, str], module: str, args: list[str]
) -> None:
    # An interrupt during `hal`'s imports printed the import's traceback.
    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_AT_IMPORT, module, *args],
        env=hal_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (out.returncode, out.stderr, out.stdout) == (130, "hal: interrupted\n", "")


@pytest.mark.parametrize("env", [{"HAL_PIDS": "1"}, {"HAL_BWRAP_PIDS": "4"}])
def test_a_process_limit_too_small_to_start_is_refused_by_name(
    hal: Hal, hal_env: dict[str, str], env: dict[str, str]
) -> None:
    # pids = 1 failed the task at its collection ("Cannot fork") without naming the limit.
    out = hal("run", "--provider", "bwrap", "--agent", "sh agent.sh {{prompt_file}}", "fix it",
              env=env)  # fmt: skip
    assert out.returncode == 2
    line = one_error_line(out)
    assert next(iter(env)) in line
    assert "a number of processes from 8" in line
    assert no_sessions(hal_env)
