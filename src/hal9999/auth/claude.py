"""Claude credentials on the host: obtain, store (mode 600), refresh, hand to the gateway.

Two ways in (see docs/auth.md for why): a token made by Claude Code's own
``claude setup-token`` (the vendor's supported route for use outside its interactive CLI;
one year, no refresh), pasted into ``hal auth claude login``; or the OAuth authorization
code flow with PKCE (:mod:`.pkce`) against an OAuth client the user's organisation has from
Anthropic (hal ships no client id of its own). Tokens of the PKCE flow are refreshed before
they expire. The file lives under HAL_HOME (``credentials/claude.json``, mode 600, in a
mode-700 directory); only the LLM gateway on the host reads it, on the upstream hop, so the
token never enters a sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from hal9999 import fs
from hal9999.auth.pkce import LoopbackReceiver, Pkce
from hal9999.errors import CredentialsError

SETUP_TOKEN_PREFIX = "sk-ant-oat01-"
SETUP_TOKEN_DAYS = 365
SETUP_TOKEN_MAX = 4096
"""The longest setup token taken (they are about 100 characters)."""
REFRESH_MARGIN_S = 300.0
"""A token this close to expiry is refreshed before use."""
KEY_REF = "hal-oauth:"
"""The gateway grant holds ``hal-oauth:<file>`` instead of a key; resolved per call."""
OAUTH_BETA = "oauth-2025-04-20"
"""The ``anthropic-beta`` flag Anthropic's API asks of calls made with an OAuth token."""
RELOGIN = "run `hal auth claude login` again"


class OAuthClient(BaseModel):
    """An OAuth client registered with Anthropic (``[auth.claude]`` or HAL_CLAUDE_OAUTH_*)."""

    model_config = ConfigDict(extra="forbid")

    client_id: str
    """The client's id."""
    authorize_url: str = "https://claude.ai/oauth/authorize"
    """The authorization endpoint."""
    token_url: str = "https://console.anthropic.com/v1/oauth/token"
    """The token endpoint (JSON bodies)."""
    scopes: str = "user:inference"
    """What is asked for: inference only, which is all the gateway uses."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OAuthClient | None:
        """The client the environment names, or None."""
        env = dict(os.environ if environ is None else environ)
        client_id = env.get("HAL_CLAUDE_OAUTH_CLIENT_ID", "").strip()
        if not client_id:
            return None
        fields: dict[str, str] = {"client_id": client_id}
        for name in ("authorize_url", "token_url", "scopes"):
            value = env.get(f"HAL_CLAUDE_OAUTH_{name.upper()}", "").strip()
            if value:
                fields[name] = value
        return cls(**fields)


class ClaudeCredentials(BaseModel):
    """What is stored."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["setup-token", "pkce"]
    """How they were obtained."""
    access_token: str
    """The bearer token for the API."""
    refresh_token: str | None = None
    """For the PKCE flow: what gets the next access token (single use; rotated)."""
    expires_at: float
    """When ``access_token`` stops working (seconds since the epoch)."""
    scopes: str = ""
    """What was granted."""
    client: OAuthClient | None = None
    """The OAuth client (for refreshing)."""
    obtained_at: float
    """When hal stored them."""


