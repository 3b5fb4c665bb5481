"""``hal run --provider ray`` with a cluster address nothing answers at (a closed port, or a
port that accepts and never speaks Ray's protocol) fails in one line within its join's
deadline (``connect_timeout_s``), and SIGTERM during the wait ends it at once with status 143
and the task cancelled; no Ray log line reaches the user."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.hal import Hal

pytestmark = [pytest.mark.ray, pytest.mark.bwrap, pytest.mark.tmux]
AGENT = "true {{prompt_file}}"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers: on every address of this host, for
    Ray joins a loopback address at the node's own IP."""
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))
        server.listen(64)
        yield int(server.getsockname()[1])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # free once closed: nothing listens there


def join_within(hal_env: dict[str, str], seconds: float) -> None:
    config = Path(hal_env["XDG_CONFIG_HOME"]) / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[providers.ray]\nconnect_timeout_s = {seconds}\n")


@pytest.mark.parametrize("kind", ["closed", "silent"])
def test_an_unreachable_cluster_is_one_line_in_seconds(
    hal: Hal, hal_env: dict[str, str], kind: str, silent_port: int
) -> None:
    join_within(hal_env, 3)
    port = closed_port() if kind == "closed" else silent_port
    started = time.monotonic()
    out = hal("run", "--provider", "ray", "--agent", AGENT, "x",
              env={"HAL_RAY_ADDRESS": f"127.0.0.1:{port}"}, timeout=120)  # fmt: skip
    took = time.monotonic() - started
    assert "Traceback" not in out.stderr
    assert out.returncode == 6, (out.returncode, out.stdout, out.stderr[-2000:])
    [error] = [line for line in out.stdout.splitlines() if line.startswith("error ")]
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in error, error
    said = "no answer within 3 s" if kind == "silent" else "Connection refused"
    assert said in error and "ray start --head" in error, error
    assert "gcs_client" not in out.stderr and "rpc_client" not in out.stderr, out.stderr[-2000:]
    assert "SIGTERM handler" not in out.stderr, out.stderr[-2000:]
    assert took < 90, took  # its infrastructure retries included


def test_sigterm_while_joining_an_unanswering_cluster_ends_the_run_at_once(
    hal_env: dict[str, str], demo_repo: Path, silent_port: int
) -> None:
    join_within(hal_env, 60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal9999", "run", "--provider", "ray", "--agent", AGENT, "x"],
        cwd=demo_repo, env={**hal_env, "HAL_RAY_ADDRESS": f"127.0.0.1:{silent_port}"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        home = Path(hal_env["HAL_HOME"])
        deadline = time.monotonic() + 60
        while not list(home.glob("sessions/*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # into the cluster's join
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    tasks = subprocess.run(
        [sys.executable, "-m", "hal9999", "task", "list", "--json"], cwd=demo_repo, env=hal_env,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    [task] = json.loads(tasks.stdout)
    assert task["status"] == "cancelled", task
