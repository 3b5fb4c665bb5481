"""``hal --version`` answers before click is imported, with click's own line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from tests.support.cli import IMPORTED

from hal9999.cli.main import cli


def test_version_imports_no_click_and_prints_clicks_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, "--version"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert "click" not in modules and "hal9999.cli.main" not in modules
    assert done.stdout == CliRunner().invoke(cli, ["--version"], prog_name="hal").output


def test_everything_else_goes_to_click(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path))
    said: dict[str, str] = {}
    # `hal --help` and `hal -h` alone are printed without click (test_root_help.py).
    for args in (["--version", "--help"], ["task", "--help"], ["--help", "-h"]):
        done = subprocess.run(
            [sys.executable, "-c", IMPORTED, *args], env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert "click" in json.loads(done.stderr.strip().splitlines()[-1])
        said[" ".join(args)] = done.stdout
    assert said["task --help"].startswith("Usage: hal task")
    assert said["--help -h"].startswith("Usage: hal")
    assert said["--version --help"] == CliRunner().invoke(cli, ["--version", "--help"]).output


def test_the_installed_script_uses_the_light_entry() -> None:
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "hal"]
    assert script.value == "hal9999.cli.entry:main"


EXITS = """
import atexit, os, sys, time
from hal9999.cli.entry import exit_at_once
class Marker:
    def __del__(self, write=os.write):  # the teardown may have cleared os by then
        write(1, b" torn down")
sys.teardown_marker = Marker()  # freed as the teardown clears sys (no cycle holds it)
if "handler" in sys.argv[1]:
    atexit.register(lambda: print("handler ran", end=""))
if "logging" in sys.argv[1]:
    import logging
    class Closing(logging.Handler):
        def emit(self, record): pass
        def close(self):
            print("logging closed", end="")
            super().close()
    logging.getLogger("x").addHandler(Closing())
if "file" in sys.argv[1]:
    sys.left_file = open(sys.argv[3], "w")  # never closed: the teardown flushes it
    sys.left_file.write("kept")
if "flusher" in sys.argv[1]:
    from hal9999.events.flusher import FLUSHER
    FLUSHER.schedule("a log", time.monotonic() + 3600)  # a batch still to write
    if "idle" in sys.argv[1]:
        FLUSHER.cancel("a log")
        while not FLUSHER.idle():  # the thread asleep with nothing to write
            time.sleep(0.01)
sys.stdout.write("buffered, no newline ")
exit_at_once(SystemExit(int(sys.argv[2]) if sys.argv[2:] else None))
"""


def test_the_thin_runs_exit_keeps_its_output_status_and_handlers(tmp_path: Path) -> None:
    # Without teardown (os._exit) only when nothing is left for it: the streams are
    # flushed, the status is the one asked for, logging's handlers are closed, and a
    # handler of another's, a regular file left open or an event batch still to write
    # means a usual exit.
    left = tmp_path / "left"
    for argv, out, status in (
        (["plain", "3"], "buffered, no newline ", 3),
        (["plain"], "buffered, no newline ", 0),
        (["handler", "4"], "buffered, no newline handler ran torn down", 4),
        (["logging", "5"], "buffered, no newline logging closed", 5),
        (["logging+handler", "6"], "buffered, no newline logging closedhandler ran torn down", 6),
        (["file", "7", str(left)], "buffered, no newline  torn down", 7),
        (["flusher", "8"], "buffered, no newline  torn down", 8),
        (["flusher idle", "9"], "buffered, no newline ", 9),
    ):
        done = subprocess.run(
            [sys.executable, "-c", EXITS, *argv], capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert (done.stdout, done.returncode) == (out, status), (argv, done.stderr)
    assert left.read_text() == "kept"


NO_PLUGINS = """
import sys
from hal9999.cli.entry import NoPydanticPlugins
sys.meta_path.insert(0, NoPydanticPlugins)
from pydantic import BaseModel
class Model(BaseModel):
    x: int
assert Model(x="1").x == 1
from pydantic.plugin._schema_validator import create_schema_validator
print(sys.modules["pydantic.plugin._loader"].get_plugins(), "importlib.metadata" in sys.modules)
"""


def test_pydantic_in_hal_loads_no_plugins_and_does_not_scan_for_them() -> None:
    # The stand-in for pydantic's plugin loader (cli.entry.NoPydanticPlugins): models build
    # and validate; no importlib.metadata, no scan of the installed packages.
    done = subprocess.run(
        [sys.executable, "-c", NO_PLUGINS], capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "() False\n", done.stderr[-2000:]


def test_python_m_hal_imports_nothing_from_the_working_directory(tmp_path: Path) -> None:
    """``python -m hal9999`` in a repository whose files shadow standard modules (an agent's
    branch checked out) runs hal, not those files: ``-m`` puts the directory first on the
    path, the console script does not."""
    shadows = ("typing", "json", "textwrap", "shutil", "enum", "dataclasses", "pathlib")
    for name in shadows:
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('ran the repository\\'s {name}')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(tmp_path / "home"))
    env.pop("PYTHONSAFEPATH", None)
    for argv in (["--help"], ["task", "list", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "hal9999", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "repository's" not in done.stderr + done.stdout, done.stderr
        assert done.returncode == 0, done.stderr