class CredentialFile:
    """``<HAL_HOME>/credentials/claude.json``: atomic writes, mode 600, refresh under a lock."""

    def __init__(self, home: Path) -> None:
        self.path = home / "credentials" / "claude.json"

    @classmethod
    def from_ref(cls, ref: str) -> CredentialFile:
        """The file a gateway key reference names."""
        found = cls.__new__(cls)
        found.path = Path(ref.removeprefix(KEY_REF))
        return found

    def ref(self) -> str:
        """The reference a gateway grant holds in place of the key."""
        return KEY_REF + str(self.path)

    def load(self) -> ClaudeCredentials | None:
        """The stored credentials, or None."""
        try:
            return ClaudeCredentials.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise CredentialsError(f"cannot read {self.path}: {exc}", hint=RELOGIN) from exc

    def save(self, creds: ClaudeCredentials) -> None:
        """Write atomically, mode 600, in a mode-700 directory."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        fs.write_text(self.path, creds.model_dump_json(indent=1), mode=0o600)

    def delete(self) -> bool:
        """Forget them; whether there were any."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def locked(self) -> Any:
        """An exclusive lock across processes (a refresh token is single use)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(".claude.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def from_setup_token(token: str, *, now: float | None = None) -> ClaudeCredentials:
    """Credentials from a ``claude setup-token`` token (checked for shape, never echoed)."""
    token = token.strip()
    if not token.startswith(SETUP_TOKEN_PREFIX) or len(token) < len(SETUP_TOKEN_PREFIX) + 20:
        raise CredentialsError(
            "that is not a Claude Code token (they start with sk-ant-oat01-)",
            hint="run `claude setup-token` and paste the token it prints",
        )
    # It goes into an HTTP header: a space, line break or non-ASCII letter (a token pasted
    # broken over lines, or with a stray character) was stored and failed every call later.
    if len(token) > SETUP_TOKEN_MAX or not all("!" <= c <= "~" for c in token):
        raise CredentialsError(
            "that is not a Claude Code token (it holds a space, a line break, a character"
            f" that is not ASCII, or is longer than {SETUP_TOKEN_MAX} characters)",
            hint="paste the token `claude setup-token` prints as one line, nothing else",
        )
    now = time.time() if now is None else now
    expires = now + SETUP_TOKEN_DAYS * 86400
    return ClaudeCredentials(method="setup-token", access_token=token, scopes="user:inference",
                             expires_at=expires, obtained_at=now)  # fmt: skip


async def login_pkce(
    client: OAuthClient,
    open_browser: Callable[[str], Awaitable[None]],
    *,
    timeout_s: float = 300.0,
) -> ClaudeCredentials:
    """The authorization code flow with PKCE and a loopback redirect."""
    pkce = Pkce.new()
    async with LoopbackReceiver(pkce.state) as receiver:
        url = pkce.authorize_url(
            client.authorize_url, client_id=client.client_id,
            redirect_uri=receiver.redirect_uri, scopes=client.scopes,
        )  # fmt: skip
        await open_browser(url)
        code = await receiver.code(timeout_s)
        body = {"grant_type": "authorization_code", "code": code, "state": pkce.state,
                "client_id": client.client_id, "redirect_uri": receiver.redirect_uri,
                "code_verifier": pkce.verifier}  # fmt: skip
        return await _token_call(client, body, method="pkce")


async def refresh(creds: ClaudeCredentials) -> ClaudeCredentials:
    """New credentials from the refresh token (which the server rotates)."""
    if creds.refresh_token is None or creds.client is None:
        raise CredentialsError("the stored Claude token has expired and cannot be refreshed",
                               hint=RELOGIN)  # fmt: skip
    body = {"grant_type": "refresh_token", "refresh_token": creds.refresh_token,
            "client_id": creds.client.client_id}  # fmt: skip
    fresh = await _token_call(creds.client, body, method="pkce")
    if fresh.refresh_token is None:  # the server kept the old one
        fresh = fresh.model_copy(update={"refresh_token": creds.refresh_token})
    return fresh


async def current_token(file: CredentialFile, *, margin_s: float = REFRESH_MARGIN_S) -> str:
    """The access token to use now, refreshed first when it is within ``margin_s`` of expiry."""
    creds = file.load()
    if creds is None:
        raise CredentialsError("no Claude credentials stored", hint="run `hal auth claude login`")
    if creds.expires_at - time.time() > margin_s:
        return creds.access_token
    # One lock per event loop and file (an asyncio.Lock belongs to the loop it first ran in).
    lock = _locks.setdefault((id(asyncio.get_running_loop()), str(file.path)), asyncio.Lock())
    async with lock:
        return await asyncio.to_thread(_refresh_locked, file, margin_s)


_locks: dict[tuple[int, str], asyncio.Lock] = {}


def _refresh_locked(file: CredentialFile, margin_s: float) -> str:
    # In a worker thread: the file lock may wait for another hal process's refresh.
    with file.locked():
        creds = file.load()
        if creds is None:
            raise CredentialsError("no Claude credentials stored",
                                   hint="run `hal auth claude login`")  # fmt: skip
        if creds.expires_at - time.time() > margin_s:
            return creds.access_token  # another process refreshed while this one waited
        fresh = asyncio.run(refresh(creds))
        file.save(fresh)
        return fresh.access_token


async def _token_call(
    client: OAuthClient, body: dict[str, str], *, method: Literal["setup-token", "pkce"]
) -> ClaudeCredentials:
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(client.token_url, json=body)
    except httpx.HTTPError as exc:
        raise CredentialsError(f"cannot reach the token endpoint: {type(exc).__name__}",
                               hint="check the network and try again") from exc  # fmt: skip
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code != 200 or not isinstance(data, dict) or "access_token" not in data:
        error = data.get("error", f"HTTP {response.status_code}") if isinstance(data, dict) else ""
        detail = str(data.get("error_description", ""))[:200] if isinstance(data, dict) else ""
        hint = RELOGIN if error in ("invalid_grant", "invalid_client") else "try again later"
        raise CredentialsError(f"the token endpoint refused: {error}"
                               f"{': ' + detail if detail else ''}", hint=hint)  # fmt: skip
    now = time.time()
    try:
        return ClaudeCredentials(
            method=method, access_token=str(data["access_token"]),
            refresh_token=data.get("refresh_token"), scopes=str(data.get("scope", "")),
            expires_at=now + float(data.get("expires_in", 3600)), client=client, obtained_at=now,
        )  # fmt: skip
    except (ValueError, ValidationError) as exc:
        raise CredentialsError(f"the token endpoint answered oddly: {exc}") from exc


def describe(creds: ClaudeCredentials, *, now: float | None = None) -> dict[str, Any]:
    """What ``hal auth claude status`` shows: never the tokens."""
    now = time.time() if now is None else now
    left = creds.expires_at - now
    return {
        "method": creds.method, "scopes": creds.scopes, "expires_at": creds.expires_at,
        "expires_in_s": round(left), "expired": left <= 0,
        "refreshable": creds.refresh_token is not None,
    }  # fmt: skip


AGENT_FILE_WARNING = (
    "warning: this puts your Claude sign-in inside every sandbox that gets the file; the "
    "agent (and anything it runs) can read it and use it elsewhere{refresh}. hal's gateway "
    "keeps it on the host instead: prefer that unless the agent must sign in itself."
)


def agent_credentials(creds: ClaudeCredentials) -> str:
    """Claude Code's own credentials file (``~/.claude/.credentials.json``) for ``creds``;
    only for when the user asks to give the agent its own sign-in."""
    oauth: dict[str, Any] = {
        "accessToken": creds.access_token, "refreshToken": creds.refresh_token,
        "expiresAt": int(creds.expires_at * 1000), "scopes": creds.scopes.split(),
    }  # fmt: skip
    return json.dumps({"claudeAiOauth": oauth}, indent=1) + "\n"


def json_status(creds: ClaudeCredentials | None) -> str:
    """Status as JSON (for ``--json``)."""
    return json.dumps({"signed_in": creds is not None} | (describe(creds) if creds else {}))
