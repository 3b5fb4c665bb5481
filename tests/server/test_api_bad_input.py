"""A careless client of a real ``hal serve``: malformed, mistyped or out-of-range input to
any ``/v1`` route is a 4xx whose JSON error names the problem, never a 500 (which says "a bug
in hal") and never a 200 that does something else than asked."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from tests.hive.conftest import local_hal, make_agent

from hal9999.errors import HiveError, HiveLimited, ThreadForbidden, ThreadStateError
from hal9999.hive import approvals
from hal9999.server.routing import status_for
from hal9999.store import Store


class UnixHTTP(http.client.HTTPConnection):
    """HTTP over the daemon's unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("hal", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


Call = Any


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Call, Store]]:
    """``call(method, path, body) -> (status, json)`` on a running ``hal serve`` whose hive
    has agent alice, and its store."""
    tmp = tmp_path_factory.mktemp("api")
    home = tmp / "halhome"
    hal = local_hal(home, tmp)
    with Store.open(home) as store:
        make_agent(store, "alice")
        started = hal("serve", "--detach")
        assert started.returncode == 0, started.stderr
        token = (home / "token").read_text().strip()

        def call(method: str, path: str, body: bytes | str | None = None) -> tuple[int, Any]:
            conn = UnixHTTP(str(home / "run" / "hal.sock"))
            try:
                data = body.encode() if isinstance(body, str) else body
                conn.request(method, path, data, {"Authorization": f"Bearer {token}"})
                answer = conn.getresponse()
                return answer.status, json.loads(answer.read())
            finally:
                conn.close()

        try:
            yield call, store
        finally:
            assert hal("serve", "--stop").returncode == 0


