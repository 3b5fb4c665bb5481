"""The thin ``hal run`` client against a real ``hal serve``: what it prints, its exit status
and its errors are the full client's, and it imports no models.

The full client is forced with ``HAL_LOG_LEVEL=WARNING`` (hal's default level, so nothing
else changes): the thin path leaves any ``HAL_*`` variable it does not understand to it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.cli import BEFORE_THE_POST, RUN_AND_LIST, THIN_RUN_LEAVES_OUT
from tests.support.daemon import _running
from tests.support.hal import Hal, daemon_tasks, events_of, start_hal, tasks_json

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.timeout(300)]

FULL = {"HAL_LOG_LEVEL": "WARNING"}
"""Takes the full path, and changes nothing else."""


def _normal(text: str, ids: set[str]) -> str:
    for task_id in ids:
        text = text.replace(task_id, "<id>")
    return re.sub(r"duration  \d+(\.\d+)?s", "duration  <t>", text)


def _both(hal: Hal, *args: str) -> None:
    """Run ``hal ARGS`` thin and full; the same output, errors and status, up to ids and
    times (the new tasks' ids, to blank them, asked of the daemon from this process)."""
    before = _task_ids(hal)
    thin = hal(*args)
    full = hal(*args, env=FULL)
    ids = _task_ids(hal) - before
    assert thin.returncode == full.returncode, (thin.stderr, full.stderr)
    assert _normal(thin.stderr, ids) == _normal(full.stderr, ids)
    if "--json" in args and thin.stdout.startswith("{"):
        thin_doc, full_doc = json.loads(thin.stdout), json.loads(full.stdout)
        assert list(thin_doc) == list(full_doc)
        differ = [
            key for key in thin_doc
            if not key.endswith("_at") and key not in ("runner_pid", "sandbox_id")
            and _normal(json.dumps(thin_doc[key]), ids) != _normal(json.dumps(full_doc[key]), ids)
        ]  # fmt: skip
        assert differ == [], [(k, thin_doc[k], full_doc[k]) for k in differ]
    else:
        assert _normal(thin.stdout, ids) == _normal(full.stdout, ids)


def _task_ids(hal: Hal) -> set[str]:
    """The ids of the served home's tasks (``served``'s daemon runs throughout)."""
    found = daemon_tasks(hal)
    assert found is not None, "the daemon is gone"
    return {task["id"] for task in found}


AGENT = "sh agent.sh {{prompt_file}}"


def test_a_run_prints_and_exits_as_the_full_client(served: Hal) -> None:
    _both(served, "run", "--agent", AGENT, "fix the bug")
    _both(served, "run", "--agent", AGENT, "fix the bug", "--json")
    _both(served, "run", "--agent", "false {{prompt_file}}", "fail")
    _both(served, "run", "--agent", "false {{prompt_file}}", "fail", "--json")
    _both(served, "run", "--agent", "false {{prompt_file}}", "--retries", "1", "again")


def test_detach_as_the_full_client(served: Hal) -> None:
    thin = served("run", "--detach", "--agent", AGENT, "x")
    full = served("run", "--detach", "--agent", AGENT, "x", env=FULL)
    assert thin.returncode == full.returncode == 0 and thin.stderr == full.stderr == ""
    assert re.fullmatch(r"[a-z0-9]+\n", thin.stdout) and re.fullmatch(r"[a-z0-9]+\n", full.stdout)
    thin_doc = json.loads(served("run", "--detach", "--json", "--agent", AGENT, "x").stdout)
    full = served("run", "--detach", "--json", "--agent", AGENT, "x", env=FULL)
    full_doc = json.loads(full.stdout)
    assert list(thin_doc) == list(full_doc) == ["id", "status", "session_dir"]
    assert thin_doc["status"] == full_doc["status"] == "queued"


def test_errors_as_the_full_client(served: Hal, demo_repo: Path) -> None:
    _both(served, "run", "--agent", AGENT, "--env", "HAL_TEST_UNSET_VAR", "x")
    _both(served, "run", "--agent", AGENT, "--env", "1BAD", "x")
    _both(served, "run", "--agent", AGENT, "--secret", "A=b", "x")
    # The value of a secret the client sends (never kept by the daemon) in the prompt.
    secret_in_prompt = ("run", "--agent", AGENT, "--env", "HAL_TEST_TOKEN=tok-9f8e7d6c5b",
                        "--secret", "HAL_TEST_TOKEN", "use tok-9f8e7d6c5b")  # fmt: skip
    _both(served, *secret_in_prompt)
    refused = served(*secret_in_prompt)
    assert refused.returncode == 2 and "tok-9f8e7d6c5b" not in refused.stderr
    assert "the prompt holds the value of HAL_TEST_TOKEN, a secret" in refused.stderr
    _both(served, "run", "--agent", AGENT, "--repo", str(demo_repo / "missing"), "x")
    _both(served, "run", "--agent", AGENT, "--ref", "no-such-branch", "x")
    _both(served, "run", "--agent", AGENT, "--timeout", "0.5", "x")
    (demo_repo / "untracked.txt").write_text("left out\n")
    _both(served, "run", "--agent", AGENT, "--ref", "main", "--json", "quiet")
    _both(served, "run", "--agent", "true {{prompt_file}}", "dirty tree")
    # The host `git status` runs while the task is posted: its line still comes first, also
    # before an error of the request or of the daemon.
    _both(served, "run", "--agent", AGENT, "--env", "HAL_TEST_UNSET_VAR", "dirty tree")
    _both(served, "run", "--agent", AGENT, "--provider", "no-such-provider", "dirty tree")
    _both(served, "run", "--agent", AGENT, "--detach", "--json", "dirty tree")


def test_the_config_that_applied_is_in_the_tasks_events(served: Hal) -> None:
    out = served("run", "--agent", "true {{prompt_file}}", "x", "--json")
    assert out.returncode == 0, out.stderr
    events = events_of(served, json.loads(out.stdout)["id"])
    messages = [e for e in events if e["type"] == "message"]
    assert messages[0]["level"] == "info"
    assert messages[0]["text"] == "config: HAL_HOME, HAL_PROVIDER"


LATE_START = """
import sys, time
from pathlib import Path

import hal9999.cli.run_full as run_full
from hal9999.cli.entry import main

class Late(run_full.Started):
    # Told of the task only once its run wrote task_end: a client slow to get its answer
    # (a loaded host) while the run of a fast agent ends meanwhile.
    def __call__(self, task):
        events = Path(task.session_dir, "events.jsonl")
        deadline = time.monotonic() + 30
        while '"task_end"' not in (events.read_text() if events.exists() else ""):
            assert time.monotonic() < deadline, "the run never ended"
            time.sleep(0.05)
        super().__call__(task)

run_full.Started = Late
main()
"""


def test_a_run_over_before_the_full_client_hears_of_it_ends_it(
    served: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The full client wrote which config applied into the task's events once it had
    # the posted task; after a fast run's task_end, and the daemon, which ends a follow at a
    # task_end last, never told it done: `hal run` hung (test_a_run_prints_and_exits_as_
    # the_full_client on two workers). The note is now the
    # daemon's to write, with task_created.
    done = subprocess.run(
        [sys.executable, "-c", LATE_START, "run", "--agent", "true {{prompt_file}}", "--json",
         "quick"],
        cwd=demo_repo, env={**hal_env, **FULL}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = events_of(served, json.loads(done.stdout)["id"])
    kinds = [(e["type"], e.get("text")) for e in events]
    assert kinds[:2] == [("task_created", None), ("message", "config: HAL_HOME, HAL_PROVIDER")]
    assert kinds[-1][0] == "task_end", kinds


def test_a_prompt_from_standard_input_or_a_file(
    served: Hal, hal_env: dict[str, str], demo_repo: Path, tmp_path: Path
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("from a file\n")
    for args, stdin in (
        (("--prompt-file", str(prompt)), None),
        (("-",), "from stdin\n"),
        (("--prompt-file", "-"), "from stdin too\n"),
    ):
        runs = []
        for extra in ({}, FULL):
            done = subprocess.run(
                [sys.executable, "-m", "hal9999", "run", "--agent", "cat {{prompt_file}}",
                 "--json", *args],
                cwd=demo_repo, env={**hal_env, **extra}, capture_output=True, text=True,
                input=stdin or "", timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            runs.append(json.loads(done.stdout)["prompt"])
        assert runs[0] == runs[1] == (stdin or "from a file\n")


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_cancels_the_task_as_the_full_client(
    served: Hal, hal_env: dict[str, str], demo_repo: Path, sig: signal.Signals, status: int
) -> None:
    proc = start_hal(hal_env, demo_repo, "run", "--agent", "sleep 60", "wait")
    assert proc.stderr is not None
    line = proc.stderr.readline()
    task_id = re.match(r"hal: task (\w+) \(sleep 60 on bwrap, via hal serve\)", line)
    assert task_id is not None, line
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # signalled while it follows the running agent
        found = [t for t in tasks_json(served) if t["id"] == task_id[1]]
        if found and found[0]["status"] == "running":
            break
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert f"hal: task {task_id[1]} cancelled; session kept at" in err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [t for t in tasks_json(served) if t["id"] == task_id[1]]
        if found[0]["status"] == "cancelled":
            break
        time.sleep(0.1)
    assert found[0]["status"] == "cancelled"


NOT_IN_THE_THIN_CLIENT = (
    "pydantic",
    "asyncio",
    "hal9999.config",
    "hal9999.events.models",
    "hal9999.store",
    "hal9999.store.records",
    "hal9999.spec",
    "hal9999.values",
    "hal9999.tasks.service",
    "hal9999.tasks.api",
    "hal9999.agents.registry",
    "httpx",
)


def test_a_run_through_the_daemon_imports_no_models(
    served: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    for extra, thin in (({}, True), (FULL, False)):
        done = subprocess.run(
            [sys.executable, "-c", RUN_AND_LIST, "run", "--agent", "true {{prompt_file}}", "x"],
            cwd=demo_repo, env={**hal_env, **extra}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        *_, status, listed, _models = done.stderr.splitlines()
        assert status == "exit 0", done.stderr[-2000:]
        modules = set(json.loads(listed))
        loaded = sorted(modules & set(NOT_IN_THE_THIN_CLIENT))
        if thin:
            assert loaded == [], loaded
            # Nor click: the entry point reads these options itself (cli/run_argv.py).
            assert "click" not in modules and "hal9999.cli.main" not in modules
            assert len(modules) < 150, len(modules)
        else:
            assert "pydantic" in loaded, "HAL_LOG_LEVEL takes the full path"


THIN_MODULES = """
import atexit, runpy, sys
atexit.register(lambda: None)  # the thin run then exits as usual, through the lines below
sys.argv = ["hal", *sys.argv[1:]]
try:
    runpy.run_module("hal9999", run_name="__main__")
except SystemExit as exc:
    sys.stderr.write("\\nexit " + str(exc.code))
sys.stderr.write("\\n" + " ".join(sorted(sys.modules)))
"""


def test_a_thin_run_leaves_out_the_standard_modules_it_does_without(
    served: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The whole run, from the exec to the summary, in an interpreter that imported only what
    # `python -m` does (the harness above needs nothing else).
    (demo_repo / "untracked.txt").write_text("left out\n")  # the host git status has work
    done = subprocess.run(
        [sys.executable, "-c", THIN_MODULES, "run", "--agent", "true {{prompt_file}}", "x"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    *_, status, listed = done.stderr.splitlines()
    assert status == "exit 0", done.stderr[-2000:]
    assert "via hal serve" in done.stderr and "1 uncommitted change(s)" in done.stderr
    modules = set(listed.split())
    assert "hal9999.cli.daemon_run" in modules and "click" not in modules  # the thin path
    assert sorted(modules & THIN_RUN_LEAVES_OUT) == []
    hal = {name for name in modules if name.split(".")[0] == "hal9999"}
    assert sorted(hal - THIN_RUN_HAL_MODULES) == [], sorted(hal - THIN_RUN_HAL_MODULES)


THIN_RUN_HAL_MODULES = frozenset({
    "hal9999", "hal9999.agents", "hal9999.agents.template", "hal9999.cli",
    "hal9999.cli.daemon_run", "hal9999.cli.echo", "hal9999.cli.entry",
    "hal9999.cli.notices", "hal9999.cli.prompt", "hal9999.cli.run_argv", "hal9999.cli.runnotes",
    "hal9999.events", "hal9999.events.own",
    "hal9999.cli.task_table", "hal9999.cli.thin_config", "hal9999.envvars", "hal9999.errors",
    "hal9999.home", "hal9999.hostchild", "hal9999.lighttyping", "hal9999.plainjson",
    "hal9999.runoptions", "hal9999.server",
    "hal9999.server.client", "hal9999.server.runtime", "hal9999.workdir",
    "hal9999.tasks", "hal9999.tasks.branchmade", "hal9999.tasks.through", "hal9999.visible",
})  # fmt: skip
"""Every hal module a thin run of a template agent imports (``hostchild`` is
``cli.notices.HostGit``'s spawn, shared; ``runoptions`` the option table its parser and its
request are made from; ``tasks.through`` and ``tasks.branchmade`` the task API's own
follow-to-the-end and branch rule, which the client shares: each imports only the light
modules above)."""


def test_task_show_stop_and_cancel_as_the_full_client(served: Hal) -> None:
    task_id = _running(served)
    for args in (("show", task_id), ("show", task_id[:5], "--json"), ("show", "nosuchtask")):
        thin, full = served("task", *args), served("task", *args, env=FULL)
        assert (thin.returncode, thin.stderr) == (full.returncode, full.stderr)
        if "--json" in args:
            thin_doc, full_doc = json.loads(thin.stdout), json.loads(full.stdout)
            assert list(thin_doc) == list(full_doc) and thin_doc["id"] == full_doc["id"]
        else:
            assert _normal(thin.stdout, {task_id}) == _normal(full.stdout, {task_id})
    for action, json_too in (("stop", False), ("cancel", True)):
        first, second = _running(served), _running(served)
        extra = ("--json",) if json_too else ()
        thin = served("task", action, first, *extra)
        full = served("task", action, second, *extra, env=FULL)
        assert thin.returncode == full.returncode == 0, (thin.stderr, full.stderr)
        assert thin.stderr == full.stderr == ""
        if json_too:
            thin_doc, full_doc = json.loads(thin.stdout), json.loads(full.stdout)
            assert list(thin_doc) == list(full_doc)
            assert thin_doc["status"] == full_doc["status"] == "cancelled"
        else:
            assert thin.stdout.replace(first, "<id>") == full.stdout.replace(second, "<id>")
    served("task", "cancel", task_id)


def test_task_show_through_the_daemon_imports_no_models(
    served: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    task_id = _running(served)  # running, so that cancelling it succeeds
    for args in (("task", "show", task_id), ("task", "cancel", task_id, "--json")):
        done = subprocess.run(
            [sys.executable, "-c", RUN_AND_LIST, *args],
            cwd=demo_repo, env=hal_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        *_, status, listed, _models = done.stderr.splitlines()
        assert status in ("exit 0", "exit None"), done.stderr[-2000:]
        loaded = sorted(set(json.loads(listed)) & set(NOT_IN_THE_THIN_CLIENT))
        assert loaded == [], loaded


def _on_a_terminal(hal_env: dict[str, str], cwd: Path, env: dict[str, str], *args: str) -> str:
    """What ``hal ARGS`` writes to a terminal (its stdout a pty), stderr included."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", *args], cwd=cwd, env={**hal_env, **env},
        stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.STDOUT,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_a_run_on_a_terminal_renders_as_the_full_client(
    served: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The title escape is the agent's: dropped on the terminal by both clients.
    agent = "sh -c 'printf \"\\033]0;title\\007hello\\n\"; cat $0' {{prompt_file}}"
    before = {t["id"] for t in tasks_json(served)}
    thin = _on_a_terminal(hal_env, demo_repo, {}, "run", "--agent", agent, "on a tty")
    full = _on_a_terminal(hal_env, demo_repo, FULL, "run", "--agent", agent, "on a tty")
    ids = {t["id"] for t in tasks_json(served)} - before
    assert "hello\r\non a tty" in thin and "\x1b]0;" not in thin
    assert _normal(thin, ids) == _normal(full, ids)


POST_FIRST = """
import atexit, runpy, sys
atexit.register(lambda: None)
from hal9999.server.client import DaemonClient
send = DaemonClient.send
def spy(self, method, path, *rest, **kw):
    if method == "POST":
        sys.stderr.write("\\nsubprocess loaded at the POST: " + str("subprocess" in sys.modules))
        sys.stderr.write("\\nloaded at the POST: " + " ".join(sorted(sys.modules)))
    return send(self, method, path, *rest, **kw)
DaemonClient.send = spy
sys.argv = ["hal", *sys.argv[1:]]
runpy.run_module("hal9999", run_name="__main__")
"""


def test_the_task_is_posted_before_the_host_git_status_starts(
    served: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The check (and subprocess, with its imports) runs while the daemon creates the task:
    # off the path to the task's start; its line still comes first (test_errors_...).
    (demo_repo / "untracked.txt").write_text("left out\n")
    done = subprocess.run(
        [sys.executable, "-c", POST_FIRST, "run", "--agent", "true {{prompt_file}}", "x"],
        cwd=demo_repo, env=hal_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "subprocess loaded at the POST: False" in done.stderr
    loaded = set(done.stderr.split("\nloaded at the POST: ")[1].splitlines()[0].split())
    assert "hal9999.server.client" in loaded
    assert sorted(loaded & (BEFORE_THE_POST | THIN_RUN_LEAVES_OUT)) == []
    assert done.stderr.index("uncommitted change") < done.stderr.index("hal: task ")
