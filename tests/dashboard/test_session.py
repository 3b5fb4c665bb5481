"""The dashboard needs no cookie, and no cookie opens it. Browsers send a host's cookies to
every port of it (and let a page on any port set them), so a server on another port of
127.0.0.1 that the browser visits could read the session cookie hal set before, replay it
with any Origin, Host or Sec-Fetch-* header, or overwrite it. Every ``/api/...``,
``/files/...``, event stream, terminal and state-changing request needs the session's
credential instead, which only the login answer's page got (and keeps in its origin's
localStorage), sent in a header (the terminal: a subprotocol)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tests.dashboard.conftest import Served, credential_in
from tests.dashboard.fake_api import TOKEN, FakeApi, task

from hal9999.dashboard.auth import (
    SESSION_HEADER,
    SESSION_MAX_AGE_S,
    SessionKeeper,
    dashboard_key,
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

        async def get(task_id: str) -> Any:
            raise TaskStateError(f"task {task_id} has ended: nothing to attach to")

        self.tasks = SimpleNamespace(get=get)


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


def login(served: Served, home: Path) -> str:
    """A new session's credential."""
    with httpx.Client() as client:
        answer = client.get(login_url(home, served.base))
        assert answer.status_code == 200 and not client.cookies
        return credential_in(answer.text)


def old_cookie(home: Path) -> str:
    """A session cookie as hal set it before (signed with the same key): still valid there
    for 7 days, and what a browser may still hold."""
    from itsdangerous import URLSafeTimedSerializer

    signer = URLSafeTimedSerializer(dashboard_key(home), salt="hal-session")
    return str(signer.dumps({"sid": "0" * 32}))


def forged(served: Served, cookie: str) -> dict[str, str]:
    """Every header a browser's own page would send, as a replaying server forges them."""
    return {
        "cookie": f"hal_session={cookie}", "origin": served.base, "referer": served.base + "/",
        "host": f"127.0.0.1:{served.port}", "sec-fetch-site": "same-origin",
        "sec-fetch-mode": "cors", "sec-fetch-dest": "empty",
    }  # fmt: skip


def refused_login_required(answer: httpx.Response) -> bool:
    return answer.status_code == 401 and answer.json()["error"]["code"] == "login_required"


def terminal(served: Served, path: str, headers: dict[str, str], protocols: list[str]) -> Any:
    """Open the terminal's websocket as a client outside a browser would."""
    from websockets.sync.client import connect

    url = served.base.replace("http", "ws") + path
    origin = headers.pop("origin")
    del headers["host"]  # the client sends the one of the URL
    return connect(url, origin=origin, additional_headers=headers, subprotocols=protocols)  # type: ignore[arg-type, list-item]


