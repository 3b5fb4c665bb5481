"""Bad input to the API's handlers is one ``config_error`` (400) naming the field, never a
500 from an exception deep in a provider."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hal9999.errors import DiskFull
from hal9999.server.api import build_router
from hal9999.server.app import ServerContext
from hal9999.server.routing import ApiRequest, call_handler
from hal9999.server.sse import EventFeed
from hal9999.spec import ArgvCommand


class FakeSandbox:
    """Records what it was asked to run."""

    def __init__(self) -> None:
        self.ran: list[tuple[ArgvCommand, float | None]] = []

    async def exec(self, command: ArgvCommand, timeout: float | None = None) -> Any:
        self.ran.append((command, timeout))
        return SimpleNamespace(exit_code=0, stdout=b"", stderr=b"")


@pytest.fixture
def exec_route() -> tuple[Any, FakeSandbox]:
    sandbox = FakeSandbox()

    async def get(sandbox_id: str) -> FakeSandbox:
        return sandbox

    provider = SimpleNamespace(get=get)
    daemon = SimpleNamespace(tasks=None, pool=None, provider=lambda name: provider)
    ctx = ServerContext(home=Path("/x"), token="t", feed=EventFeed(None, None, lambda t: None))  # type: ignore[arg-type]
    router = build_router(daemon, ctx)  # type: ignore[arg-type]
    [route] = [r for r in router.routes if r.path.endswith("/exec")]
    return route.handler, sandbox


@pytest.mark.parametrize("body", [
    b'{"argv": ["true"], "timeout": "soon"}', b'{"argv": ["true"], "timeout": [1]}',
    b'{"argv": ["true"], "timeout": -1}', b'{"argv": ["true"], "timeout": 1e999}',
    b'{"argv": ["true"], "timeout": true}', b'{"argv": ["a\\u0000b"]}',
    b'{"argv": [{"x": 1}]}',
])  # fmt: skip
async def test_a_bad_exec_body_is_a_400_naming_the_field(
    exec_route: tuple[Any, FakeSandbox], body: bytes
) -> None:
    handler, sandbox = exec_route
    request = ApiRequest("POST", "/v1/sandboxes/fake/s1/exec", {}, {}, body,
                         {"provider": "fake", "id": "s1"})  # fmt: skip
    status, payload = await call_handler(handler, request, None)
    assert status == 400, payload
    assert payload["error"]["code"] == "config_invalid"
    assert ("timeout" if b"timeout" in body else "argv") in payload["error"]["message"]
    assert sandbox.ran == []


async def test_a_good_exec_body_runs(exec_route: tuple[Any, FakeSandbox]) -> None:
    handler, sandbox = exec_route
    request = ApiRequest("POST", "/v1/sandboxes/fake/s1/exec", {}, {},
                         b'{"argv": ["echo", "hi"], "timeout": 5}',
                         {"provider": "fake", "id": "s1"})  # fmt: skip
    status, _ = await call_handler(handler, request, None)
    assert status == 200
    assert sandbox.ran == [(ArgvCommand(argv=("echo", "hi")), 5.0)]


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"{", b'"x"'])
async def test_a_body_that_is_no_json_object_is_refused_by_any_route(body: bytes) -> None:
    # A route that takes no body (POST /v1/pool/drain, /v1/shutdown, a cancel) ignored
    # one that was not JSON and acted; the others refuse such a body with a 400.
    ran: list[ApiRequest] = []

    async def takes_no_body(request: ApiRequest) -> Any:
        ran.append(request)
        return {}

    request = ApiRequest("POST", "/v1/pool/drain", {}, {}, body)
    status, payload = await call_handler(takes_no_body, request, None)
    assert (status, payload["error"]["code"]) == (400, "config_invalid"), payload
    assert "request body" in payload["error"]["message"]
    assert ran == [], "acted on a body it could not read"


@pytest.mark.parametrize(("raised", "status", "code"), [
    (OSError(errno.ENOSPC, "No space left on device", "/home/sessions/x/prompt.txt"), 507,
     "disk_full"),
    (DiskFull("cannot write to the database: the disk holding it is full"), 507, "disk_full"),
    (sqlite3.OperationalError("database is locked"), 503, "home_unusable"),
])  # fmt: skip
async def test_the_machines_state_is_its_own_error_not_a_bug(
    raised: Exception, status: int, code: str
) -> None:
    # A full disk under `hal serve` was 500 `internal` ("this is a bug in hal"), the
    # traceback in a log that had no room for it either; the CLI said the same in one line.
    async def fails(request: ApiRequest) -> Any:
        raise raised

    request = ApiRequest("POST", "/v1/tasks", {}, {}, b"{}")
    answered, payload = await call_handler(fails, request, None)
    assert (answered, payload["error"]["code"]) == (status, code), payload


async def test_a_number_too_long_to_read_is_a_400_without_pythons_advice() -> None:
    # Python's message ended "use sys.set_int_max_str_digits() to increase the limit",
    # advice for the daemon's code, not for the client.
    async def create(request: ApiRequest) -> Any:
        return request.json()

    body = b'{"priority": ' + b"9" * 5000 + b"}"
    request = ApiRequest("POST", "/v1/tasks", {}, {}, body)
    status, payload = await call_handler(create, request, None)
    assert status == 400
    assert payload["error"]["message"] == (
        "the request body holds a number too long to read (more than 4300 digits)"
    )
