"""What every in-process fake of a cloud vendor's HTTP API shares (``do_api``, ``morph_api``).

:class:`FakeVendorApi` serves JSON on loopback from a thread (a context manager; ``url``
once made), checks the bearer token, records every call as a :class:`Seen`, and injects the
faults the providers must survive: :meth:`~FakeVendorApi.fail` (any status, ``times`` times,
with ``retry-after``), ``slow_s`` (every answer late), ``stuck`` (machines never finish
booting, read by the vendor's boot code) and :meth:`~FakeVendorApi.vanish` (a machine
deleted behind hal's back). ``check``, when set, sees every call after it is answered (a
schema validation, say); what it raises is kept in ``problems``, never lost in the server's
thread.

A vendor's fake says only what is its own: its token, its routes and JSON shapes
(``_route``), its error bodies (``error``), the headers on every answer, its machines
(``_registry``), and how time moves them (``_advance``) or its rate limit refuses a call
(``_admit``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

SHUTDOWN_POLL_S = 0.02
"""How often the server's loop looks for a shutdown: ``serve_forever``'s default, 0.5 s,
made every fake's exit (one a test) wait ~0.4 s."""

Answer = tuple[int, Any, dict[str, str]]
"""One call's answer: status, JSON body (None for none) and extra headers."""


@dataclass
class Fault:
    """An answer given instead of the real one, ``times`` times, to matching calls."""

    status: int
    method: str | None = None
    path_prefix: str = "/"
    times: int = 1
    retry_after: int | None = None


@dataclass
class Seen:
    """One call the fake answered: what came, and what went back."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int
    answer: Any
    headers: dict[str, str]
    at: float


class Machine(Protocol):
    """What the shared code reads of a vendor's machine."""

    @property
    def id(self) -> Any:
        """The vendor's id of the machine."""


MachineT = TypeVar("MachineT", bound=Machine)


class FakeVendorApi(Generic[MachineT]):
    """A vendor's fake API server on loopback; use as a context manager."""

    token: ClassVar[str]
    """The one bearer token the fake accepts."""
    fault_prefix: ClassVar[str] = "/"
    """The paths an injected fault matches unless told otherwise."""

    def __init__(self, *, boot_s: float) -> None:
        self.boot_s = boot_s
        self.faults: list[Fault] = []
        self.slow_s = 0.0
        self.stuck = False
        self.seen: list[Seen] = []
        self.check: Callable[[Seen], None] | None = None
        self.problems: list[str] = []
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SHUTDOWN_POLL_S,), daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self.lock:
            self._registry().clear()

    # -- what a vendor says -----------------------------------------------------------------

    def _registry(self) -> dict[Any, MachineT]:
        """The machines that exist, by id (the caller holds the lock)."""
        raise NotImplementedError

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Answer:
        """Answer one authorised call (the caller holds the lock)."""
        raise NotImplementedError

    def error(self, status: int) -> Any:
        """The vendor's error body for ``status`` (faults and a wrong token get it)."""
        raise NotImplementedError

    def answer_headers(self) -> dict[str, str]:
        """The headers on every answer (the caller holds the lock)."""
        return {"content-type": "application/json"}

    def _advance(self) -> None:
        """Move the machines along with the clock (the caller holds the lock)."""

    def _admit(self) -> Answer | None:
        """A refusal (a spent rate limit) of an authorised call, or None to answer it."""
        return None

    # -- faults ---------------------------------------------------------------------------

    def fail(self, status: int, **kw: Any) -> None:
        """Answer the next matching call(s) with ``status`` (see :class:`Fault`)."""
        with self.lock:
            self.faults.append(Fault(status, **{"path_prefix": self.fault_prefix} | kw))

    def vanish(self, machine_id: Any) -> None:
        """The machine disappears (deleted behind hal's back)."""
        with self.lock:
            self._registry().pop(machine_id, None)

    def live(self) -> list[MachineT]:
        """The machines that exist now."""
        with self.lock:
            self._advance()
            return list(self._registry().values())

    def calls(self, method: str, path: str | None = None) -> list[Seen]:
        """The calls seen with ``method`` (and exactly ``path``, when given)."""
        with self.lock:
            return [s for s in self.seen if s.method == method and path in (None, s.path)]

    # -- serving --------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
        body: Any,
    ) -> Answer:  # fmt: skip
        """One call: an injected fault, a refusal, or the vendor's answer."""
        if self.slow_s:
            time.sleep(self.slow_s)
        with self.lock:
            for fault in self.faults:
                if (fault.times > 0 and fault.method in (None, method)
                        and path.startswith(fault.path_prefix)):  # fmt: skip
                    fault.times -= 1
                    extra = {"retry-after": str(fault.retry_after)} if fault.retry_after else {}
                    return fault.status, self.error(fault.status), extra
            if headers.get("authorization") != f"Bearer {self.token}":
                return 401, self.error(401), {}
            self._advance()
            refused = self._admit()
            if refused is not None:
                return refused
            return self._route(method, path, query, body)

    def record(self, seen: Seen) -> None:
        """Keep one answered call, and run ``check`` on it."""
        with self.lock:
            self.seen.append(seen)
            check = self.check
        if check is None:
            return
        try:
            check(seen)
        except Exception as exc:  # the server's thread would only print it
            with self.lock:
                self.problems.append(f"{seen.method} {seen.path} -> {seen.status}: {exc}")


def _handler(fake: FakeVendorApi[Any]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            query = parse_qs(split.query)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer, extra = fake.handle(self.command, split.path, query, headers, body)
            with fake.lock:
                sent = fake.answer_headers() | extra
            fake.record(Seen(self.command, split.path, query, body, status, answer, sent,
                             time.time()))  # fmt: skip
            data = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            for name, value in sent.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

    return Handler
