"""The session cookie alone reads and changes nothing: browsers send it to every port of the
host, so a server on another port of 127.0.0.1 that the browser visits holds it, and can
replay it from outside a browser with any Origin, Host or Sec-Fetch-* header it likes. Every
``/api/...``, ``/files/...``, event stream and terminal request also needs the session's
proof, which only the login answer's page got (and keeps in its origin's localStorage)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tests.dashboard.conftest import Served, proof_in
from tests.dashboard.fake_api import TOKEN, FakeApi, task

from hal9999.dashboard.auth import (
    COOKIE,
    PROOF_HEADER,
    DashboardSession,
    SessionKeeper,
    login_token,
    login_url,
)
from hal9999.errors import TaskStateError

READS = ("/api/tasks", "/api/tasks/t1", "/api/hive/inbox?all=1&mark=1", "/api/status",
         "/files/tasks/t1/patch")  # fmt: skip
CHANGES = ("/api/tasks/t1/cancel", "/api/hive/approvals/a1/approve", "/logout")
TERMINALS = ("/terminal/t1", "/terminal/t1?write=1")
HOST = "127.0.0.1:8080"
"""The Host a login link is opened on in the tests of SessionKeeper alone."""


class FakeDaemon:
    """Just enough daemon for the patch and terminal routes: every task has ended."""

    def __init__(self) -> None:
        self.environ: dict[str, str] = {}
        self.listen = None

        def find(task_id: str) -> Any:
            raise TaskStateError(f"task {task_id} has ended: nothing to attach to")

        self.service = SimpleNamespace(find=find)


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[Served, FakeApi, Path]]:
    """The dashboard over the fake API, with a daemon for its own routes."""
    from hal9999.dashboard.app import dashboard_app

    home = tmp_path / "halhome"
    home.mkdir()
    api = FakeApi()
    api.add_task(task("t1"))
    app = dashboard_app(home=home, api=api.app, token=TOKEN, daemon=FakeDaemon())  # type: ignore[arg-type]
    served = Served(app)
    yield served, api, home
    served.close()


def login(served: Served, home: Path) -> tuple[str, str]:
    """A new session: its cookie value and its proof."""
    with httpx.Client() as client:
        answer = client.get(login_url(home, served.base))
        assert answer.status_code == 200
        return client.cookies[COOKIE], proof_in(answer.text)


def forged(served: Served, cookie: str) -> dict[str, str]:
    """Every header a browser's own page would send, as a replaying server forges them."""
    return {
        "cookie": f"{COOKIE}={cookie}", "origin": served.base, "referer": served.base + "/",
        "host": f"127.0.0.1:{served.port}", "sec-fetch-site": "same-origin",
        "sec-fetch-mode": "cors", "sec-fetch-dest": "empty",
    }  # fmt: skip


def refused_with_proof_required(answer: httpx.Response) -> bool:
    return answer.status_code == 401 and answer.json()["error"]["code"] == "proof_required"


def terminal(served: Served, path: str, headers: dict[str, str], protocols: list[str]) -> Any:
    """Open the terminal's websocket as a client outside a browser would."""
    from websockets.sync.client import connect

    url = served.base.replace("http", "ws") + path
    origin = headers.pop("origin")
    del headers["host"]  # the client sends the one of the URL
    return connect(url, origin=origin, additional_headers=headers, subprotocols=protocols)  # type: ignore[arg-type, list-item]


def test_the_cookie_alone_with_forged_headers_is_refused_everywhere(
    dashboard: tuple[Served, FakeApi, Path],
) -> None:
    from websockets.exceptions import InvalidStatus

    served, api, home = dashboard
    cookie, proof = login(served, home)
    _, other_proof = login(served, home)  # another session's proof proves nothing here
    with httpx.Client(base_url=served.base) as thief:
        for bad in ({}, {PROOF_HEADER: ""}, {PROOF_HEADER: "0" * 64}, {PROOF_HEADER: other_proof}):
            headers = {**forged(served, cookie), **bad}
            for path in READS:
                answer = thief.get(path, headers=headers)
                assert refused_with_proof_required(answer), (path, bad, answer.text)
                assert "the session cookie alone is not enough" in answer.json()["error"]["message"]
            for path in CHANGES:
                answer = thief.post(path, headers=headers, json={})
                assert refused_with_proof_required(answer), (path, bad, answer.text)
            with thief.stream("GET", "/api/events/stream", headers=headers) as stream:
                stream.read()
                assert refused_with_proof_required(stream)
            for path in TERMINALS:
                protocols = ["hal", *(f"hal-proof.{value}" for value in bad.values())]
                with pytest.raises(InvalidStatus) as shut:
                    terminal(served, path, forged(served, cookie), protocols)
                assert shut.value.response.status_code == 403
    assert api.calls == []  # the API saw none of it (the inbox marked nothing read)
    # The cookie was not revoked by the refused /logout: with its proof, everything answers.
    with httpx.Client(base_url=served.base) as page:
        headers = {**forged(served, cookie), PROOF_HEADER: proof}
        assert page.get("/api/tasks", headers=headers).json()[0]["id"] == "t1"
        assert page.get("/api/hive/inbox?all=1&mark=1", headers=headers).status_code == 200
        patch = page.get("/files/tasks/t1/patch", headers=headers)
        assert patch.status_code == 409 and "has ended" in patch.text  # the route's own answer
        assert page.post("/api/tasks/t1/cancel", headers=headers).status_code == 200
        with page.stream("GET", "/api/events/stream", headers=headers) as stream:
            assert stream.status_code == 200
            assert next(stream.iter_text()).startswith(": hello")
    proven = ["hal", f"hal-proof.{proof}"]
    with terminal(served, "/terminal/t1", forged(served, cookie), proven) as ws:
        assert ws.subprotocol == "hal"  # the proof is never echoed back
        assert "has ended" in json.loads(ws.recv(timeout=10))["error"]
    assert [c[:2] for c in api.calls] == [
        ("GET", "/v1/tasks"), ("GET", "/v1/hive/inbox"), ("POST", "/v1/tasks/t1/cancel"),
        ("GET", "/v1/events/stream"),
    ]  # fmt: skip


