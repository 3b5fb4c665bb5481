"""What an in-process ``hal run`` of a command-template agent imports (issue 16): nothing of
the LLM gateway's HTTP client, the hive's store or the warm pool, which such a run never
uses. Counted in a subprocess, so load cannot make this pass or fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN_AND_LIST = """
import atexit, json, runpy, sys
atexit.register(lambda: None)  # the thin run then exits as usual, through the lines below
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit as exc:
    sys.stderr.write("\\nexit " + str(exc.code))
sys.stderr.write("\\n" + json.dumps(sorted(sys.modules)))
"""

STATUS_ORDER = """
import subprocess, sys
started = []
real = subprocess.Popen.__init__
def spy(self, args, *rest, **kw):
    if "status" in args:
        started.append("hal9999.config" in sys.modules)
    real(self, args, *rest, **kw)
subprocess.Popen.__init__ = spy
sys.argv = ["hal", *sys.argv[1:]]
from hal9999.cli.main import _main
try:
    _main()
except SystemExit:
    pass
sys.stderr.write("\\nstatus started with the config loaded: %s" % started)
"""

NOT_FOR_A_TEMPLATE_AGENT = (
    "httpx",
    "hal9999.auth.claude",
    "hal9999.hive.store",
    "hal9999.events.hive",
    "hal9999.pool.pool",  # the daemon's warm pool: an in-process run creates its sandbox
    "hal9999.pool.report",
    "hal9999.server.daemon",
    "hal9999.server.client",  # HAL_NO_DAEMON: no daemon to find or talk to
    "hal9999.trust",  # no ./hal.toml to judge
)


@pytest.mark.bwrap
def test_an_in_process_run_imports_no_gateway_client_and_no_hive_store(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    env = {**hal_env, "HAL_NO_DAEMON": "1"}
    argv = ["run", "--agent", "true {{prompt_file}}", "--process-manager", "direct", "x"]
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST, *argv],
        cwd=demo_repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    *_, status, listed = done.stderr.splitlines()
    assert status in ("exit 0", "exit None"), done.stderr[-2000:]
    modules = set(json.loads(listed))
    assert "hal9999.tasks.runner" in modules  # the run did happen in this process
    assert not modules & set(NOT_FOR_A_TEMPLATE_AGENT), sorted(
        modules & set(NOT_FOR_A_TEMPLATE_AGENT)
    )


@pytest.mark.bwrap
def test_an_in_process_run_checks_for_uncommitted_changes_while_it_imports(
    hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The host `git status` runs while the config and the task service load (~5 ms of wall
    # time less); its line is still printed where it was.
    (demo_repo / "calc.py").write_text("changed\n")
    env = {**hal_env, "HAL_NO_DAEMON": "1"}
    argv = ["run", "--agent", "true {{prompt_file}}", "--process-manager", "direct", "x"]
    done = subprocess.run(
        [sys.executable, "-c", STATUS_ORDER, *argv],
        cwd=demo_repo, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 uncommitted change(s)" in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == "status started with the config loaded: [False]"
