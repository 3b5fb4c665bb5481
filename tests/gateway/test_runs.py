"""Whole ``hal run`` tasks through the gateway (network "none"): budgets end a task as
``budget_exceeded`` with its work kept, and eight agents at once ride out a 429 storm."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli, files_containing, git
from tests.gateway.upstream import StormUpstream
from tests.support.gateway import use_caller
from tests.ula_host import missing, ula_host

from hal9999.gateway.channel import GatewayPaths
from hal9999.gateway.egress import MAX_TUNNELS
from hal9999.gateway.proxy import MAX_CALLS

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]

EGRESS_AGENT = Path(__file__).with_name("egress_agent.py")
TUNNEL_FLOOD = Path(__file__).with_name("tunnel_flood_agent.py")
CALLS_FLOOD = Path(__file__).with_name("calls_flood_agent.py")


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


def test_budget_ends_the_task_and_keeps_its_work(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, dummy_key: str
) -> None:
    use_caller(hal_cli, bug_repo, upstream)
    out = hal_cli("run", "--agent", "claude", "--max-tokens", "30", "spend it", "--json")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    task = json.loads(hal_cli("task", "list", "--json").stdout)[0]
    assert task["status"] == "failed" and task["error_code"] == "budget_exceeded"
    assert "budget" in task["error_message"]
    assert task["files_changed"] == 1, "the work done before the budget ran out is kept"
    assert "work.txt" in git(bug_repo, "show", "--stat", task["branch"])
    assert len(upstream.seen) == 2, "the refused call never reached the upstream"

    calls = json.loads(hal_cli("task", "requests", task["id"], "--json").stdout)
    assert [(c["status"], c["error"]) for c in calls] == [
        (200, None),
        (200, None),
        (400, "budget_exceeded"),
    ]
    table = hal_cli("task", "requests", task["id"]).stdout
    assert "budget_exceeded" in table and "3 calls" in table
    assert files_containing(hal_cli.home, dummy_key.encode()) == []


def test_eight_agents_ride_out_a_429_storm(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    upstream.fail_first, upstream.retry_after, upstream.delay_s = 8, "1", 0.2
    use_caller(hal_cli, bug_repo, upstream, "[gateway]\nconcurrency = 2\n")
    argv = [sys.executable, "-m", "hal9999", "run", "--agent", "claude", "--json", "call"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(argv, cwd=bug_repo, env=hal_cli.env, **pipes) for _ in range(8)]
    outcomes = [run.communicate(timeout=200) for run in runs]
    assert [run.returncode for run in runs] == [0] * 8, [err[-800:] for _, err in outcomes]
    tasks = json.loads(hal_cli("task", "list", "--json").stdout)
    assert sorted(t["status"] for t in tasks) == ["succeeded"] * 8
    assert upstream.refused == 8 and len(upstream.seen) == 8 * 3  # 3 calls each
    assert upstream.peak <= 2, "the upstream saw more calls at once than the configured cap"
    log = (hal_cli.home / "gateway" / "gateway.log").read_text()
    assert "HTTP Request" not in log, "no request URLs in the gateway's log"


def test_egress_goes_through_the_allow_list(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    if (why := missing()) is not None:  # the target: this host's own addresses are refused
        pytest.skip(why)
    with ula_host() as ula, ula.listen() as listener:
        target = ula.target(listener.getsockname()[1])
        threading.Thread(target=_echo_once, args=(listener,), daemon=True).start()
        use_caller(hal_cli, bug_repo, upstream, f"[gateway]\negress = [{json.dumps(target)}]\n")
        shutil.copy(EGRESS_AGENT, bug_repo / "caller.py")
        (bug_repo / "caller.py").chmod(0o755)
        git(bug_repo, "commit", "-qam", "egress agent")
        out = hal_cli("run", "--agent", "claude", target)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    task = json.loads(hal_cli("task", "list", "--json").stdout)[0]
    logs = hal_cli("task", "logs", task["id"]).stdout
    assert "EGRESS denied.example:443 HTTP/1.1 403" in logs
    assert f"EGRESS {target} echo:through the tunnel" in logs
    assert f"DIRECT {target} direct refused" in logs, "network none: no way out but the proxy"
    lines = hal_cli("task", "events", task["id"], "--json").stdout.splitlines()
    denied = [json.loads(line) for line in lines if '"egress_denied"' in line]
    assert [(e["host"], e["port"]) for e in denied] == [("denied.example", 443)]


def _echo_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(4096))


def test_an_agent_holds_a_bounded_number_of_tunnels(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    # One allowed host was enough: a tunnel, once open, is not waiting at the gateway's door,
    # and each held two of the gateway's descriptors (every task's model calls go through
    # that one process) for as long as the agent kept it, however many it opened.
    if (why := missing()) is not None:  # the target: this host's own addresses are refused
        pytest.skip(why)
    held: list[socket.socket] = []
    with ula_host() as ula, ula.listen(backlog=512) as listener:
        target = ula.target(listener.getsockname()[1])
        threading.Thread(target=_hold, args=(listener, held), daemon=True).start()
        use_caller(hal_cli, bug_repo, upstream, f"[gateway]\negress = [{json.dumps(target)}]\n")
        shutil.copy(TUNNEL_FLOOD, bug_repo / "caller.py")
        (bug_repo / "caller.py").chmod(0o755)
        git(bug_repo, "commit", "-qam", "tunnel flood agent")
        out = hal_cli("run", "--agent", "claude", f"{target} {MAX_TUNNELS + 36}")
    for conn in held:
        conn.close()
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    task = json.loads(hal_cli("task", "list", "--json").stdout)[0]
    logs = hal_cli("task", "logs", task["id"]).stdout
    assert f"TUNNELS {MAX_TUNNELS} 36" in logs, logs[-2000:]


def _hold(listener: socket.socket, held: list[socket.socket]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        held.append(conn)


def test_an_agent_has_a_bounded_number_of_calls_in_flight(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    # Each call in flight held a connection (a descriptor of the gateway every task's calls
    # go through) and a place in the upstream's queue ahead of other tasks' calls, as many
    # as the agent sent at once. The agent holds MAX_CALLS calls open, then sends 36 more one
    # at a time; the upstream holds every call until the agent has seen its refusals, so
    # which calls are refused depends on no clock. (Sent all at once, a loaded gateway had
    # not yet read the first calls when the last came, and its door, which bounds waiting
    # connections, answered those 503 instead: CI saw no 429 at all.)
    upstream.gate = threading.Event()
    use_caller(hal_cli, bug_repo, upstream, f"[gateway]\nconcurrency = {MAX_CALLS}\n")
    shutil.copy(CALLS_FLOOD, bug_repo / "caller.py")
    (bug_repo / "caller.py").chmod(0o755)
    git(bug_repo, "commit", "-qam", "calls flood agent")
    argv = [sys.executable, "-m", "hal9999", "run", "--agent", "claude", f"{MAX_CALLS} 36"]
    run = subprocess.Popen(argv, cwd=bug_repo, env=hal_cli.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "REFUSED 36 " not in _agent_log(hal_cli.home):
            assert run.poll() is None and time.monotonic() < deadline, "no 36 refusals"
            time.sleep(0.2)
    finally:
        upstream.gate.set()
        out, err = run.communicate(timeout=180)
    assert run.returncode == 0, out[-2000:] + err[-2000:]
    log = _agent_log(hal_cli.home)
    assert f"CALLS {MAX_CALLS} 36" in log, log[-2000:]
    assert len(upstream.seen) == MAX_CALLS
    refusals = [line.split()[2] for line in log.splitlines() if line.startswith("REFUSED ")]
    gateway_log = (hal_cli.home / "gateway" / "gateway.log").read_text(errors="replace")
    # the gateway's own answer, each time
    assert refusals == ["429"] * 36, log[-2000:] + "\ngateway.log:\n" + gateway_log[-3000:]


def _agent_log(home: Path) -> str:
    logs = list((home / "sessions").glob("*/agent.log"))
    return logs[0].read_text(errors="replace") if logs else ""


def test_a_deep_home_runs_tasks_in_process_and_served(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream
) -> None:
    # A HAL_HOME of 112 bytes (a home on a network share, a CI workspace): every socket of
    # its gateway and its daemon is past sun_path's 107. The gateway listened through its
    # directory's descriptor, but hal pinged control.sock by its path, failed each time, and
    # said "the LLM gateway did not start" after 60 s (its log empty: nothing had failed).
    deep = hal_cli.home.parent / ("h" * (112 - len(str(hal_cli.home.parent)) - 1))
    assert len(str(GatewayPaths(deep).control)) > 107
    hal_cli.home = deep
    hal_cli.env["HAL_HOME"] = str(deep)
    use_caller(hal_cli, bug_repo, upstream)
    in_process = hal_cli("run", "--agent", "claude", "call", "--json", timeout=120)
    assert in_process.returncode == 0, in_process.stderr[-800:]
    assert hal_cli("serve", "--detach").returncode == 0
    try:
        served = hal_cli("run", "--agent", "claude", "call", "--json", timeout=120)
    finally:
        stopped = hal_cli("serve", "--stop")
    assert served.returncode == 0 and stopped.returncode == 0, served.stderr[-800:]
    tasks = json.loads(hal_cli("task", "list", "--json").stdout)
    assert sorted(t["status"] for t in tasks) == ["succeeded"] * 2
    assert len(upstream.seen) == 2 * 3  # 3 calls each, all through the gateway
