"""Tasks in a microVM and in a container with network "none" reach the gateway and the egress
proxy: the VM over its exec channel (ssh remote forwards to the host's sockets, nothing runs
in the guest), the container through the bound channel directory and the perl forwarder (its
image has no python). The agent is bash alone, so it runs in either image."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import KEY_VAR, HalCli, files_containing, git
from tests.gateway.upstream import StormUpstream
from tests.ula_host import missing, ula_host

from hal9999.gateway.channel import GatewayPaths

pytestmark = [pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300)]

AGENT = Path(__file__).with_name("bash_agent.sh")


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


@pytest.mark.qemu
def test_a_vm_task_calls_the_model_and_egress_through_the_gateway(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, dummy_key: str
) -> None:
    hal_cli.env |= {"HAL_PROVIDER": "qemu", "HAL_QEMU_IMAGES": os.environ["HAL_QEMU_IMAGES"]}
    # A home deep enough that egress.sock's path passes sun_path: ssh refused to forward the
    # guest's port to it ("Bad remote forwarding specification"), as on xdist's deeper homes.
    deep = hal_cli.home.parent / ("h" * max(1, 82 - len(str(hal_cli.home.parent))))
    assert len(str(GatewayPaths(deep).egress_socket)) > 107
    hal_cli.home = deep
    hal_cli.env["HAL_HOME"] = str(deep)
    run_bash_agent(hal_cli, bug_repo, upstream, dummy_key, "qemu")


@pytest.mark.podman
def test_a_container_task_calls_the_model_and_egress_through_the_gateway(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, dummy_key: str
) -> None:
    hal_cli.env |= {"HAL_PROVIDER": "docker", "HAL_DOCKER_URL": os.environ["HAL_DOCKER_URL"]}
    run_bash_agent(hal_cli, bug_repo, upstream, dummy_key, "docker")


def run_bash_agent(
    hal_cli: HalCli, bug_repo: Path, upstream: StormUpstream, dummy_key: str, provider: str,
    more_config: str = "", command: str = "/workspace/caller.sh",
) -> None:
    """One task of the bash agent as "claude": a model call, a denied and an allowed CONNECT,
    a direct connection; checks each outcome, the records, the events and the canary.
    ``more_config`` ends the config file (the provider's own settings); ``command`` is the
    agent's program where the sandbox sees the workspace."""
    if (why := missing()) is not None:  # the target: this host's own addresses are refused
        pytest.skip(why)
    shutil.copy(AGENT, bug_repo / "caller.sh")
    git(bug_repo, "add", "caller.sh")
    git(bug_repo, "commit", "-qm", "bash agent")
    with ula_host() as ula, ula.listen() as listener:
        target = ula.target(listener.getsockname()[1])
        threading.Thread(target=_echo_once, args=(listener,), daemon=True).start()
        hal_cli.config_file.parent.mkdir(parents=True, exist_ok=True)
        hal_cli.config_file.write_text(
            "[agents.claude]\n"
            f"command = {json.dumps(command)}\n"
            f'base_url = "{upstream.url}"\n'
            f'api_key_env = "{KEY_VAR}"\n'
            f"[gateway]\negress = [{json.dumps(target)}]\n" + more_config
        )
        out = hal_cli("run", "--agent", "claude", target, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    [task] = json.loads(hal_cli("task", "list", "--json").stdout)
    assert task["provider"] == provider
    logs = hal_cli("task", "logs", task["id"]).stdout
    assert "CALL HTTP/1.1 200" in logs, logs[-2000:]
    assert [seen.headers["x-api-key"] for seen in upstream.seen] == [dummy_key]
    assert "EGRESS denied.example:443 HTTP/1.1 403" in logs
    assert f"EGRESS {target} echo:through the tunnel" in logs
    assert f"DIRECT {target} direct refused" in logs, "network none: no way out but the proxy"
    calls = json.loads(hal_cli("task", "requests", task["id"], "--json").stdout)
    assert [(c["status"], c["total_tokens"]) for c in calls if c["error"] is None] == [(200, 23)]
    lines = hal_cli("task", "events", task["id"], "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["source"] for e in events if e["type"] == "usage"] == ["gateway"]
    assert [e["host"] for e in events if e["type"] == "egress_denied"] == ["denied.example"]
    assert files_containing(hal_cli.home, dummy_key.encode()) == []


def _echo_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(4096))