def test_a_stolen_cookie_without_the_credential_is_refused_everywhere(
    dashboard: tuple[Served, FakeApi, Path],
) -> None:
    from websockets.exceptions import InvalidStatus

    served, api, home = dashboard
    credential = login(served, home)
    elsewhere = SessionKeeper(home).redeem(login_token(home), f"localhost:{served.port}")
    assert elsewhere is not None
    # The cookies a thief could hold: hal's old session cookie, or even the credential
    # itself put in a cookie; and no credential, or one that is not this origin's.
    stolen = (old_cookie(home), credential)
    sent = ({}, {SESSION_HEADER: ""}, {SESSION_HEADER: "0" * 64},
            {SESSION_HEADER: old_cookie(home)}, {SESSION_HEADER: elsewhere})  # fmt: skip
    with httpx.Client(base_url=served.base) as thief:
        for cookie in stolen:
            for bad in sent:
                headers = {**forged(served, cookie), **bad}
                for path in READS:
                    answer = thief.get(path, headers=headers)
                    assert refused_login_required(answer), (path, bad, answer.text)
                    assert "hal dashboard" in answer.json()["error"]["message"]
                for path in CHANGES:
                    answer = thief.post(path, headers=headers, json={})
                    assert refused_login_required(answer), (path, bad, answer.text)
                with thief.stream("GET", "/api/events/stream", headers=headers) as stream:
                    stream.read()
                    assert refused_login_required(stream)
                for path in TERMINALS:
                    protocols = ["hal", *(f"hal-session.{value}" for value in bad.values())]
                    with pytest.raises(InvalidStatus) as shut:
                        terminal(served, path, forged(served, cookie), protocols)
                    assert shut.value.response.status_code == 403
    assert api.calls == []  # the API saw none of it (the inbox marked nothing read)
    # The session was not revoked by the refused /logout: with its credential (and any
    # cookie at all, which is ignored), everything answers.
    with httpx.Client(base_url=served.base) as page:
        headers = {**forged(served, "junk"), SESSION_HEADER: credential}
        assert page.get("/api/tasks", headers=headers).json()[0]["id"] == "t1"
        assert page.get("/api/hive/inbox?all=1&mark=1", headers=headers).status_code == 200
        patch = page.get("/files/tasks/t1/patch", headers=headers)
        assert patch.status_code == 409 and "has ended" in patch.text  # the route's own answer
        assert page.post("/api/tasks/t1/cancel", headers=headers).status_code == 200
        with page.stream("GET", "/api/events/stream", headers=headers) as stream:
            assert stream.status_code == 200
            assert next(stream.iter_text()).startswith(": hello")
    proven = ["hal", f"hal-session.{credential}"]
    with terminal(served, "/terminal/t1", forged(served, "junk"), proven) as ws:
        assert ws.subprotocol == "hal"  # the credential is never echoed back
        assert "has ended" in json.loads(ws.recv(timeout=10))["error"]
    assert [c[:2] for c in api.calls] == [
        ("GET", "/v1/tasks"), ("GET", "/v1/hive/inbox"), ("POST", "/v1/tasks/t1/cancel"),
        ("GET", "/v1/events/stream"),
    ]  # fmt: skip


def test_the_credential_belongs_to_its_origin_and_dies_with_the_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keeper = SessionKeeper(home)
    first, second = (keeper.redeem(login_token(home), HOST) for _ in range(2))
    assert first is not None and second is not None and first != second
    session = keeper.check(first, HOST)
    assert session is not None and session != keeper.check(second, HOST)
    assert keeper.check(first, "127.0.0.1:8081") is None  # another origin
    named = keeper.redeem(login_token(home), "LocalHost:8080")
    assert keeper.check(named, "localhost:8080") is not None  # a name's case is no origin
    assert keeper.check(None, HOST) is None and keeper.check("", HOST) is None
    assert keeper.check(first[:-1], HOST) is None
    assert keeper.check("é" * 64, HOST) is None  # not ASCII: refused, not an exception
    assert keeper.check(old_cookie(home), HOST) is None  # the old cookie's signature is no use
    assert SessionKeeper(home).check(first, HOST) == session  # a restart keeps it valid
    (home / "dashboard.key").unlink()  # logs every browser out
    assert SessionKeeper(home).check(first, HOST) is None


def test_only_the_key_holder_answers_a_pages_challenge_and_only_for_its_origin(
    tmp_path: Path,
) -> None:
    import hashlib
    import hmac

    home = tmp_path / "home"
    keeper = SessionKeeper(home)
    credential = keeper.redeem(login_token(home), HOST)
    assert credential is not None
    handed = keeper.verifier(credential)
    assert handed is not None and keeper.verifier(credential[:-1]) is None
    sid, verifier = handed.split(".")
    assert credential not in handed and verifier not in credential
    challenge = "ab" * 16
    expected = hmac.new(verifier.encode(), challenge.encode(), hashlib.sha256).hexdigest()
    assert SessionKeeper(home).prove(sid, challenge, HOST) == expected  # a restart too
    assert keeper.prove(sid, "cd" * 16, HOST) != expected  # another challenge
    assert keeper.prove(sid, challenge, "127.0.0.1:8081") != expected  # a hal elsewhere
    assert keeper.prove("0" * 32, challenge, HOST) != expected  # another session
    (home / "dashboard.key").unlink()
    assert keeper.prove(sid, challenge, HOST) is None  # no key, no proof
    other = SessionKeeper(home)  # a new key: what it proves is no use to the old page
    assert other.prove(sid, challenge, HOST) != expected


