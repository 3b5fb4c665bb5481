"""``hal serve`` end to end: routing through the daemon, queue, pool, shutdown and kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import hal_processes_of
from tests.support.daemon import poll, serve_info, wait_status
from tests.support.hal import Hal, events_of, tasks_json

from hal9999.errors import ConfigError
from hal9999.server.client import DaemonClient

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


def test_serve_routes_run_and_task_commands(daemon: Hal, hal_env: dict[str, str]) -> None:
    home = Path(hal_env["HAL_HOME"])
    token = home / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    info = serve_info(home)
    assert info["port"] > 0 and Path(info["socket"]).exists()

    out = daemon("run", "--agent", "sh agent.sh {{prompt_file}}", "fix the bug", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "succeeded" and task["files_changed"] == 1
    acquired = [e for e in events_of(daemon, task["id"]) if e["type"] == "sandbox_acquired"]
    assert acquired and acquired[0]["provider"] == "bwrap"

    # A second task reuses the reset sandbox.
    again = json.loads(daemon("run", "--agent", "true {{prompt_file}}", "x", "--json").stdout)
    warm = [e for e in events_of(daemon, again["id"]) if e["type"] == "sandbox_acquired"]
    assert warm[0]["warm"] is True

    status = json.loads(daemon("status", "--json").stdout)
    # Up, though idle: the daemon's list of running tasks is not its state.
    assert status["up"] is True and status["running"] == [] and status["pid"] == info["pid"]
    assert status["requests"] >= 2
    pool = json.loads(daemon("pool", "status", "--json").stdout)
    assert pool["providers"]["bwrap"]["states"] == {"idle": 1}


def test_detach_queue_limit_priority_and_cancel(hal: Hal, hal_env: dict[str, str]) -> None:
    env = {"HAL_MAX_CONCURRENT": "1"}
    assert hal("serve", "--detach", env=env).returncode == 0
    first = ""
    try:
        # The blocker runs until the test cancels it: a 'sleep 30' ended first on a loaded
        # machine (the hal calls before the cancel took over 30 s), so the cancel was refused.
        first = hal("run", "--detach", "--agent", "sleep 600", "blocker").stdout.strip()
        # Returned while the blocker runs (a clock could not tell: a loaded machine takes
        # over 5 s to start hal).
        [blocker] = [t for t in tasks_json(hal) if t["id"] == first]
        assert blocker["status"] in ("queued", "provisioning", "preparing", "running"), blocker
        low = hal("run", "--detach", "--agent", "true {{prompt_file}}", "low").stdout.strip()
        high = hal(
            "run", "--detach", "--priority", "5", "--agent", "true {{prompt_file}}", "high"
        ).stdout.strip()
        doomed = hal("run", "--detach", "--agent", "true {{prompt_file}}", "doomed").stdout.strip()
        wait_status(hal, first, {"running"})
        queued = {t["id"]: t for t in tasks_json(hal)}
        assert {queued[i]["status"] for i in (low, high, doomed)} == {"queued"}

        cancelled = hal("task", "cancel", doomed, "--json")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["status"] == "cancelled"
        assert hal("task", "cancel", first).returncode == 0

        done_low = wait_status(hal, low, {"succeeded"})
        done_high = wait_status(hal, high, {"succeeded"})
        assert done_high["started_at"] < done_low["started_at"], "higher priority first"
        assert wait_status(hal, doomed, {"cancelled"})["started_at"] is None
    finally:
        if first:  # ended already when the test passed; left running when it failed
            hal("task", "cancel", first)
        assert hal("serve", "--stop").returncode == 0


def test_pool_warm_drain_and_sandbox_commands(daemon: Hal) -> None:
    out = daemon("pool", "warm", "2", "--provider", "bwrap", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["created"] == {"bwrap": 2}
    rows = json.loads(daemon("sandbox", "list", "--json").stdout)
    assert len(rows) == 2 and {r["pool"] for r in rows} == {"idle"}
    run = daemon("sandbox", "exec", rows[0]["id"], "--", "sh", "-c", "echo $HOME; exit 3")
    assert run.returncode == 3 and run.stdout.strip() == "/home/hal"
    assert daemon("sandbox", "destroy", rows[0]["id"]).returncode == 0
    assert len(json.loads(daemon("sandbox", "list", "--json").stdout)) == 1
    drained = json.loads(daemon("pool", "drain", "--json").stdout)
    assert drained["destroyed"] == 1
    assert json.loads(daemon("sandbox", "list", "--json").stdout) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_leaves_agents_running_and_restart_adopts(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, sig: signal.Signals
) -> None:
    """SIGTERM, and SIGHUP (hal serve reloads nothing: a `kill -HUP` meant as a reload), stop
    the daemon cleanly: its log says which signal, its info file goes, agents run on."""
    home = Path(hal_env["HAL_HOME"])
    assert hal("serve", "--detach").returncode == 0
    agent = "sh -c 'while [ ! -e gate ]; do sleep 0.1; done; rm gate; echo adopted-output; touch a'"
    task_id = hal("run", "--detach", "--agent", agent, "wait").stdout.strip()
    task = wait_status(hal, task_id, {"running"})
    gate = Path(task["session_dir"], "workspace", "gate")
    pid = serve_info(home)["pid"]
    os.kill(pid, sig)
    poll("the daemon to exit", lambda: not Path(f"/proc/{pid}").exists())
    assert hal_processes_of(task), "the agent keeps running in tmux"
    assert f"{sig.name} received" in (home / "run" / "serve.log").read_text()
    assert not (home / "run" / "serve.json").exists()
    gate.touch()
    assert hal("serve", "--detach").returncode == 0
    try:
        done = wait_status(hal, task_id, {"succeeded"})
        assert done["files_changed"] == 1
        log = Path(done["session_dir"], "agent.log").read_text()
        assert "adopted-output" in log
        texts = "".join(e.get("text", "") for e in events_of(hal, task_id) if e["type"] == "output")
        assert texts.count("adopted-output") == 1, "output is recorded exactly once"
    finally:
        assert hal("serve", "--stop").returncode == 0


@pytest.mark.timeout(300)  # two daemon starts, six tasks, resumes: slow on a loaded host
def test_kill_9_mid_run_then_restart_leaves_nothing_behind(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, reaped: None
) -> None:
    home = Path(hal_env["HAL_HOME"])
    assert hal("serve", "--detach").returncode == 0
    # Quick agents that may be anywhere when it dies, and long ones that will be adopted.
    ids = [
        hal("run", "--detach", "--agent", "sh agent.sh {{prompt_file}}", f"q {n}").stdout.strip()
        for n in range(3)
    ]
    # The slow ones run until the test lets them go (a fixed sleep could end before a loaded
    # machine's poll saw them running), at most a minute.
    slow = ("sh -c 'echo started; i=0; while [ ! -e go ] && [ $i -lt 600 ]; "
            "do sleep 0.1; i=$((i+1)); done; echo line >> calc.py'")  # fmt: skip
    ids += [hal("run", "--detach", "--agent", slow, f"slow {n}").stdout.strip() for n in range(3)]
    running = [wait_status(hal, task_id, {"running"}) for task_id in ids[3:]]
    before = {t["id"]: events_of(hal, t["id"]) for t in tasks_json(hal)}
    pid = serve_info(home)["pid"]
    os.kill(pid, signal.SIGKILL)
    poll("the daemon to die", lambda: not Path(f"/proc/{pid}").exists())

    assert hal("serve", "--detach").returncode == 0
    for task in running:
        Path(task["session_dir"], "workspace", "go").touch()
    try:
        settled = {"succeeded", "interrupted", "failed"}
        final = {i: wait_status(hal, i, settled, timeout=60) for i in ids}
        for task_id, task in final.items():
            events = events_of(hal, task_id)
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(1, len(seqs) + 1)), "events intact, in order, no gaps"
            old = [(e["seq"], e["type"]) for e in before[task_id]]
            assert [(e["seq"], e["type"]) for e in events[: len(old)]] == old
            assert Path(task["session_dir"], "workspace", "calc.py").exists()
            # The error first: pytest cuts a long dict short, and this names why it failed.
            why = (task.get("error_code"), task.get("error_message"))
            assert task["status"] != "failed", (why, task)
        for task_id, task in final.items():
            if task["status"] == "interrupted":
                out = hal("task", "resume", task_id, "--json", timeout=90)
                assert out.returncode == 0, out.stderr
                assert json.loads(out.stdout)["status"] == "succeeded"
        assert all(t["status"] == "succeeded" for t in tasks_json(hal))
    finally:
        assert hal("serve", "--stop").returncode == 0
    # No orphan sandbox, slot or process.
    assert list((home / "sandboxes").glob("*/*")) == []
    for task in tasks_json(hal):
        assert hal_processes_of(task) == []
    assert [p for p in (home / "pool").iterdir() if p.name != "template"] == []
    assert not (home / "run" / "serve.json").exists()
    subprocess.run(["true"], check=True)


def test_project_config_applies_through_the_daemon(daemon: Hal, demo_repo: Path) -> None:
    # network = "host" in ./hal.toml: the sandbox sees the host's interfaces, not only lo.
    agent = "sh -c 'cat /proc/net/dev'"
    plain = json.loads(daemon("run", "--agent", agent, "net", "--json").stdout)
    (demo_repo / "hal.toml").write_text('network = "host"\n')
    assert daemon("trust").returncode == 0  # network is applied from a trusted file only
    out = daemon("run", "--agent", agent, "net", "--json")
    assert out.returncode == 0, out.stderr
    project = json.loads(out.stdout)

    def interfaces(task: dict[str, Any]) -> set[str]:
        log = Path(task["session_dir"], "agent.log").read_text()
        return {line.split(":")[0].strip() for line in log.splitlines() if ":" in line}

    assert interfaces(plain) == {"lo"}
    assert interfaces(project) - {"lo"}, "the project's network = host applied"
    shown = daemon("run", "--agent", "true {{prompt_file}}", "x")
    assert f"config: {demo_repo / 'hal.toml'}" in shown.stderr


@pytest.mark.parametrize("via_daemon", [False, True])
def test_retries_work_with_and_without_the_daemon(hal: Hal, via_daemon: bool) -> None:
    if via_daemon:
        assert hal("serve", "--detach").returncode == 0
    try:
        out = hal("run", "--retries", "2", "--agent", "sh -c 'exit 3'", "fail", "--json")
        task = json.loads(out.stdout)
        assert out.returncode != 0 and task["status"] == "failed"
        assert task["agent_retries"] == 2
        retries = [
            e for e in events_of(hal, task["id"])
            if e["type"] == "phase" and e["phase"] == "queued"
        ]  # fmt: skip
        assert [e["detail"].split(" in ")[0] for e in retries] == ["retry 1", "retry 2"]
    finally:
        if via_daemon:
            assert hal("serve", "--stop").returncode == 0


def test_the_agents_session_id_reaches_the_task_record(
    daemon: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    # The session id is noted by the (synchronous) output pump and written by an awaited
    # save right after: it must still land on the record a resume reads.
    from tests.support.adoption import _pausing_claude

    _pausing_claude(hal_env, demo_repo)
    (demo_repo / "go").touch()  # replay without the pause
    subprocess.run(["git", "-C", str(demo_repo), "add", "go"], check=True)
    subprocess.run(["git", "-C", str(demo_repo), "commit", "-qm", "go"], check=True)
    out = daemon("run", "--agent", "claude", "fix it", "--json")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "succeeded"
    record = next(t for t in tasks_json(daemon) if t["id"] == task["id"])
    assert record["agent_session_id"] == "d132bc1e-04d0-4164-aa9f-94c96618212b"


def test_events_of_a_foreground_run_reach_the_daemon_in_commit_order(
    daemon: Hal, hal_env: dict[str, str], demo_repo: Path
) -> None:
    home = Path(hal_env["HAL_HOME"])
    client = DaemonClient.find(home)
    assert client is not None
    first = asyncio.run(client.call("GET", "/v1/events", query={"after": 0}))
    start = first["last_gseq"]
    # Run in a separate hal process, not through the daemon: its events reach the daemon's
    # bus through the store's index, and a follower resuming by gseq gets all of them.
    agent = "sh -c 'for i in 1 2 3; do echo line $i; sleep 0.5; done'"
    run = subprocess.Popen(
        [sys.executable, "-m", "hal9999", "run", "--agent", agent, "x", "--json"],
        cwd=demo_repo, env={**hal_env, "HAL_NO_DAEMON": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    async def collect() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        after = start
        while not any(e["type"] == "task_end" for e in seen):
            page = await client.call("GET", "/v1/events", query={"after": after, "wait": 5})
            assert page["events"], "the daemon's bus was never woken"
            seen += page["events"]
            after = page["last_gseq"]
        return seen

    seen = asyncio.run(collect())  # long-polls while the other process runs the task
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr
    task_id = json.loads(stdout)["id"]
    gseqs = [e["gseq"] for e in seen]
    assert gseqs == sorted(set(gseqs)) and gseqs[0] > start
    mine = [e for e in seen if e["task_id"] == task_id]
    assert [e["seq"] for e in mine] == list(range(1, len(mine) + 1))
    assert [e["seq"] for e in events_of(daemon, task_id)][: len(mine)] == [e["seq"] for e in mine]
    # The answer that says the task is done carries its record (a follower's last request).
    page = asyncio.run(client.call("GET", f"/v1/tasks/{task_id}/events", query={"after_seq": 0}))
    assert page["done"] is True
    assert page["task"] == asyncio.run(client.call("GET", f"/v1/tasks/{task_id}"))


BAD_POSITIONS = [
    {"after": "abc"}, {"after": "-1"}, {"after": str(10**30)}, {"wait": "nan"},
    {"wait": "inf"}, {"wait": "1e9"}, {"after_seq": str(10**30)},
    {"after_seq": "0", "wake": "everything"},
]  # fmt: skip


def test_follow_routes_refuse_bad_positions_in_one_line(
    daemon: Hal, hal_env: dict[str, str]
) -> None:
    client = DaemonClient.find(Path(hal_env["HAL_HOME"]))
    assert client is not None
    for query in BAD_POSITIONS:
        path = "/v1/tasks/nosuch/events" if "after_seq" in query else "/v1/events"
        with pytest.raises(ConfigError) as raised:
            asyncio.run(client.call("GET", path, query=query))
        assert "\n" not in str(raised.value), query


def test_a_queued_task_whose_env_values_a_restart_dropped_fails_once_and_says_how(
    hal: Hal, hal_env: dict[str, str], demo_repo: Path, reaped: None
) -> None:
    # Values given with --env live in the daemon's memory only. After a kill -9 the task
    # they were for cannot start: it must fail once, saying what it lacks and how to give
    # it, not stay queued while the scheduler starts it again thousands of times a second.
    home = Path(hal_env["HAL_HOME"])
    one = {"HAL_MAX_CONCURRENT": "1"}
    assert hal("serve", "--detach", env=one).returncode == 0
    try:
        wait = "sh -c 'i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done'"
        blocker = hal("run", "--detach", "--agent", wait, "block").stdout.strip()
        blocked = wait_status(hal, blocker, {"running"})
        agent = "sh -c 'echo FOO=$FOO > foo.txt; true {{prompt_file}}'"
        queued = hal("run", "--detach", "--env", "FOO=bar", "--agent", agent, "x").stdout.strip()
        assert wait_status(hal, queued, {"queued"})
        pid = serve_info(home)["pid"]
        os.kill(pid, signal.SIGKILL)
        poll("the daemon to die", lambda: not Path(f"/proc/{pid}").exists())

        assert hal("serve", "--detach", env=one).returncode == 0
        Path(str(blocked["session_dir"]), "workspace", "go").touch()  # the slot it waits for
        assert wait_status(hal, blocker, {"succeeded"}, timeout=60)
        failed = wait_status(hal, queued, {"failed", "succeeded"})
        assert failed["status"] == "failed", failed
        message = failed["error_message"]
        assert "FOO is not set" in message and f"hal task resume {queued}" in message, message
        time.sleep(1)  # a scheduler spinning on it would log thousands of lines meanwhile
        log = (home / "run" / "serve.log").read_text()
        assert log.count("FOO is not set") <= 2, "the scheduler did not spin on the task"

        resumed = hal("task", "resume", queued, "--env", "FOO=again", "--json", timeout=90)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["status"] == "succeeded"
    finally:
        assert hal("serve", "--stop").returncode == 0
    shown = subprocess.run(["git", "show", f"hal/{queued}:foo.txt"], cwd=demo_repo,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert shown.stdout == "FOO=again\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="uid lock drafts exist only under a root hal")
def test_the_daemons_start_removes_uid_lock_drafts_of_dead_hals(hal: Hal) -> None:
    """A bwrap or qemu hal killed inside ``allocate`` leaves its draft lock file; ``hal
    serve``'s start removes it (``sandboxuser.sweep_drafts``) and leaves a live writer's."""
    from hal9999.providers.host import user as sandboxuser

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: a writer that is gone
    started = sandboxuser._started(os.getpid())
    sandboxuser.LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    prefix = sandboxuser._draft(f"test-daemon {os.getpid()}")
    dead = sandboxuser.LOCK_DIR / f"{prefix}{child.pid}.{started}-0001"
    alive = sandboxuser.LOCK_DIR / f"{prefix}{os.getpid()}.{started}-0002"
    try:
        for draft in (dead, alive):
            draft.write_text("owner\n")
        assert hal("serve", "--detach").returncode == 0
        try:
            assert not dead.exists(), "the dead writer's draft stayed"
            assert alive.exists(), "a live writer's draft was taken"
        finally:
            assert hal("serve", "--stop").returncode == 0
    finally:
        dead.unlink(missing_ok=True)
        alive.unlink(missing_ok=True)
