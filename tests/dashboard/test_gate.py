"""The dashboard's gate over plain HTTP: login link, session credential, Host, Origin, headers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tests.dashboard.conftest import Served, credential_in

from hal9999.dashboard.auth import SESSION_HEADER, login_url

Dashboard = tuple[Served, Any, Path]


@contextlib.contextmanager
def logged_in(served: Served, home: Path) -> Iterator[tuple[httpx.Client, str]]:
    """A client, and the session credential its login answer handed the page."""
    with httpx.Client(base_url=served.base, follow_redirects=False) as client:
        answer = client.get(login_url(home, served.base))
        assert answer.status_code == 200
        yield client, credential_in(answer.text)


def test_login_link_works_once_and_sets_no_cookie(fake_dashboard: Dashboard) -> None:
    served, _, home = fake_dashboard
    link = login_url(home, served.base)
    with httpx.Client() as client:
        # A page shell holds no data and needs no session; the data needs one.
        before = client.get(served.base + "/")
        assert before.status_code == 200 and "hal-session" not in before.text
        assert client.get(served.base + "/api/tasks").status_code == 401
        first = client.get(link)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
        assert "set-cookie" not in first.headers and not client.cookies
        # The credential is in the login answer's body only: no page shell carries it.
        credential = credential_in(first.text)
        shell = client.get(served.base + "/")
        assert shell.status_code == 200
        assert "hal-session" not in shell.text and credential not in shell.text
        assert client.get(served.base + "/api/tasks").status_code == 401  # nothing implicit
        answer = client.get(served.base + "/api/tasks", headers={SESSION_HEADER: credential})
        assert answer.status_code == 200
    with httpx.Client() as other:
        assert other.get(link).status_code == 403  # used once already
        forged = other.get(served.base + "/login?t=" + link.split("t=")[1][:-2] + "xx")
        assert forged.status_code == 403


def test_api_forwarding_adds_the_bearer_and_never_passes_the_session_or_a_cookie(
    fake_dashboard: Dashboard,
) -> None:
    served, api, home = fake_dashboard
    with logged_in(served, home) as (client, credential):
        headers = {SESSION_HEADER: credential, "cookie": "hal_session=junk; other=1"}
        assert client.get("/api/tasks", headers=headers).json() == []
        # Without a session the forward refuses before the API sees anything.
        assert httpx.get(served.base + "/api/tasks").status_code == 401
        assert [c[1] for c in api.calls] == ["/v1/tasks"]
        assert api.header_names[0].isdisjoint({SESSION_HEADER, "cookie"})
        assert "authorization" in api.header_names[0]


def test_host_origin_and_session_refusals(fake_dashboard: Dashboard) -> None:
    served, api, home = fake_dashboard
    from tests.dashboard.fake_api import task

    api.add_task(task("t1"))
    with logged_in(served, home) as (client, credential):
        # DNS rebinding: the attacker's name resolves to 127.0.0.1; the Host says who it is.
        rebound = client.get("/", headers={"host": f"evil.example:{served.port}"})
        assert rebound.status_code == 421 and "host_refused" in rebound.text
        assert client.get("/", headers={"host": f"localhost:{served.port}"}).status_code == 200
        assert client.get("/", headers={"host": "127.0.0.1:1"}).status_code == 421
        tunnel = client.get("/", headers={"host": "localhost:1"})  # ssh -L 1:127.0.0.1:PORT
        assert tunnel.status_code == 421
        assert (
            f"open it as 127.0.0.1:{served.port}, [::1]:{served.port}, localhost:{served.port}"
            in tunnel.json()["error"]["message"]
        )
        origin = {"origin": served.base, SESSION_HEADER: credential}
        ok = client.post("/api/tasks/t1/cancel", headers=origin)
        assert ok.status_code == 200
        cross = client.post(
            "/api/tasks/t1/cancel", headers={**origin, "origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and "origin_refused" in cross.text
        no_origin = client.post("/api/tasks/t1/cancel", headers={SESSION_HEADER: credential})
        assert no_origin.status_code == 403
        no_session = client.post("/api/tasks/t1/cancel", headers={"origin": served.base})
        assert no_session.status_code == 401 and "login_required" in no_session.text
        wrong = client.post(
            "/api/tasks/t1/cancel", headers={**origin, SESSION_HEADER: credential[:-2] + "xx"}
        )
        assert wrong.status_code == 401 and "login_required" in wrong.text
        assert [c[:2] for c in api.calls if c[0] == "POST"] == [("POST", "/v1/tasks/t1/cancel")]


def test_every_answer_forbids_inline_scripts_and_framing(fake_dashboard: Dashboard) -> None:
    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, credential):
        for path in ("/", "/tasks/abc", "/new", "/static/js/core.js", "/api/tasks"):
            answer = client.get(path, headers={SESSION_HEADER: credential})
            assert answer.status_code == 200, path
            csp = answer.headers["content-security-policy"]
            assert (
                "script-src 'self'" in csp
                and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
            )
            assert answer.headers["x-frame-options"] == "DENY"
        page = client.get("/").text
        assert "<script>" not in page and "<script src=" in page  # scripts only from files
        refused = httpx.get(served.base + "/", headers={"host": "evil.example"})
        assert "content-security-policy" in refused.headers


def test_a_used_link_stays_used_after_a_restart(tmp_path: Path) -> None:
    from hal9999.dashboard.auth import SessionKeeper, login_token

    home = tmp_path / "home"
    token = login_token(home)
    assert SessionKeeper(home).redeem(token, "127.0.0.1:8080") is not None
    assert SessionKeeper(home).redeem(token, "127.0.0.1:8080") is None  # a new daemon remembers it
    assert SessionKeeper(home).redeem(login_token(home), "127.0.0.1:8080") is not None
    assert SessionKeeper(home).redeem("garbage", "127.0.0.1:8080") is None


def test_logout_revokes_the_session_even_a_copied_credential_and_after_a_restart(
    fake_dashboard: Dashboard,
) -> None:
    from hal9999.dashboard.auth import SessionKeeper

    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, credential):
        headers = {"origin": served.base, SESSION_HEADER: credential}
        assert client.get("/api/tasks", headers=headers).status_code == 200
        assert client.post("/logout", headers=headers).status_code == 200
    with httpx.Client(base_url=served.base) as thief:
        refused = thief.get("/api/tasks", headers={SESSION_HEADER: credential})
        assert refused.status_code == 401 and "login_required" in refused.text
    where = f"127.0.0.1:{served.port}"
    assert SessionKeeper(home).check(credential, where) is None  # a restarted daemon too
    with logged_in(served, home) as (client, fresh):  # a new login is a new session
        assert client.get("/api/tasks", headers={SESSION_HEADER: fresh}).status_code == 200


def test_a_static_file_that_is_not_there_is_a_404_not_a_500(fake_dashboard: Dashboard) -> None:
    """StaticFiles raises HTTPException for a missing file or a path out of its directory;
    with no handler for it, each was "500 Internal Server Error" and a traceback in the log."""
    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, _credential):
        for path in ("/static/js/nope.js", "/static/", "/static/%2e%2e/x", "/static/js"):
            answer = client.get(path)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] == "not_found", answer.text
        assert client.get("/static/js/core.js").status_code == 200


def test_no_answer_grants_another_origin_cors(fake_dashboard: Dashboard) -> None:
    """Another site's page reads nothing through CORS: a preflight (which carries no
    credential) and a request with the session both get no Access-Control-Allow-* header."""
    served, _, home = fake_dashboard
    evil = {"origin": "http://evil.example", "access-control-request-method": "POST",
            "access-control-request-headers": SESSION_HEADER}  # fmt: skip
    with logged_in(served, home) as (client, credential):
        answers = [
            httpx.options(served.base + "/api/tasks/t1/cancel", headers=evil),
            httpx.options(served.base + "/v1/tasks", headers=evil),
            client.get(
                "/api/tasks", headers={"origin": "http://evil.example", SESSION_HEADER: credential}
            ),
            client.get("/", headers={"origin": "http://evil.example"}),
        ]
    for answer in answers:
        assert answer.status_code in (200, 401, 403, 404, 405), answer.status_code
        granted = [k for k in answer.headers if k.lower().startswith("access-control-allow")]
        assert granted == [], (answer.request.url, granted)


def test_the_data_is_never_kept_in_the_browsers_cache(fake_dashboard: Dashboard) -> None:
    # The answers of /api and /files (prompts, logs, the patch of the user's code) had no
    # cache-control: a browser may write them to its disk cache, kept after the session ends.
    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, credential):
        for path in ("/api/tasks", "/files/tasks/abc/patch"):
            answer = client.get(path, headers={SESSION_HEADER: credential})
            assert answer.headers.get_list("cache-control") == ["no-store"], path
