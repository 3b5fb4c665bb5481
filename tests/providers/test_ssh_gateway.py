"""A task on an ssh host with network "none" reaches the LLM gateway and the egress proxy: the
relay forwards the gateway's unix sockets into the sandbox's channel directory on the host
over its asyncssh connection (a remote path forward), and the agent's in-sandbox forwarder
(inside bwrap there, no network) connects to them. Against the real sshd of tests/sshd.py."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import HalCli, bug_repo, dummy_key, files_containing, git, hal_cli  # noqa: F401
from tests.gateway.test_egress import host_address
from tests.gateway.upstream import StormUpstream
from tests.sshd import Sshd

pytestmark = [pytest.mark.ssh, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(300)]

AGENT = Path(__file__).parents[1] / "gateway" / "bash_agent.sh"


@pytest.fixture
def upstream() -> Iterator[StormUpstream]:
    with StormUpstream() as server:
        yield server


def _echo_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(4096))


def test_an_ssh_task_calls_the_model_and_egress_through_the_gateway(
    sshd_server: Sshd,
    hal_cli: HalCli,  # noqa: F811
    bug_repo: Path,  # noqa: F811
    upstream: StormUpstream,
    dummy_key: str,  # noqa: F811
) -> None:
    address = host_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to tunnel to")
    hal_cli.env["HAL_PROVIDER"] = "ssh"
    shutil.copy(AGENT, bug_repo / "caller.sh")
    git(bug_repo, "add", "caller.sh")
    git(bug_repo, "commit", "-qm", "bash agent")
    host = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sshd_server.host_entry().items())
    with socket.create_server((address, 0)) as listener:
        target = f"{address}:{listener.getsockname()[1]}"
        threading.Thread(target=_echo_once, args=(listener,), daemon=True).start()
        hal_cli.config_file.parent.mkdir(parents=True, exist_ok=True)
        hal_cli.config_file.write_text(
            "[agents.claude]\n"
            'command = "/workspace/caller.sh"\n'
            f'base_url = "{upstream.url}"\n'
            f'api_key_env = "{KEY}"\n'
            f"[gateway]\negress = [{json.dumps(target)}]\n"
            f"[[providers.ssh.hosts]]\n{host}\n"
        )
        out = hal_cli("run", "--agent", "claude", target, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    [task] = json.loads(hal_cli("task", "list", "--json").stdout)
    assert task["provider"] == "ssh"
    logs = hal_cli("task", "logs", task["id"]).stdout
    # The model call went through the forwarded socket; the real key was added on the host.
    assert "CALL HTTP/1.1 200" in logs, logs[-2000:]
    assert [seen.headers["x-api-key"] for seen in upstream.seen] == [dummy_key]
    assert "EGRESS denied.example:443 HTTP/1.1 403" in logs
    assert f"EGRESS {target} echo:through the tunnel" in logs
    assert f"DIRECT {target} direct refused" in logs, "network none: no way out but the proxy"
    calls = json.loads(hal_cli("task", "requests", task["id"], "--json").stdout)
    assert [(c["status"], c["total_tokens"]) for c in calls if c["error"] is None] == [(200, 23)]
    # The key reached neither the ssh host's files nor hal's.
    assert files_containing(hal_cli.home, dummy_key.encode()) == []
    assert files_containing(sshd_server.home, dummy_key.encode()) == []


KEY = "E2E_LLM_API_KEY"
