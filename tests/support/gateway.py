"""Talking to the gateway and the egress proxy, and agents that call them from a sandbox."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import KEY_VAR, HalCli, files_containing, git
from tests.gateway.upstream import StormUpstream
from tests.ula_host import missing, ula_host

import hal9999.gateway
from hal9999.gateway.channel import GatewayPaths, Grant, new_token
from hal9999.gateway.forwarder import connect_unix

KEY = "sk-real-key-0123456789abcdef"


def grant_for(upstream: StormUpstream, task_id: str = "t1", **fields: Any) -> Grant:
    """A grant for ``task_id`` to ``upstream`` with the real key and a fresh token."""
    return Grant(task_id=task_id, token=new_token(), upstream=upstream.url, key=KEY, **fields)


def client(sock: str) -> httpx.AsyncClient:
    """An HTTP client of the gateway on its unix socket ``sock``."""
    transport = httpx.AsyncHTTPTransport(uds=sock)
    return httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60)


async def call(
    http: httpx.AsyncClient, token: str, *, model: str = "claude-sonnet-4-5", stream: bool = False
) -> httpx.Response:
    """One model call through the gateway with ``token``."""
    body = {"model": model, "max_tokens": 10, "stream": stream, "messages": []}
    return await http.post("/v1/messages", json=body, headers={"x-api-key": token})


def host_address(family: socket.AddressFamily = socket.AF_INET) -> str | None:
    """A non-loopback, non-link-local address of this machine (IPv4, or IPv6 with
    ``socket.AF_INET6``), if it has one: the route to a documentation address picks it."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:  # no packet is sent: connect only picks the route
        probe.connect(("192.0.2.123" if family == socket.AF_INET else "2001:db8::123", 9))
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    ip = ipaddress.ip_address(address)
    return None if ip.is_loopback or ip.is_link_local else address


async def connect(
    sock: str, target: str, token: str | None
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT to ``target`` through the egress proxy: its status head, reader, writer."""
    reader, writer = await asyncio.open_unix_connection(sock)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if token is not None:
        auth = base64.b64encode(f"hal:{token}".encode()).decode()
        head += f"Proxy-Authorization: Basic {auth}\r\n"
    writer.write((head + "\r\n").encode())
    status = await reader.readuntil(b"\r\n\r\n")
    return status, reader, writer


GATEWAY = Path(hal9999.gateway.__file__).parent


RUNNERS = {"py": [sys.executable, "-I", "-S"], "pl": ["perl"]}


def _connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            assert time.monotonic() < deadline, "the forwarder never listened"
            time.sleep(0.05)


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


async def gateway_pid(paths: GatewayPaths) -> int:
    """The running gateway's pid, from its control socket (of any depth: a test's home)."""
    sock = await connect_unix(str(paths.control))
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    writer.write(b'{"op": "ping"}\n')
    answer = json.loads(await reader.readline())
    writer.close()
    return int(answer["pid"])


CALLER = Path(__file__).parents[1] / "gateway" / "caller_agent.py"


def use_caller(hal: HalCli, repo: Path, upstream: StormUpstream, gateway: str = "") -> None:
    """Commit the caller agent into the repo and make it the claude preset's program."""
    shutil.copy(CALLER, repo / "caller.py")
    (repo / "caller.py").chmod(0o755)
    git(repo, "add", "caller.py")
    git(repo, "commit", "-qm", "caller agent")
    hal.config_file.parent.mkdir(parents=True, exist_ok=True)
    hal.config_file.write_text(
        "[agents.claude]\n"
        'command = "/workspace/caller.py"\n'
        f'base_url = "{upstream.url}"\n'
        f'api_key_env = "{KEY_VAR}"\n' + gateway
    )


AGENT = Path(__file__).parents[1] / "gateway" / "bash_agent.sh"


def run_bash_agent(
    hal_cli: HalCli,
    bug_repo: Path,
    upstream: StormUpstream,
    dummy_key: str,
    provider: str,
    more_config: str = "",
    command: str = "/workspace/caller.sh",
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