CASES = [
    # (method, path, body, status, code, words in the message)
    ("POST", "/v1/tasks", "[" * 100_000, 400, "config_invalid", "nests too deeply"),
    ("GET", "/v1/tasks?limit=99999999999999999999999", None, 400, "config_invalid", "limit"),
    ("GET", "/v1/tasks?limit=-5", None, 400, "config_invalid", "limit"),
    ("POST", "/v1/pool/warm", '{"count": 1e400}', 400, "config_invalid", "count"),
    ("POST", "/v1/pool/warm", '{"count": -5}', 400, "config_invalid", "count"),
    ("POST", "/v1/pool/warm", '{"count": 1.5}', 400, "config_invalid", "count"),
    ("POST", "/v1/pool/warm", '{"count": 1e9}', 400, "config_invalid", "count"),
    ("POST", "/v1/pool/warm", '{"provider": ""}', 400, "config_invalid", "provider"),
    # An empty value was read as the default (a count of 1, no limit, from the start) and a
    # body that is not JSON was ignored by a route that reads none: both were answered 200.
    ("POST", "/v1/pool/warm", '{"count": ""}', 400, "config_invalid", "count"),
    ("POST", "/v1/pool/drain", "not json", 400, "config_invalid", "not JSON"),
    ("POST", "/v1/pool/drain", "[]", 400, "config_invalid", "JSON object"),
    ("POST", "/v1/tasks/nosuch/cancel", "{", 400, "config_invalid", "not JSON"),
    ("DELETE", "/v1/hive/agents/nosuch", "x", 400, "config_invalid", "not JSON"),
    ("GET", "/v1/tasks?limit=", None, 400, "config_invalid", "limit"),
    ("GET", "/v1/tasks/nosuch/events?after_seq=", None, 400, "config_invalid", "after_seq"),
    ("GET", "/v1/events?after=", None, 400, "config_invalid", "after"),
    ("GET", "/v1/events?wait=", None, 400, "config_invalid", "wait"),
    ("GET", "/v1/events/stream?after=", None, 400, "config_invalid", "after"),
    ("GET", "/v1/hive/events?after=", None, 400, "config_invalid", "after"),
    ("GET", "/v1/hive/events?wait=", None, 400, "config_invalid", "wait"),
    ("GET", "/v1/hive/reminders?recent_s=", None, 400, "config_invalid", "recent_s"),
    ("GET", "/v1/hive/reminders?agent=", None, 400, "config_invalid", "agent must be"),
    ("GET", "/v1/hive/inbox?name=", None, 400, "config_invalid", "name must be"),
    ("GET", "/v1/hive/threads?agent=", None, 400, "config_invalid", "agent must be"),
    ("POST", "/v1/tasks/nosuch/resume", '{"prompt": 5}', 400, "config_invalid", "prompt"),
    ("POST", "/v1/tasks/nosuch/resume", '{"prompt": ["a"]}', 400, "config_invalid", "prompt"),
    ("POST", "/v1/tasks/nosuch/resume", '{"env": {"1BAD": "x"}}', 400, "usage", "variable name"),
    # No environment holds a NUL: the task was created, its exec raised in the runner and it
    # was reported "interrupted" (hal died), with a traceback in the daemon's log.
    ("POST", "/v1/tasks", '{"prompt": "x", "env": {"A": "x\\u0000y"}}', 400, "usage", "NUL"),
    ("POST", "/v1/tasks/nosuch/resume", '{"env": {"A": "\\u0000"}}', 400, "usage", "NUL"),
    ("POST", "/v1/hive/agents", '{"name": "a/b"}', 400, "hive_error", "not a valid agent name"),
    ("POST", "/v1/hive/agents", '{"name": "operator"}', 400, "hive_error", "reserved"),
    ("POST", "/v1/hive/agents", '{"name": "alice"}', 400, "hive_error", "already exists"),
    ("POST", "/v1/hive/agents", '{"name": "zed", "agent": ""}', 400, "config_invalid", "agent"),
    ("POST", "/v1/hive/agents", '{"name": "zed", "provider": " "}', 400, "config_invalid",
     "provider"),
    ("POST", "/v1/hive/messages", '{"to": "alice", "body": ""}', 400, "hive_error", "empty"),
    ("POST", "/v1/hive/messages", '{"to": "alice", "body": 5}', 400, "config_invalid", "body"),
    ("POST", "/v1/hive/messages", '{"to": "operator", "body": "x"}', 400, "hive_error",
     "to itself"),
    ("POST", "/v1/hive/messages", json.dumps({"to": "alice", "body": "a" * 100_000}), 400,
     "hive_error", "more than"),
    ("POST", "/v1/hive/vacuum", '{"dry_run": "false"}', 400, "config_invalid", "dry_run"),
    ("GET", "/v1/hive/events?after=1.5", None, 400, "config_invalid", "whole number"),
    ("GET", "/v1/hive/threads?agent=alcie", None, 404, "agent_not_found", "'alcie'"),
    # A lone surrogate (no database or file takes one) and a NUL in a path: were 500s.
    ("POST", "/v1/hive/messages", '{"to": "alice", "body": "x\\ud800"}', 400, "config_invalid",
     "lone UTF-16 surrogate"),
    ("POST", "/v1/hive/agents", '{"name": "zed", "role": "\\udfff"}', 400, "config_invalid",
     "lone UTF-16 surrogate"),
    ("POST", "/v1/hive/agents", '{"name": "zed", "repo": "x\\u0000"}', 400, "repo_invalid",
     "null byte"),
    ("POST", "/v1/hive/agents", '{"name": "zed", "agent": "sh\\u0000 {{prompt_file}}"}', 400,
     "usage", "NUL byte"),  # was spawned: every turn of it failed to exec
    ("POST", "/v1/hive/questions/q-x/answer", '{"text": "\\ud800"}', 400, "config_invalid",
     "lone UTF-16 surrogate"),
    ("POST", "/v1/hive/approvals/a-x/deny", '{"reason": "\\ud800"}', 400, "config_invalid",
     "lone UTF-16 surrogate"),
    ("POST", "/v1/hive/agents", '{"name": "a/b", "role": "\\ud83d\\ude00"}', 400, "hive_error",
     "not a valid agent name"),  # a surrogate pair is text: it passes
    ("POST", "/v1/tasks", '{"prompt": "x", "egress": "abc"}', 400, "usage",
     "egress: expected a list"),
    ("POST", "/v1/tasks", '{"prompt": "x", "config_files": "abc"}', 400, "usage",
     "config_files: expected a list"),
    ("POST", "/v1/tasks", '{"prompt": "x", "config": {"timeout_s": "abc"}}', 400,
     "config_invalid", "config.timeout_s: expected a number"),
    # A yes/no query parameter other than 1/true/0/false was read as no, and answered 200.
    ("GET", "/v1/hive/approvals?all=yes", None, 400, "config_invalid", "all must be 1 or true"),
    ("GET", "/v1/hive/questions?all=on", None, 400, "config_invalid", "all must be 1 or true"),
    ("GET", "/v1/hive/inbox?mark=yes", None, 400, "config_invalid", "mark must be 1 or true"),
    ("GET", "/v1/hive/inbox?name=alice&all=Y", None, 400, "config_invalid", "all must be"),
    ("DELETE", "/v1/tasks/nosuch?force=yes", None, 400, "config_invalid", "force must be"),
    ("POST", "/v1/hive/inbox/read", '{"ids": "m1"}', 400, "config_invalid", "ids must be a list"),
    # A token budget past any real one (and SQLite's 64-bit integers) was taken.
    ("POST", "/v1/tasks", '{"prompt": "x", "max_tokens": 99999999999999999999999}', 400, "usage",
     "max_tokens: "),
    # A path or method the API does not have: the message was the bare "POST /v1/taks".
    ("POST", "/v1/taks", "{}", 404, "no_route", "the daemon has no route POST /v1/taks"),
    ("PUT", "/v1/tasks", "{}", 405, "method_not_allowed", "PUT is not allowed on /v1/tasks"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "words"), CASES)
