"""Property tests over the daemon's HTTP API: any request ends with a documented status and a
one-line JSON error, never a 500 (an unexpected exception), and leaves no task unfinished or
sandbox behind once the daemon stops."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.hal import AGENT, BUGGY_CALC, commit_repo, private_env

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]

DOCUMENTED = {200, 400, 401, 403, 404, 405, 409, 413, 429, 431, 507}
"""What the API answers to a request; 500 or 503 only for an operational failure with its
own error code (a provider that failed), never ``internal`` (an unexpected exception)."""
UNFINISHED = {"queued", "provisioning", "preparing", "running", "collecting"}

FUZZ = settings(
    max_examples=int(os.environ.get("HAL_FUZZ_HTTP_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Daemon:
    """A ``hal serve`` on a private home, and a raw client for its unix socket."""

    def __init__(self, root: Path) -> None:
        self.repo = commit_repo(root / "repo", {"calc.py": BUGGY_CALC, "agent.sh": AGENT})
        self.home = root / "halhome"
        self.env = private_env(self.home, root / "xdg", HAL_PROVIDER="bwrap")

    def hal(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hal9999", *args],
            cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        out = self.hal("serve", "--detach", "--json")
        assert out.returncode == 0, out.stderr
        info = json.loads((self.home / "run" / "serve.json").read_text())
        self.socket = str(info["socket"])
        self.token = (self.home / "token").read_text().strip()

    def request(
        self, method: str, target: str, body: bytes, token: str | None
    ) -> tuple[int, dict[str, Any]]:
        head = [f"{method} {target} HTTP/1.1", "Host: hal", "Connection: close",
                f"Content-Length: {len(body)}"]  # fmt: skip
        if token is not None:
            head.append(f"Authorization: Bearer {token}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(self.socket)
            conn.sendall(raw)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        status_line, _, rest = reply.partition(b"\r\n")
        status = int(status_line.split()[1])
        payload = json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")
        return status, payload


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("fuzz-http"))
    d.start()
    yield d
    stopped = d.hal("serve", "--stop")
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 60
    tasks: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        tasks = json.loads(d.hal("task", "list", "--json").stdout)
        if not any(t["status"] in UNFINISHED for t in tasks):
            break
        time.sleep(0.5)
    for task in tasks:
        if task["status"] in ("running", "interrupted"):
            d.hal("task", "stop", task["id"])
    assert list((d.home / "sandboxes").glob("*/*")) == []


texts = st.one_of(
    st.text(max_size=12),
    # Lone surrogates (JSON escapes them as \ud800, which SQLite and UTF-8 refuse) and NULs.
    st.text(st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=4),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip
RUN_FIELDS = {
    "prompt": st.one_of(st.sampled_from(["fix it", "", " "]), json_values),
    "agent": st.one_of(st.sampled_from(["true {{prompt_file}}", "", "nosuch", "{{"]), json_values),
    "provider": st.one_of(st.sampled_from(["bwrap", "", ",", "nosuch"]), json_values),
    "process_manager": st.one_of(st.sampled_from(["direct", "tmux", "x"]), json_values),
    "timeout_s": st.one_of(st.floats(), st.sampled_from([0, -1, 5, "5", "inf"]), json_values),
    "repo": st.one_of(st.sampled_from(["/nonexistent", "file:///x.git", "."]), json_values),
    "ref": st.one_of(st.sampled_from(["main", "-f", "nosuch"]), json_values),
    "cwd": st.one_of(st.just("REPO"), st.sampled_from(["/", "rel", "/nonexistent"]), json_values),
    "env_names": st.one_of(st.lists(st.sampled_from(["HOME", "NAMÉ", "", "A B"])), json_values),
    "env": json_values,
    "secret_names": json_values,
    "literal_env": json_values,
    "priority": st.one_of(st.integers(), json_values),
    "retries": st.one_of(st.integers(), json_values),
}
ids = st.one_of(st.sampled_from(["nosuch", "..", "%2e%2e", "a/b", ""]), st.text(max_size=10))


@st.composite
def requests(draw: st.DrawFn, repo: Path) -> tuple[str, str, bytes]:
    task_id = quote(draw(ids), safe="")
    method, path = draw(st.sampled_from([
        ("GET", "/v1/status"), ("POST", "/v1/tasks"), ("GET", "/v1/tasks"),
        ("GET", f"/v1/tasks/{task_id}"), ("POST", f"/v1/tasks/{task_id}/cancel"),
        ("POST", f"/v1/tasks/{task_id}/stop"), ("POST", f"/v1/tasks/{task_id}/resume"),
        ("DELETE", f"/v1/tasks/{task_id}"), ("GET", "/v1/pool"), ("GET", "/v1/sandboxes"),
        ("POST", f"/v1/sandboxes/bwrap/{task_id}/exec"), ("DELETE", f"/v1/sandboxes/x/{task_id}"),
        ("PUT", "/v1/tasks"), ("GET", "/v2/nothing"), ("GET", "/"),
        # Routes that take no body (sent one below) and the hive's, but none that starts
        # anything (spawn, a message that wakes an agent) or stops the daemon.
        ("POST", "/v1/pool/drain"), ("GET", f"/v1/hive/agents/{task_id}"),
        ("POST", f"/v1/hive/agents/{task_id}/stop"), ("DELETE", f"/v1/hive/agents/{task_id}"),
        ("GET", "/v1/hive/inbox"), ("POST", "/v1/hive/inbox/read"), ("POST", "/v1/hive/vacuum"),
        ("GET", "/v1/hive/reminders"), ("GET", "/v1/hive/events"), ("GET", "/v1/hive/threads"),
        ("GET", f"/v1/hive/approvals/{task_id}"), ("POST", f"/v1/hive/approvals/{task_id}/deny"),
        ("POST", f"/v1/hive/questions/{task_id}/answer"), ("GET", "/v1/events"),
    ]))  # fmt: skip
    query = draw(st.dictionaries(st.sampled_from(["status", "limit", "force", "after",
                                                  "name", "all", "agent", "recent_s"]),
                                 st.one_of(st.sampled_from(["queued", "bogus", "-1", "x", "1"]),
                                           st.text(max_size=8)), max_size=2))  # fmt: skip
    target = path + ("?" + urlencode(query) if query else "")
    if draw(st.booleans()):  # half the examples create a task: the widest input
        method, target = "POST", "/v1/tasks"
    kind = draw(st.sampled_from(["none", "fields", "fields", "fields", "json", "bytes"]))
    if kind == "fields":
        fields = draw(st.lists(st.sampled_from(sorted(RUN_FIELDS)), unique=True, max_size=6))
        data = {name: draw(RUN_FIELDS[name]) for name in fields}
        if data.get("cwd") == "REPO":
            data["cwd"] = str(repo)
        body = json.dumps(data).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    else:
        body = b""
    return method, target, body


@FUZZ
@given(data=st.data())
def test_fuzz_http_api(daemon: Daemon, data: st.DataObject) -> None:
    method, target, body = data.draw(requests(daemon.repo))
    token = data.draw(st.sampled_from([daemon.token] * 8 + [None, "wrong"]))
    status, payload = daemon.request(method, target, body, token)
    assert status in DOCUMENTED or (status in (500, 503) and payload["error"]["code"] != "internal")
    if status != 200:
        error = payload["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and "\n" not in error["message"]
        assert "Traceback" not in error["message"]
    if token != daemon.token:
        assert status == 401


@pytest.mark.parametrize(
    "body",
    [{"prompt": "x", "timeout_s": 1e308 * 10}, {"prompt": "x", "timeout_s": "soon"},
     {"prompt": "x", "env_names": 5}, {"prompt": "x", "repo": 5}, {"prompt": "x", "cwd": "a\0b"},
     {"prompt": "x", "env": {"NAMÉ": "1"}}, {"prompt": "x", "agent": ""}, {"prompt": " "}],
)  # fmt: skip
def test_bad_run_bodies_are_400(daemon: Daemon, body: dict[str, Any]) -> None:
    before = json.loads(daemon.hal("task", "list", "--json").stdout)
    raw = json.dumps(body).encode()  # 1e309 is written as Infinity, as a hostile client may
    status, payload = daemon.request("POST", "/v1/tasks", raw, daemon.token)
    assert status == 400, payload
    assert "\n" not in payload["error"]["message"]
    assert json.loads(daemon.hal("task", "list", "--json").stdout) == before


def test_unknown_status_filter_is_400(daemon: Daemon) -> None:
    status, payload = daemon.request("GET", "/v1/tasks?status=bogus", b"", daemon.token)
    assert status == 400 and "bogus" in payload["error"]["message"]
