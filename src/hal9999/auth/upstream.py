"""The gateway's credential source for a stored Claude sign-in (``hal auth claude login``).

A task's grant holds a reference (``hal-oauth:<file>``) instead of a key when the host has
no ``ANTHROPIC_API_KEY`` but a stored sign-in; the gateway resolves it on every upstream
call, so a token refreshed mid-task is used at once, and the token itself is never in a
grant, the sandbox, argv or the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hal9999.auth.claude import KEY_REF, OAUTH_BETA, CredentialFile, current_token

CLAUDE_AGENTS = frozenset({"claude"})
"""Agents a Claude sign-in may serve: Claude Code only (the vendor's terms tie these
tokens to Claude Code)."""


def stored_key(home: Path, agent: str, key_env: str) -> str | None:
    """The reference to a stored sign-in usable for ``agent``'s upstream, or None."""
    if agent not in CLAUDE_AGENTS or key_env != "ANTHROPIC_API_KEY":
        return None
    file = CredentialFile(home)
    return file.ref() if file.path.exists() else None


async def upstream_key(key: str) -> str:
    """The key to send upstream: ``key`` itself, or the stored token it refers to
    (refreshed first when near expiry; :class:`CredentialsError` when that fails)."""
    if not key.startswith(KEY_REF):
        return key
    return await current_token(CredentialFile.from_ref(key))


def oauth_headers(headers: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
    """For a stored sign-in: the token goes as ``authorization: Bearer`` (never as
    ``x-api-key``) with the OAuth beta flag; other keys' headers are returned as they are."""
    if not key.startswith(KEY_REF):
        return headers
    out: list[tuple[str, str]] = []
    token = None
    betas: list[str] = []
    for name, value in headers:
        if name == "x-api-key":
            token = value
        elif name == "authorization":
            token = value.removeprefix("Bearer ").removeprefix("bearer ")
        elif name == "anthropic-beta":
            betas.extend(b.strip() for b in value.split(",") if b.strip())
        else:
            out.append((name, value))
    if token is not None:
        out.append(("authorization", f"Bearer {token}"))
    if OAUTH_BETA not in betas:
        betas.append(OAUTH_BETA)
    out.append(("anthropic-beta", ",".join(betas)))
    return out


def has_key(secrets: Mapping[str, str], environ: Mapping[str, str], key_env: str) -> bool:
    """Whether a real key is given (then it wins over a stored sign-in)."""
    return bool(secrets.get(key_env) or environ.get(key_env))
