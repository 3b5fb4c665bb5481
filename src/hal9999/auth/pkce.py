"""OAuth 2.0 authorization code flow with PKCE (RFC 7636) for a native app (RFC 8252).

The verifier never leaves this process; the authorization server sees only its S256
challenge. The redirect comes back to a one-shot listener on 127.0.0.1, which accepts a
code only with the ``state`` it sent (anything else is refused: a page on the user's
machine can reach the listener too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from hal9999.errors import CredentialsError

_PAGE = (b"<!doctype html><title>hal</title><p>%s You can close this tab and go back to "
         b"the terminal.</p>")  # fmt: skip


@dataclass(frozen=True)
class Pkce:
    """One login's secrets: the verifier (kept) and the state (sent, checked on return)."""

    verifier: str
    state: str

    @classmethod
    def new(cls) -> Pkce:
        """A fresh verifier (43 url-safe characters of 32 random bytes) and state."""
        return cls(verifier=secrets.token_urlsafe(32), state=secrets.token_urlsafe(24))

    @property
    def challenge(self) -> str:
        """``BASE64URL(SHA256(verifier))`` without padding (``S256``)."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def authorize_url(
        self, endpoint: str, *, client_id: str, redirect_uri: str, scopes: str
    ) -> str:
        """Where the user's browser goes to sign in and consent."""
        query = urlencode({
            "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
            "scope": scopes, "state": self.state, "code_challenge": self.challenge,
            "code_challenge_method": "S256",
        })  # fmt: skip
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


class LoopbackReceiver:
    """A one-shot HTTP listener on 127.0.0.1 for the authorization response."""

    def __init__(self, state: str) -> None:
        self.state = state
        self._result: asyncio.Future[str] | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def redirect_uri(self) -> str:
        """The redirect URI to register with the request (``http://127.0.0.1:PORT/callback``)."""
        return f"http://127.0.0.1:{self.port}/callback"

    async def __aenter__(self) -> LoopbackReceiver:
        self._result = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def code(self, timeout_s: float) -> str:
        """The authorization code, once the browser comes back with it."""
        assert self._result is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._result), timeout_s)
        except TimeoutError:
            raise CredentialsError(
                f"no answer from the sign-in page within {timeout_s:g}s",
                hint="run the login again and finish it in the browser",
            ) from None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)).strip():
                pass  # headers: nothing in them matters
        except (TimeoutError, ConnectionError):
            writer.close()
            return
        parts = line.decode("latin-1").split()
        target = urlsplit(parts[1] if len(parts) > 1 else "/")
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        status, message = self._judge(target.path, query)
        body = _PAGE % message.encode()
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: text/html\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (status, len(body), body))  # fmt: skip
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _judge(self, path: str, query: dict[str, str]) -> tuple[int, str]:
        assert self._result is not None
        if path != "/callback" or self._result.done():
            return 404, "Nothing here."
        # A request without the state hal sent is not the answer to hal's request.
        if not secrets.compare_digest(query.get("state", ""), self.state):
            return 400, "This sign-in answer does not belong to the login hal started."
        if "error" in query:
            why = query.get("error_description") or query["error"]
            self._result.set_exception(CredentialsError(
                f"sign-in refused: {query['error']}: {why[:200]}",
                hint="run the login again and approve the access",
            ))  # fmt: skip
            return 200, "Sign-in was refused."
        code = query.get("code", "")
        if not code:
            return 400, "The answer carries no code."
        self._result.set_result(code)
        return 200, "Signed in."
