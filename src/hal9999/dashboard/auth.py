"""Dashboard login: one-time links and per-origin session credentials (no cookie).

``hal serve`` and ``hal dashboard`` print a link ``/login?t=TOKEN``. The token is signed with
the home's dashboard key (``<home>/dashboard.key``, random, mode 600), carries a random nonce
and expires after :data:`LOGIN_MAX_AGE_S`; the daemon accepts each nonce once. Redeeming it
hands the page (in the answer's body: never a cookie, a URL or a log) the session's
credential: the session id and the ``Host`` the link was opened on (the page's origin),
signed with the key and timed (:data:`SESSION_MAX_AGE_S`).

Why no cookie: browsers send a host's cookies to every port of it, and let a page on any
port of 127.0.0.1 *set* them. So a server on another port that the browser visits got the
session cookie (and could replay it), and its page could overwrite it with junk and log the
operator out. The page keeps the credential in ``localStorage``, which is per scheme, host
*and port*, and sends it with every request for data (:data:`SESSION_HEADER`, or for the
terminal's websocket a subprotocol :data:`SESSION_PROTOCOL` ``+ credential``). Signing it
with the key (not storing it) makes it outlive a restart and die with the key. Binding it to
the origin: a restarted daemon listens on a new port, while the old port's open pages keep
sending their credential there (and keep it in that origin's storage) for whatever listens
on it next; a credential is accepted only on the host and port it was handed out on.
Only this module knows the key; ``hal dashboard`` signs a link without asking the daemon
(anyone who can read the key can already read the bearer token beside it).

A restarted daemon takes the port it had when it is free, so the open pages carry on. While
no daemon holds that port, any local user can listen on it, and the open pages would send
their credential to it, to replay once hal is back on that origin. So a page sends its
credential only to a server that has proved to hold the key: the login answer also hands it
a verifier (an HMAC of the session id and origin under the key, never sent back), and after
every connection it lost, the page sends ``/hello`` a random challenge and the session id
(no secret) and checks the answer, the challenge's HMAC under that verifier
(:meth:`SessionKeeper.prove`). Another program on the port cannot answer it, nor can a hal
on another port relay it (the verifier is bound to the origin, and the gate refuses a
``Host`` that is not its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999 import fs

if TYPE_CHECKING:
    from itsdangerous import URLSafeTimedSerializer

KEY_NAME = "dashboard.key"
"""The signing key's file name in the hal home."""
SESSION_HEADER = "x-hal-session"
"""The header every request for data or a change carries the session's credential in."""
SESSION_PROTOCOL = "hal-session."
"""Prefix of the websocket subprotocol that carries the credential (a browser's WebSocket
cannot send headers; the server answers with :data:`TERMINAL_PROTOCOL`, never this one)."""
TERMINAL_PROTOCOL = "hal"
"""The subprotocol the terminal's websocket speaks."""
LOGIN_MAX_AGE_S = 15 * 60
"""How long a printed login link stays valid."""
SESSION_MAX_AGE_S = 7 * 24 * 3600
"""How long a session's credential stays valid."""


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


