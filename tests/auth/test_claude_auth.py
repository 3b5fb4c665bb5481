"""``hal auth claude``: PKCE sign-in, refresh before expiry and the stored file, against a
fake OAuth server (tests/fakes/oauth_server.py); the gateway uses the stored sign-in on
the upstream hop only."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.fakes.oauth_server import CLIENT_ID, FakeOAuth
from tests.gateway.upstream import StormUpstream

from hal9999.agents.registry import resolve_agent
from hal9999.auth.claude import (
    ClaudeCredentials,
    CredentialFile,
    OAuthClient,
    current_token,
    from_setup_token,
    login_pkce,
)
from hal9999.config import HalConfig
from hal9999.errors import CredentialsError
from hal9999.gateway.channel import new_token
from hal9999.gateway.proxy import Gateway
from hal9999.gateway.tasks import route_for
from hal9999.store import Store


@pytest.fixture
def oauth() -> Iterator[FakeOAuth]:
    with FakeOAuth() as server:
        yield server


def client_of(server: FakeOAuth) -> OAuthClient:
    return OAuthClient(client_id=CLIENT_ID, authorize_url=f"{server.url}/oauth/authorize",
                       token_url=f"{server.url}/v1/oauth/token")  # fmt: skip


async def browser(url: str) -> None:
    """The user's browser: follows the authorization server's redirect to hal's listener."""
    async with httpx.AsyncClient(follow_redirects=True, timeout=10) as http:
        await http.get(url)


async def signed_in(server: FakeOAuth, home: Path) -> CredentialFile:
    file = CredentialFile(home)
    file.save(await login_pkce(client_of(server), browser, timeout_s=10))
    return file


async def test_pkce_login_stores_the_tokens_privately(oauth: FakeOAuth, tmp_path: Path) -> None:
    file = await signed_in(oauth, tmp_path)
    creds = file.load()
    assert creds is not None and creds.method == "pkce"
    assert creds.access_token == oauth.access_tokens[-1] and creds.refresh_token
    # The verifier went only to the token endpoint, and matched the challenge (else 400).
    [call] = oauth.token_calls
    assert call["grant_type"] == "authorization_code" and len(call["code_verifier"]) >= 43
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.path.parent.stat().st_mode) == 0o700


async def test_a_callback_without_hals_state_is_refused(oauth: FakeOAuth, tmp_path: Path) -> None:
    async def hostile_then_real(url: str) -> None:
        redirect = httpx.URL(url).params["redirect_uri"]
        async with httpx.AsyncClient(timeout=10) as http:
            forged = await http.get(redirect, params={"code": "attacker", "state": "guess"})
        assert forged.status_code == 400
        await browser(url)

    creds = await login_pkce(client_of(oauth), hostile_then_real, timeout_s=10)
    assert creds.access_token == oauth.access_tokens[-1]
    assert all(c["code"] != "attacker" for c in oauth.token_calls)


async def test_a_refused_sign_in_is_one_clear_error(oauth: FakeOAuth, tmp_path: Path) -> None:
    oauth.deny = True
    with pytest.raises(CredentialsError) as info:
        await login_pkce(client_of(oauth), browser, timeout_s=10)
    assert "access_denied" in str(info.value) and oauth.token_calls == []


async def test_a_token_near_expiry_is_refreshed_before_use(
    oauth: FakeOAuth, tmp_path: Path
) -> None:
    oauth.expires_in = 60  # inside the 5-minute margin
    file = await signed_in(oauth, tmp_path)
    first = file.load()
    assert first is not None
    oauth.expires_in = 3600
    token = await current_token(file)
    fresh = file.load()
    assert fresh is not None and token == fresh.access_token != first.access_token
    assert fresh.refresh_token != first.refresh_token  # rotated
    assert [c["grant_type"] for c in oauth.token_calls] == ["authorization_code", "refresh_token"]
    assert await current_token(file) == token and len(oauth.token_calls) == 2


async def test_concurrent_users_refresh_once(oauth: FakeOAuth, tmp_path: Path) -> None:
    oauth.expires_in = 1
    file = await signed_in(oauth, tmp_path)
    oauth.expires_in = 3600
    tokens = await asyncio.gather(*(current_token(file) for _ in range(5)))
    assert len(set(tokens)) == 1
    assert [c["grant_type"] for c in oauth.token_calls].count("refresh_token") == 1


async def test_a_refused_refresh_says_to_log_in_again(oauth: FakeOAuth, tmp_path: Path) -> None:
    oauth.expires_in = 1
    file = await signed_in(oauth, tmp_path)
    oauth.fail_next = 1
    with pytest.raises(CredentialsError) as info:
        await current_token(file)
    assert "temporarily_unavailable" in str(info.value)
    oauth.refresh_tokens.clear()  # revoked on the server
    with pytest.raises(CredentialsError) as info:
        await current_token(file)
    assert "invalid_grant" in str(info.value) and "hal auth claude login" in (info.value.hint or "")


