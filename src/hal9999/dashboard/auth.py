"""Dashboard login: one-time links, signed session cookies and CSRF tokens.

``hal serve`` and ``hal dashboard`` print a link ``/login?t=TOKEN``. The token is signed with
the home's dashboard key (``<home>/dashboard.key``, random, mode 600), carries a random nonce
and expires after :data:`LOGIN_MAX_AGE_S`; the daemon accepts each nonce once. Redeeming it sets
a signed, HTTP-only, ``SameSite=Strict`` session cookie that holds the session's CSRF token.
Only this module knows the key; ``hal dashboard`` signs a link without asking the daemon
(anyone who can read the key can already read the bearer token beside it).
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from itsdangerous import URLSafeTimedSerializer

KEY_NAME = "dashboard.key"
"""The signing key's file name in the hal home."""
COOKIE = "hal_session"
"""The session cookie's name."""
CSRF_HEADER = "x-csrf-token"
"""The header every state-changing request carries the session's CSRF token in."""
LOGIN_MAX_AGE_S = 15 * 60
"""How long a printed login link stays valid."""
SESSION_MAX_AGE_S = 7 * 24 * 3600
"""How long a session cookie stays valid."""


def dashboard_key(home: Path) -> str:
    """The home's signing key, created (random, mode 600, atomically) when missing."""
    path = home / KEY_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{KEY_NAME}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    try:
        os.link(tmp, path)  # fails when another process made it first: use theirs
    except FileExistsError:
        key = path.read_text().strip()
    finally:
        tmp.unlink()
    return key


def _serializer(key: str, salt: str) -> URLSafeTimedSerializer:
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(key, salt=salt)


def login_token(home: Path) -> str:
    """A fresh one-time login token for the dashboard of ``home``."""
    return str(_serializer(dashboard_key(home), "hal-login").dumps({"n": secrets.token_hex(16)}))


def login_url(home: Path, base_url: str) -> str:
    """The link that logs a browser in (``base_url`` like ``http://127.0.0.1:8080``)."""
    return f"{base_url.rstrip('/')}/login?t={login_token(home)}"


@dataclass(frozen=True)
class DashboardSession:
    """A logged-in browser."""

    id: str
    csrf: str


class SessionKeeper:
    """Redeems login tokens (each once) and checks session cookies, for one daemon."""

    def __init__(self, home: Path) -> None:
        key = dashboard_key(home)
        self._login = _serializer(key, "hal-login")
        self._session = _serializer(key, "hal-session")
        self._used_file = home / "run" / "dashboard-used"
        """Nonces already redeemed, with when: a restarted daemon must not accept them again."""
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        now = time.time()
        try:
            for line in self._used_file.read_text().splitlines():
                nonce, _, when = line.partition(" ")
                if when.replace(".", "", 1).isdigit() and now - float(when) < LOGIN_MAX_AGE_S + 60:
                    self._used[nonce] = float(when)
        except FileNotFoundError:
            pass

    def redeem(self, token: str) -> str | None:
        """The cookie value of a new session for a valid, unused login token; else None."""
        from itsdangerous import BadSignature

        try:
            data = self._login.loads(token, max_age=LOGIN_MAX_AGE_S)
        except BadSignature:  # also expired ones (SignatureExpired is a subclass)
            return None
        nonce = data.get("n") if isinstance(data, dict) else None
        if not isinstance(nonce, str):
            return None
        now = time.time()
        with self._lock:
            # Forget nonces whose tokens have expired anyway: the set stays small.
            self._used = {n: t for n, t in self._used.items() if now - t < LOGIN_MAX_AGE_S + 60}
            if nonce in self._used:
                return None
            self._used[nonce] = now
            self._remember()
        session = {"sid": secrets.token_hex(16), "csrf": secrets.token_urlsafe(24)}
        return str(self._session.dumps(session))

    def _remember(self) -> None:
        """Write the used nonces (rewritten whole: the list is short-lived and small)."""
        self._used_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._used_file.with_name(f".dashboard-used.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.writelines(f"{n} {t:.3f}\n" for n, t in self._used.items())
        os.replace(tmp, self._used_file)

    def check(self, cookie: str | None) -> DashboardSession | None:
        """The session a cookie value proves, or None."""
        from itsdangerous import BadSignature

        if not cookie:
            return None
        try:
            data = self._session.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        sid, csrf = data.get("sid"), data.get("csrf")
        if not isinstance(sid, str) or not isinstance(csrf, str):
            return None
        return DashboardSession(sid, csrf)