def test_a_session_lasts_seven_days(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from itsdangerous import TimestampSigner

    home = tmp_path / "home"
    keeper = SessionKeeper(home)
    now = TimestampSigner.get_timestamp
    made = {}
    for age in (SESSION_MAX_AGE_S - 60, SESSION_MAX_AGE_S + 5):
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda s, a=age: now(s) - a)
        made[age] = keeper.redeem(login_token(home), HOST)
    monkeypatch.undo()
    assert keeper.check(made[SESSION_MAX_AGE_S - 60], HOST) is not None
    assert keeper.check(made[SESSION_MAX_AGE_S + 5], HOST) is None


def test_deleting_the_key_logs_out_a_running_daemons_browsers_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    keeper = SessionKeeper(home)  # the daemon's, kept for its life
    old = keeper.redeem(login_token(home), HOST)
    assert old is not None and keeper.check(old, HOST) is not None
    (home / "dashboard.key").unlink()
    assert keeper.check(old, HOST) is None  # not only after a restart
    stale = login_token(home)  # `hal dashboard` after the deletion: a new key signs it
    assert keeper.check(old, HOST) is None  # the old credential stays refused under the new key
    fresh = keeper.redeem(stale, HOST)
    assert fresh is not None, "a link signed with the new key is accepted without a restart"
    assert keeper.check(fresh, HOST) is not None


def test_a_credential_left_in_an_old_pages_origin_is_refused_by_the_restarted_daemon(
    tmp_path: Path,
) -> None:
    """The daemon listens on a new free port after a restart. The open page of the old one
    keeps reconnecting to the old port with its credential, and whatever takes that port
    next gets it (and reads it from the old origin's localStorage when the page is
    reloaded). The credential is bound to the origin it was handed to: the new daemon
    refuses it, and a login there gives one that port accepts."""
    from hal9999.dashboard.app import dashboard_app

    home = tmp_path / "halhome"
    home.mkdir()
    api = FakeApi()
    api.add_task(task("t1"))
    before = Served(dashboard_app(home=home, api=api.app, token=TOKEN))
    try:
        credential = login(before, home)
        with httpx.Client(base_url=before.base) as page:  # valid where it was handed out
            headers = {**forged(before, "junk"), SESSION_HEADER: credential}
            assert page.get("/api/tasks", headers=headers).status_code == 200
    finally:
        before.close()
    after = Served(dashboard_app(home=home, api=api.app, token=TOKEN))
    try:
        assert after.port != before.port
        with httpx.Client(base_url=after.base) as squatter:
            headers = {**forged(after, "junk"), SESSION_HEADER: credential}
            for path in READS[:3]:
                assert refused_login_required(squatter.get(path, headers=headers)), path
            changed = squatter.post("/api/tasks/t1/cancel", headers=headers)
            assert refused_login_required(changed)
            localhost = {**headers, "host": f"localhost:{after.port}"}  # another origin too
            assert refused_login_required(squatter.get("/api/tasks", headers=localhost))
        assert [c[:2] for c in api.calls] == [("GET", "/v1/tasks")]
        fresh = login(after, home)
        with httpx.Client(base_url=after.base) as page:
            headers = {**forged(after, "junk"), SESSION_HEADER: fresh}
            assert page.get("/api/tasks", headers=headers).status_code == 200
            elsewhere = {**headers, "host": f"localhost:{after.port}"}
            assert refused_login_required(page.get("/api/tasks", headers=elsewhere))
    finally:
        after.close()