def test_the_proof_belongs_to_its_session_and_dies_with_the_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keeper = SessionKeeper(home)
    first, second = (keeper.redeem(login_token(home), HOST) for _ in range(2))
    assert first is not None and second is not None and first.proof != second.proof
    session = keeper.check(first.cookie)
    assert session is not None
    assert keeper.proof_ok(session, first.proof, HOST)
    assert not keeper.proof_ok(session, second.proof, HOST)
    assert not keeper.proof_ok(session, first.proof, "127.0.0.1:8081")  # another origin
    assert not keeper.proof_ok(None, first.proof, HOST)
    assert not keeper.proof_ok(session, first.proof[:-1], HOST)
    assert not keeper.proof_ok(session, "é" * 64, HOST)  # not ASCII: refused, not an exception
    assert SessionKeeper(home).proof_ok(session, first.proof, HOST)  # a restart keeps it valid
    (home / "dashboard.key").unlink()  # logs every browser out
    after = SessionKeeper(home)
    assert after.check(first.cookie) is None
    assert not after.proof_ok(DashboardSession(session.id), first.proof, HOST)


def test_deleting_the_key_logs_out_a_running_daemons_browsers_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keeper = SessionKeeper(home)  # the daemon's, kept for its life
    old = keeper.redeem(login_token(home), HOST)
    assert old is not None and keeper.check(old.cookie) is not None
    (home / "dashboard.key").unlink()
    assert keeper.check(old.cookie) is None  # not only after a restart
    stale = login_token(home)  # `hal dashboard` after the deletion: a new key signs it
    assert keeper.check(old.cookie) is None  # the old cookie stays refused under the new key
    fresh = keeper.redeem(stale, HOST)
    assert fresh is not None, "a link signed with the new key is accepted without a restart"
    session = keeper.check(fresh.cookie)
    assert session is not None and keeper.proof_ok(session, fresh.proof, HOST)
    assert not keeper.proof_ok(session, old.proof, HOST)


def test_a_proof_left_in_an_old_pages_origin_is_refused_by_the_restarted_daemon(
    tmp_path: Path,
) -> None:
    """The daemon listens on a new free port after a restart. The open page of the old one
    keeps reconnecting to the old port, with the cookie and the proof, and whatever takes
    that port next gets both (and reads the proof from the old origin's localStorage when
    the page is reloaded). The proof is bound to the origin it was handed to: the new daemon
    refuses it, and a login there gives a proof that port accepts."""
    from hal9999.dashboard.app import dashboard_app

    home = tmp_path / "halhome"
    home.mkdir()
    api = FakeApi()
    api.add_task(task("t1"))
    before = Served(dashboard_app(home=home, api=api.app, token=TOKEN))
    try:
        cookie, proof = login(before, home)
        with httpx.Client(base_url=before.base) as page:  # valid where it was handed out
            headers = {**forged(before, cookie), PROOF_HEADER: proof}
            assert page.get("/api/tasks", headers=headers).status_code == 200
    finally:
        before.close()
    after = Served(dashboard_app(home=home, api=api.app, token=TOKEN))
    try:
        assert after.port != before.port
        with httpx.Client(base_url=after.base) as squatter:
            headers = {**forged(after, cookie), PROOF_HEADER: proof}
            for path in READS[:3]:
                assert refused_with_proof_required(squatter.get(path, headers=headers)), path
            changed = squatter.post("/api/tasks/t1/cancel", headers=headers)
            assert refused_with_proof_required(changed)
            localhost = {**headers, "host": f"localhost:{after.port}"}  # another origin too
            assert refused_with_proof_required(squatter.get("/api/tasks", headers=localhost))
        assert [c[:2] for c in api.calls] == [("GET", "/v1/tasks")]
        fresh_cookie, fresh_proof = login(after, home)
        with httpx.Client(base_url=after.base) as page:
            headers = {**forged(after, fresh_cookie), PROOF_HEADER: fresh_proof}
            assert page.get("/api/tasks", headers=headers).status_code == 200
            elsewhere = {**headers, "host": f"localhost:{after.port}"}
            assert refused_with_proof_required(page.get("/api/tasks", headers=elsewhere))
    finally:
        after.close()