class SessionKeeper:
    """Redeems login tokens (each once) and checks session credentials, for one daemon."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._key_stamp: tuple[int, int, int] | None = None
        """The key file's (inode, mtime, size) the signers below were made from."""
        self._use_key(dashboard_key(home))
        self._used_file = home / "run" / "dashboard-used"
        """Nonces already redeemed, with when: a restarted daemon must not accept them again."""
        self._used = _read_stamped(self._used_file, LOGIN_MAX_AGE_S + 60)
        self._revoked_file = home / "run" / "dashboard-revoked"
        """Sessions logged out, with when: their credentials are signed and would stay valid."""
        self._revoked = _read_stamped(self._revoked_file, SESSION_MAX_AGE_S + 60)
        self._lock = threading.Lock()

    def _use_key(self, key: str) -> None:
        with contextlib.suppress(OSError):
            found = (self._home / KEY_NAME).stat()
            self._key_stamp = (found.st_ino, found.st_mtime_ns, found.st_size)
        self._key = key.encode()
        self._login = _serializer(key, "hal-login")
        # Not "hal-session", the salt of the cookies of hal before: a browser may still hold
        # one, and its signature must not pass for a credential's.
        self._session = _serializer(key, "hal-dashboard-session")

    def _key_current(self, *, create: bool) -> bool:
        """Follow the key file: deleting it logs every browser out at once, and the key a
        later ``hal dashboard`` makes signs the links this daemon accepts. False while there
        is no key (``create``: make one, as a login link's signer does)."""
        path = self._home / KEY_NAME
        try:
            found = path.stat()
        except FileNotFoundError:
            if not create:
                return False
            found = None
        if found is not None and self._key_stamp == (found.st_ino, found.st_mtime_ns,
                                                     found.st_size):  # fmt: skip
            return True
        try:
            key = dashboard_key(self._home)
        except OSError:
            return False
        with self._lock:
            self._use_key(key)
        return True

    def redeem(self, token: str, where: str) -> str | None:
        """The credential of a new session for a valid, unused login token opened on the
        ``Host`` ``where`` (it is valid on that origin only); else None."""
        from itsdangerous import BadSignature

        if not self._key_current(create=True):
            return None
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
            _write_stamped(self._used_file, self._used)
        session = {"sid": secrets.token_hex(16), "host": where.lower()}
        return str(self._session.dumps(session))

    def verifier(self, credential: str) -> str | None:
        """What the page of ``credential`` keeps to check the server: ``<session id>.<its
        verifier>`` (None for a credential that is not valid)."""
        from itsdangerous import BadData

        if not self._key_current(create=False):
            return None
        try:
            data = self._session.loads(credential, max_age=SESSION_MAX_AGE_S)
        except BadData:
            return None
        if not isinstance(data, dict):
            return None
        sid, host = data.get("sid"), data.get("host")
        if not isinstance(sid, str) or not isinstance(host, str):
            return None
        return f"{sid}.{self._verifier(sid, host)}"

    def _verifier(self, sid: str, host: str) -> str:
        return hmac.new(self._key, f"hal-dashboard-verify\n{sid}\n{host.lower()}".encode(),
                        hashlib.sha256).hexdigest()  # fmt: skip

    def prove(self, sid: str, challenge: str, where: str) -> str | None:
        """The answer to a page's ``challenge`` for session ``sid`` on the ``Host``
        ``where``: proof that this server holds the key (None while there is no key)."""
        if not self._key_current(create=False):
            return None
        verifier = self._verifier(sid, where).encode()
        return hmac.new(verifier, challenge.encode(), hashlib.sha256).hexdigest()

    def revoke(self, session: DashboardSession) -> None:
        """Log a session out: its credential is refused from now on (a copy of it included)."""
        now = time.time()
        with self._lock:
            self._revoked = {s: t for s, t in self._revoked.items()
                             if now - t < SESSION_MAX_AGE_S + 60}  # fmt: skip
            self._revoked[session.id] = now
            _write_stamped(self._revoked_file, self._revoked)

    def check(self, credential: str | None, where: str) -> DashboardSession | None:
        """The session a credential proves on the ``Host`` ``where``, or None (its signature
        is compared in constant time)."""
        from itsdangerous import BadData

        if not credential or not self._key_current(create=False):
            return None
        try:
            data = self._session.loads(credential, max_age=SESSION_MAX_AGE_S)
        except BadData:  # a bad or expired signature, or a payload that is not JSON
            return None
        if not isinstance(data, dict) or data.get("host") != where.lower():
            return None
        sid = data.get("sid")
        if not isinstance(sid, str) or sid in self._revoked:
            return None
        return DashboardSession(sid)


def _read_stamped(path: Path, max_age_s: float) -> dict[str, float]:
    """The ``<id> <when>`` lines of ``path`` younger than ``max_age_s`` (none: empty)."""
    found: dict[str, float] = {}
    now = time.time()
    try:
        for line in path.read_text().splitlines():
            key, _, when = line.partition(" ")
            if when.replace(".", "", 1).isdigit() and now - float(when) < max_age_s:
                found[key] = float(when)
    except FileNotFoundError:
        pass
    return found


def _write_stamped(path: Path, entries: dict[str, float]) -> None:
    """Rewrite ``path`` whole, atomically, mode 600 (the lists are short-lived and small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{k} {t:.3f}\n" for k, t in entries.items())
    fs.write_text(path, text, mode=0o600, durable=False)