def test_a_setup_token_is_checked_and_never_echoed() -> None:
    with pytest.raises(CredentialsError) as info:
        from_setup_token("sk-ant-api03-secretsecretsecretsecret")
    assert "secretsecret" not in info.value.one_line()
    creds = from_setup_token("  sk-ant-oat01-" + "x" * 40 + "\n", now=1000.0)
    assert creds.refresh_token is None and creds.expires_at == 1000.0 + 365 * 86400


@pytest.mark.parametrize(
    "tail", ["x" * 20 + "\n" + "y" * 20, "x" * 20 + " y", "é" * 40, "x" * 30 + "\x00", "x" * 5000]
)
def test_a_setup_token_no_http_header_can_carry_is_refused(tail: str) -> None:
    """A token pasted over two lines, or with a non-ASCII letter, was stored and made every
    later model call fail."""
    with pytest.raises(CredentialsError) as info:
        from_setup_token("sk-ant-oat01-" + tail)
    assert "not a Claude Code token" in info.value.one_line() and tail not in info.value.one_line()


def test_cli_login_status_logout(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env |= {"HAL_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    token = "sk-ant-oat01-" + "s3cr3t" * 8

    def hal(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hal9999", "auth", "claude", *args],
                              input=stdin, env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    done = hal("login", "--token-stdin", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    status = hal("status", "--json")
    info = json.loads(status.stdout)
    assert info["signed_in"] and info["method"] == "setup-token" and not info["expired"]
    for out in (done, status, hal("status")):
        assert token not in out.stdout + out.stderr
    assert hal("logout").stdout.strip() == "signed out"
    assert json.loads(hal("status", "--json").stdout)["signed_in"] is False
    refused = hal("login", "--method", "pkce")
    assert refused.returncode == 8 and "Traceback" not in refused.stderr
    assert "HAL_CLAUDE_OAUTH_CLIENT_ID" in refused.stderr


def test_the_route_holds_a_reference_never_the_token(tmp_path: Path) -> None:
    token = "sk-ant-oat01-" + "t" * 40
    CredentialFile(tmp_path).save(from_setup_token(token))
    config = HalConfig(home=tmp_path)
    claude = resolve_agent("claude", config.agent_settings("claude"))
    route = route_for(config, claude, "t1", {}, {})
    assert route is not None and route.grant.key.startswith("hal-oauth:")
    assert token not in json.dumps(route.secrets()) + route.grant.key
    # Another agent is not served by a Claude Code sign-in.
    codex = resolve_agent("codex", config.agent_settings("codex"))
    assert route_for(config, codex, "t1", {}, {}) is None


async def test_the_gateway_sends_the_fresh_token_as_bearer_upstream(
    oauth: FakeOAuth, tmp_path: Path, sock_dir: Path
) -> None:
    oauth.expires_in = 1
    file = await signed_in(oauth, tmp_path / "home")
    oauth.expires_in = 3600
    with StormUpstream() as upstream:
        store = Store.open(tmp_path / "home")
        gw = Gateway(store)
        sock = str(sock_dir / "llm.sock")
        server = await asyncio.start_unix_server(gw.serve_connection, path=sock)
        from hal9999.gateway.channel import Grant

        grant = Grant(task_id="t1", token=new_token(), upstream=upstream.url, key=file.ref())
        gw.register(grant)
        try:
            async with (
                server,
                httpx.AsyncClient(
                    transport=httpx.AsyncHTTPTransport(uds=sock), base_url="http://gw", timeout=30
                ) as http,
            ):
                answer = await http.post(
                    "/v1/messages", headers={"x-api-key": grant.token},
                    json={"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []},
                )  # fmt: skip
        finally:
            await gw.drain()
            await gw.aclose()
            store.close()
    assert answer.status_code == 200
    [seen] = upstream.seen
    fresh = file.load()
    assert isinstance(fresh, ClaudeCredentials)
    assert seen.headers["authorization"] == f"Bearer {fresh.access_token}"
    assert "x-api-key" not in seen.headers and "oauth-2025-04-20" in seen.headers["anthropic-beta"]
    assert fresh.expires_at > time.time() + 600  # refreshed on the way


def test_the_agent_file_is_written_only_with_consent_and_a_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env |= {"HAL_HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    token = "sk-ant-oat01-" + "a9" * 24
    CredentialFile(tmp_path / "home").save(from_setup_token(token))
    target = tmp_path / "agent-creds.json"

    def hal(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hal9999", "auth", "claude", *args],
                              env=env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)  # fmt: skip

    refused = hal("agent-file", str(target))
    assert refused.returncode == 2 and "--yes" in refused.stderr and not target.exists()
    assert "can read it" in refused.stderr
    done = hal("agent-file", str(target), "--yes")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    oauth = json.loads(target.read_text())["claudeAiOauth"]
    assert oauth["accessToken"] == token and oauth["expiresAt"] > time.time() * 1000
    assert token not in done.stdout + done.stderr
    assert "~/.claude/.credentials.json" in done.stderr
