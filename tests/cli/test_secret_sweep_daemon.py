"""The secret sweep through ``hal serve``: the leaky agent run by a daemon that never
had the secrets in its environment, and what the daemon keeps and shows searched: its own
environment, its API's JSON and event streams, the dashboard's pages and its ``/api``, every
file under HAL_HOME; and its bearer token and the dashboard's session credential kept out of
every command line, environment and file but their own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.cli.sweep_helpers import (
    CAP,
    CRED,
    FORWARDED,
    REAL_KEY,
    SECRET,
    UNRELATED,
    configure,
    files_holding,
    found_in,
    host_processes,
    repo_text,
    run_watched,
)
from tests.dashboard.conftest import credential_in
from tests.support.hal import Hal, tasks_json

from hal9999.dashboard.auth import SESSION_HEADER, login_url
from hal9999.gateway.channel import GatewayPaths, gateway_pid
from hal9999.server.client import DaemonClient

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def served(hal: Hal, hal_env: dict[str, str]) -> Iterator[dict[str, object]]:
    """``hal serve --detach`` without any of the secrets; stopped with its gateway."""
    out = hal("serve", "--detach", "--json")
    assert out.returncode == 0, out.stderr
    yield json.loads(out.stdout)
    home = Path(hal_env["HAL_HOME"])
    pid = asyncio.run(gateway_pid(GatewayPaths(home)))
    assert hal("serve", "--stop").returncode == 0
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def _api_text(home: Path, task_id: str) -> bytes:
    """What the JSON API answers about the task: its record, events, the global feed, and
    its event stream (SSE, until the task's end event)."""
    client = DaemonClient.find(home)
    assert client is not None

    async def read() -> list[object]:
        got: list[object] = [
            await client.call("GET", "/v1/tasks"),
            await client.call("GET", f"/v1/tasks/{task_id}"),
            await client.call("GET", f"/v1/tasks/{task_id}/events", query={"after_seq": 0}),
            await client.call("GET", "/v1/events", query={"after": 0}),
        ]
        return got

    answers = json.dumps(asyncio.run(read())).encode()
    info = json.loads((home / "run" / "serve.json").read_text())
    token = (home / "token").read_text().strip()
    url = f"http://127.0.0.1:{info['port']}/v1/tasks/{task_id}/events/stream?after=0"
    stream = b""
    headers = {"authorization": f"Bearer {token}"}
    with httpx.stream("GET", url, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        deadline = time.monotonic() + 30
        for chunk in answer.iter_bytes():
            stream += chunk
            if b"task_end" in stream or time.monotonic() > deadline:
                break
    assert b"task_end" in stream
    return answers + stream


def _dashboard_text(home: Path, port: int, task_id: str) -> tuple[bytes, str]:
    """The dashboard's page shells and, logged in, its ``/api`` of the task; and the session
    credential its login answer handed."""
    base = f"http://127.0.0.1:{port}"
    seen = b""
    with httpx.Client(base_url=base, timeout=30) as client:
        for page in ("/", f"/tasks/{task_id}", "/hive"):
            answer = client.get(page)
            assert answer.status_code == 200, page
            seen += answer.content
        login = client.get(login_url(home, base))
        credential = credential_in(login.text)
        for api in ("/api/tasks", f"/api/tasks/{task_id}", f"/api/tasks/{task_id}/events"):
            answer = client.get(api, headers={SESSION_HEADER: credential})
            assert answer.status_code == 200, api
            seen += answer.content
    return seen, credential


def test_through_the_daemon_no_secret_reaches_what_it_keeps_or_shows(
    hal: Hal,
    hal_env: dict[str, str],
    demo_repo: Path,
    tmp_path: Path,
    served: dict[str, object],
) -> None:
    configure(hal_env, demo_repo, tmp_path)
    home = Path(hal_env["HAL_HOME"])
    daemon = served["pid"]
    assert isinstance(daemon, int) and isinstance(served["port"], int)
    bearer = (home / "token").read_text().strip()
    done, in_argv, in_environ = run_watched(hal_env, demo_repo, {"LEAK_CAP": str(CAP)}, daemon)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"via hal serve" in done.stderr
    [task] = tasks_json(hal)
    token = json.loads((Path(task["session_dir"]) / "run" / "gateway.json").read_text())["token"]
    secrets = [SECRET, FORWARDED, REAL_KEY, CRED, token]

    assert done.stdout.count(b"[REDACTED]") > 40
    assert found_in(done.stdout + done.stderr, [*secrets, UNRELATED]) == []
    # The daemon is outside the run's tree: its environment was searched with the rest.
    assert in_argv == set() and in_environ == set()
    assert found_in(host_processes()[daemon][2], [*secrets, bearer]) == []

    api = _api_text(home, task["id"])
    assert found_in(api, secrets) == [] and b"[REDACTED]" in api
    pages, credential = _dashboard_text(home, served["port"], task["id"])
    assert found_in(pages, [*secrets, bearer]) == [] and b"[REDACTED]" in pages

    # The bearer token and the session credential: in no command line, no environment.
    for _, cmdline, environ in host_processes().values():
        assert found_in(cmdline + environ, [bearer, credential]) == []
    held = files_holding(home, [*secrets, bearer, credential])
    prefix = str(Path(task["session_dir"]).relative_to(home)) + "/"
    for name in [n for n in held if n.startswith((prefix + "workspace/", prefix + "home/"))]:
        del held[name]
    assert held == {"token": [bearer], prefix + "run/gateway.json": [token]}
    assert (home / "token").stat().st_mode & 0o077 == 0
    assert found_in(repo_text(demo_repo), [*secrets, UNRELATED, bearer]) == []