def test_bad_input_is_a_4xx_naming_the_problem(
    api: tuple[Call, Store], method: str, path: str, body: str | None, status: int, code: str,
    words: str,
) -> None:  # fmt: skip
    call, _ = api
    got, payload = call(method, path, body)
    assert (got, payload["error"]["code"]) == (status, code), payload
    assert words in payload["error"]["message"], payload
    assert "\n" not in payload["error"]["message"], payload  # one line, not pydantic's report


def test_nothing_was_done_for_a_refused_request(api: tuple[Call, Store]) -> None:
    call, _ = api
    assert call("GET", "/v1/pool")[1]["providers"] == {}  # no warm request created one
    names = [a["name"] for a in call("GET", "/v1/hive/agents")[1]]
    assert names == ["alice"]
    assert call("GET", "/v1/hive/inbox?name=alice&all=1")[1] == []
    for agent in ("alice", "operator"):
        assert call("GET", f"/v1/hive/threads?agent={agent}")[0] == 200


def test_marking_read_is_a_post_of_the_operators_listed_messages(api: tuple[Call, Store]) -> None:
    """The dashboard marks read with this POST on the operator's click (its page load marked
    them with a GET); ids of other messages or none at all mark nothing."""
    from hal9999.hive import broker

    call, store = api
    one = broker.send(store, sender="alice", recipient="operator", body="first")
    two = broker.send(store, sender="alice", recipient="operator", body="second")
    status, payload = call("POST", "/v1/hive/inbox/read", json.dumps({"ids": [one.id, "m-x"]}))
    assert (status, payload) == (200, {"marked": [one.id]})
    assert [m["id"] for m in call("GET", "/v1/hive/inbox")[1]] == [two.id]
    call("POST", "/v1/hive/inbox/read", json.dumps({"ids": [two.id]}))


def test_deciding_a_decided_proposal_is_a_409(api: tuple[Call, Store]) -> None:
    call, store = api
    gate = approvals.propose(store, kind="tool", proposer="alice", title="push", payload={})
    assert call("POST", f"/v1/hive/approvals/{gate.id}/deny", "{}")[0] == 200
    status, payload = call("POST", f"/v1/hive/approvals/{gate.id}/deny", "{}")
    assert (status, payload["error"]["code"]) == (409, "thread_state"), payload


def test_every_hive_refusal_has_a_4xx() -> None:
    assert status_for(HiveError("taken")) == 400
    assert status_for(HiveLimited("too many")) == 429
    assert status_for(ThreadStateError("decided")) == 409
    assert status_for(ThreadForbidden("not yours")) == 403


@pytest.mark.parametrize(
    ("args", "words"),
    [(("agent", "stop", ""), "no agent called ''"), (("agent", "start", "a/b"), "no agent called"),
     (("agent", "rm", "../../x"), "no agent called"), (("agent", "stop", "a" * 5000), "no agent"),
     (("approvals", "approve", ""), "no approval"),
     (("approvals", "approve", "x/y"), "no approval"),
     (("approvals", "approve", "a" * 5000), "no approval")],
)  # fmt: skip
def test_the_cli_names_what_is_not_there_when_it_is_no_path_segment(
    api: tuple[Call, Store], args: tuple[str, ...], words: str
) -> None:
    """Through hal serve, a name or id that is no path segment became a request the daemon
    could not route: "hal: error: POST /v1/hive/agents//stop", status 1, or "the request
    head exceeds 32768 bytes"."""
    _, store = api
    home = store.path.parent
    out = local_hal(home, home.parent)(*args)
    assert out.returncode == 3, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    assert len(lines) == 1 and words in lines[0] and "/v1/" not in lines[0], out.stderr
