"""The client side of the daemon API, over its unix socket (what the CLI uses)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hal9999.errors import HalError
from hal9999.server.runtime import DaemonFiles, DaemonInfo


class DaemonUnavailable(HalError):
    """The daemon went away mid-request."""

    code = "daemon_unavailable"


def error_class(code: str) -> type[HalError]:
    """The :class:`HalError` subclass with this code (HalError itself when unknown)."""
    pending: list[type[HalError]] = [HalError]
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls
        pending.extend(cls.__subclasses__())
    return HalError


class DaemonClient:
    """Calls the daemon's API; errors come back as the :class:`HalError` they were."""

    def __init__(self, info: DaemonInfo, token: str) -> None:
        self.info = info
        self._token = token

    @classmethod
    def find(cls, home: Path) -> DaemonClient | None:
        """A client for the daemon of ``home``, when one is running."""
        files = DaemonFiles(home)
        info = files.running()
        token = files.read_token()
        if info is None or token is None:
            return None
        return cls(info, token)

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """One request; returns the decoded JSON response."""
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        data = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: hal\r\nAuthorization: Bearer {self._token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            reader, writer = await asyncio.open_unix_connection(self.info.socket)
        except OSError as exc:
            raise DaemonUnavailable(
                f"cannot reach the hal daemon at {self.info.socket}: {exc.strerror or exc}",
                hint="see `hal status`; restart it with `hal serve --detach`",
            ) from exc
        try:
            writer.write(head.encode() + data)
            await writer.drain()
            status, payload = await _read_response(reader)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            raise DaemonUnavailable(
                f"the hal daemon closed the connection: {exc}", hint="see `hal status`"
            ) from exc
        finally:
            writer.close()
        if status >= 400:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            cls = error_class(str(error.get("code", "hal_error")))
            raise cls(str(error.get("message", f"daemon error {status}")), hint=error.get("hint"))
        return payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2:
        raise ValueError("no HTTP status line")
    status = int(parts[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return status, json.loads(body) if body else None
