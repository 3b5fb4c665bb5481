"""The dashboard's gate over plain HTTP: login link, cookie, proof, Host, Origin, headers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tests.dashboard.conftest import Served, proof_in

from hal9999.dashboard.auth import COOKIE, PROOF_HEADER, login_url

Dashboard = tuple[Served, Any, Path]


@contextlib.contextmanager
def logged_in(served: Served, home: Path) -> Iterator[tuple[httpx.Client, str]]:
    """A client holding a session cookie, and the proof its login answer handed the page."""
    with httpx.Client(base_url=served.base, follow_redirects=False) as client:
        answer = client.get(login_url(home, served.base))
        assert answer.status_code == 200
        yield client, proof_in(answer.text)


def test_login_link_works_once_and_sets_a_strict_http_only_cookie(
    fake_dashboard: Dashboard,
) -> None:
    served, _, home = fake_dashboard
    link = login_url(home, served.base)
    with httpx.Client() as client:
        assert client.get(served.base + "/").status_code == 401
        first = client.get(link)
        assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
        cookie = first.headers["set-cookie"].lower()
        assert f"{COOKIE}=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        # The proof is in the login answer's body only: not in the cookie, not in a page.
        proof = proof_in(first.text)
        assert proof not in cookie
        shell = client.get(served.base + "/")
        assert shell.status_code == 200
        assert "hal-proof" not in shell.text and proof not in shell.text
    with httpx.Client() as other:
        assert other.get(link).status_code == 403  # used once already
        assert other.get(served.base + "/").status_code == 401
        forged = other.get(served.base + "/login?t=" + link.split("t=")[1][:-2] + "xx")
        assert forged.status_code == 403


def test_api_forwarding_adds_the_bearer_and_never_passes_the_cookie(
    fake_dashboard: Dashboard,
) -> None:
    served, api, home = fake_dashboard
    with logged_in(served, home) as (client, proof):
        assert client.get("/api/tasks", headers={PROOF_HEADER: proof}).json() == []
        # Without a session the forward refuses before the API sees anything.
        assert httpx.get(served.base + "/api/tasks").status_code == 401
        assert [c[1] for c in api.calls] == ["/v1/tasks"]


def test_host_origin_and_proof_refusals(fake_dashboard: Dashboard) -> None:
    served, api, home = fake_dashboard
    from tests.dashboard.fake_api import task

    api.add_task(task("t1"))
    with logged_in(served, home) as (client, proof):
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
        origin = {"origin": served.base, PROOF_HEADER: proof}
        ok = client.post("/api/tasks/t1/cancel", headers=origin)
        assert ok.status_code == 200
        cross = client.post(
            "/api/tasks/t1/cancel", headers={**origin, "origin": "http://evil.example"}
        )
        assert cross.status_code == 403 and "origin_refused" in cross.text
        no_origin = client.post("/api/tasks/t1/cancel", headers={PROOF_HEADER: proof})
        assert no_origin.status_code == 403
        no_proof = client.post("/api/tasks/t1/cancel", headers={"origin": served.base})
        assert no_proof.status_code == 401 and "proof_required" in no_proof.text
        wrong = client.post("/api/tasks/t1/cancel", headers={**origin, PROOF_HEADER: "0" * 64})
        assert wrong.status_code == 401 and "proof_required" in wrong.text
        assert [c[:2] for c in api.calls if c[0] == "POST"] == [("POST", "/v1/tasks/t1/cancel")]


def test_every_answer_forbids_inline_scripts_and_framing(fake_dashboard: Dashboard) -> None:
    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, proof):
        for path in ("/", "/tasks/abc", "/new", "/static/js/core.js", "/api/tasks"):
            answer = client.get(path, headers={PROOF_HEADER: proof})
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


def test_logout_revokes_the_session_even_a_copied_cookie_and_after_a_restart(
    fake_dashboard: Dashboard,
) -> None:
    from hal9999.dashboard.auth import SessionKeeper

    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, proof):
        stolen = client.cookies[COOKIE]
        headers = {"origin": served.base, PROOF_HEADER: proof}
        assert client.post("/logout", headers=headers).status_code == 200
    with httpx.Client(base_url=served.base, cookies={COOKIE: stolen}) as thief:
        assert thief.get("/").status_code == 401
        refused = thief.get("/api/tasks", headers={PROOF_HEADER: proof})
        assert refused.status_code == 401 and "login_required" in refused.text
    assert SessionKeeper(home).check(stolen) is None  # a restarted daemon refuses it too
    with logged_in(served, home) as (client, _):  # a new login is a new session
        assert client.get("/").status_code == 200


def test_a_static_file_that_is_not_there_is_a_404_not_a_500(fake_dashboard: Dashboard) -> None:
    """StaticFiles raises HTTPException for a missing file or a path out of its directory;
    with no handler for it, each was "500 Internal Server Error" and a traceback in the log."""
    served, _, home = fake_dashboard
    with logged_in(served, home) as (client, _proof):
        for path in ("/static/js/nope.js", "/static/", "/static/%2e%2e/x", "/static/js"):
            answer = client.get(path)
            assert answer.status_code == 404, (path, answer.text)
            assert answer.json()["error"]["code"] == "not_found", answer.text
        assert client.get("/static/js/core.js").status_code == 200


def test_no_answer_grants_another_origin_cors(fake_dashboard: Dashboard) -> None:
    """Another site's page reads nothing through CORS: a preflight (which carries no cookie)
    and a request with the session both get no Access-Control-Allow-* header."""
    served, _, home = fake_dashboard
    evil = {"origin": "http://evil.example", "access-control-request-method": "POST",
            "access-control-request-headers": PROOF_HEADER}  # fmt: skip
    with logged_in(served, home) as (client, proof):
        answers = [
            httpx.options(served.base + "/api/tasks/t1/cancel", headers=evil),
            httpx.options(served.base + "/v1/tasks", headers=evil),
            client.get(
                "/api/tasks", headers={"origin": "http://evil.example", PROOF_HEADER: proof}
            ),
            client.get("/", headers={"origin": "http://evil.example"}),
        ]
    for answer in answers:
        assert answer.status_code in (200, 401, 403, 404, 405), answer.status_code
        granted = [k for k in answer.headers if k.lower().startswith("access-control-allow")]
        assert granted == [], (answer.request.url, granted)
