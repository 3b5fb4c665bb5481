"""What the full (click) path of the common ``hal task`` and ``hal serve`` commands imports:
a read of the store builds no task service, a command that shows no event builds
no event model, and nothing that does not wait on a loop imports asyncio. Counted in a fresh
interpreter, so load cannot make these pass or fail. ``HAL_PROVIDER`` is set, as the suite
sets it, so the thin paths (:mod:`hal9999.cli.daemon_run`) leave every command to click."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.tasks import make_task

from hal9999.events.log import EventLog
from hal9999.events.models import Phase
from hal9999.store import Store
from hal9999.tasks.session import Session

IMPORTED = """
import json, runpy, sys
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit as exc:
    sys.stderr.write("\\nexit " + str(exc.code))
sys.stderr.write("\\n" + json.dumps(sorted(sys.modules)))
"""

SERVICE = (
    "hal9999.tasks.service",  # the in-process task service: runs, stops, resumes
    "hal9999.tasks.api",
    "hal9999.tasks.runner",
)
"""What builds or runs tasks in this process: a read of the store needs none of it."""
LOOP = ("asyncio",)
"""Nothing of these commands waits on an event loop (no daemon runs, nothing follows)."""
MODELS = ("hal9999.events.models",)
"""The event models (pydantic's discriminated union): only a command that reads events."""


def imported(home: Path, *args: str, **env_vars: str) -> tuple[set[str], str, str]:
    """The modules a real ``hal ARGS`` has imported when it exits, its stdout and status."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(home), HAL_PROVIDER="bwrap", **env_vars)
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *args], env=env, cwd=home, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    *said, status, modules = done.stderr.strip().splitlines()
    assert status == "exit 0", (done.stdout, said)
    return set(json.loads(modules)), done.stdout, "\n".join(said)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with one finished task that has two events."""
    store = Store.open(tmp_path)
    task = make_task(tmp_path, "h3task01", "succeeded")
    store.insert_task(task)
    session = Session(Path(task.session_dir))
    with EventLog(session.events, task.id) as log:
        log.emit(Phase(phase="running", previous="preparing"))
        log.emit(Phase(phase="succeeded", previous="collecting"))
    session.log.write_text("the agent said hello\n")
    store.close()
    return tmp_path


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_task_show_reads_the_store_alone(home: Path, args: list[str]) -> None:
    loaded, out, _ = imported(home, "task", "show", "h3task01", *args)
    assert "h3task01" in out and "succeeded" in out
    assert loaded & {*SERVICE, *LOOP, *MODELS} == set()


def test_task_logs_reads_the_session_alone(home: Path) -> None:
    loaded, out, _ = imported(home, "task", "logs", "h3task01")
    assert out == "the agent said hello\n"
    assert loaded & {*SERVICE, *LOOP, *MODELS, "hal9999.events.reader"} == set()


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_task_events_builds_no_task_service(home: Path, args: list[str]) -> None:
    loaded, out, _ = imported(home, "task", "events", "h3task01", *args)
    assert len(out.splitlines()) == 2 and "succeeded" in out
    assert "hal9999.events.models" in loaded  # it does read them
    assert loaded & {*SERVICE, *LOOP} == set()


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_serve_stop_without_a_daemon_imports_no_loop(home: Path, args: list[str]) -> None:
    loaded, out, _ = imported(home, "serve", "--stop", *args)
    assert "not running" in out or '"stopped": null' in out
    assert loaded & {*SERVICE, *LOOP, *MODELS, "hal9999.redact"} == set()


def test_a_task_whose_runner_died_is_still_reconciled_by_show(home: Path) -> None:
    """The light read builds the task service for the one case it changes a record: a task
    in flight whose runner is gone is shown ``interrupted``, as before."""
    store = Store.open(home)
    # Above the largest pid Linux gives (2**22): no process has it.
    store.insert_task(make_task(home, "h3task02", "running", runner_pid=2**22 + 1))
    store.close()
    loaded, out, _ = imported(home, "task", "show", "h3task02")
    assert "interrupted" in out
    assert "hal9999.tasks.service" in loaded


def test_serve_detach_waits_without_a_loop(home: Path) -> None:
    """The client of ``hal serve --detach`` starts the daemon and reads its files: none of
    the daemon's own modules, nor asyncio."""
    try:
        loaded, out, _ = imported(home, "serve", "--detach")
        assert out.startswith("hal serve: pid ")
        assert loaded & {*SERVICE, *LOOP, *MODELS, "hal9999.server.daemon"} == set()
    finally:
        imported(home, "serve", "--stop")


@pytest.mark.parametrize("args", [[], ["--json"]])
def test_task_show_through_a_daemon_builds_no_task_api(home: Path, args: list[str]) -> None:
    """With a daemon running, found through the full config (``HAL_LOG_LEVEL`` is one the
    thin client leaves to it), ``task show`` sends the daemon's task API's request without
    an event loop or the task API."""
    try:
        imported(home, "serve", "--detach")
        loaded, out, _ = imported(home, "task", "show", "h3task01", *args, HAL_LOG_LEVEL="ERROR")
        assert "hal9999.config" in loaded  # the full path
        assert "h3task01" in out and "succeeded" in out
        assert "hal9999.server.client" in loaded  # it did ask the daemon
        assert loaded & {*SERVICE, *LOOP, *MODELS} == set()
    finally:
        imported(home, "serve", "--stop")


def test_task_requests_reads_the_store_alone(home: Path) -> None:
    loaded, out, _ = imported(home, "task", "requests", "h3task01")
    assert out == "no model calls through the gateway for task h3task01\n"
    assert loaded & {*SERVICE, *LOOP, *MODELS} == set()


def test_sandbox_list_builds_no_task_service(home: Path) -> None:
    loaded, out, _ = imported(home, "sandbox", "list", "--json")
    assert out.strip() == "[]"
    assert loaded & set(SERVICE) == set()


def test_status_asks_the_daemon_without_a_loop(home: Path) -> None:
    try:
        imported(home, "serve", "--detach")
        loaded, out, _ = imported(home, "status", "--json")
        assert isinstance(json.loads(out)["pid"], int)  # the daemon's answer
        assert loaded & {*SERVICE, *LOOP, *MODELS} == set()
    finally:
        imported(home, "serve", "--stop")


def test_choosing_the_task_api_imports_the_in_process_one_only_for_itself() -> None:
    """``cli.via_daemon`` (which API a command calls) imported the in-process task API, the
    task service and the event models at its top: ``hal task resume --detach`` or ``task rm``
    through a daemon loaded all of it to send one request."""
    probe = (
        "import json, sys; import hal9999.cli.via_daemon; print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert set(json.loads(done.stdout)) & {*SERVICE, *LOOP, *MODELS} == set()
