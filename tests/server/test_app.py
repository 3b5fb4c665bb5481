"""The app around the API: the CLI stays free of the server stack, the OpenAPI document covers
every route and is valid OpenAPI 3.x, the unix socket is private, unknown routes answer JSON."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from openapi_spec_validator import validate
from tests.support.server import daemon_router

from hal9999.server.app import ServerContext, build_app
from hal9999.server.client import DaemonClient
from hal9999.server.listen import HalServer
from hal9999.server.openapi import openapi_schema
from hal9999.server.runtime import DaemonInfo

HEAVY = ("starlette", "uvicorn", "h11", "mcp", "anyio")


def test_the_cli_does_not_import_the_server_stack() -> None:
    code = (
        "import sys, hal9999.cli.main, hal9999.cli.serve, hal9999.cli.task\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_route_is_in_a_valid_openapi_document() -> None:
    router = daemon_router()
    schema = openapi_schema(router)
    validate(schema)  # raises on an invalid OpenAPI 3.1 document
    described = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    served = {(r.method, r.path) for r in router.routes}
    assert served <= described
    assert ("GET", "/v1/events/stream") in served and ("GET", "/v1/openapi.json") in described
    assert ("GET", "/v1/tasks/{id}/events/stream") in served
    create = schema["paths"]["/v1/tasks"]["post"]
    assert "prompt" in json.dumps(create["requestBody"])  # the run body's own fields


async def test_openapi_is_served_behind_the_token_and_the_socket_is_private(
    tmp_path: Path,
    sock_dir: Path,
) -> None:
    router = daemon_router()
    server = HalServer(build_app(ServerContext(home=tmp_path, token="tok"), router))
    sock = str(sock_dir / "api.sock")
    await server.listen_unix(sock)
    try:
        assert stat.S_IMODE(Path(sock).stat().st_mode) == 0o600
        client = DaemonClient(DaemonInfo(1, sock, 0, 0.0), "tok")
        served = await client.call("GET", "/v1/openapi.json")
        assert served == openapi_schema(router)
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(b"GET /v1/openapi.json HTTP/1.1\r\nHost: hal\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 3)).startswith(b"HTTP/1.1 401")
        writer.close()
        for method, path, status in (("GET", "/v1/nope", 404), ("PUT", "/v1/tasks", 405)):
            try:
                await client.call(method, path)
            except Exception as exc:  # the client maps the JSON error back
                assert path in str(exc), (status, exc)
            else:
                raise AssertionError(f"{method} {path} answered 200")
        # A trailing slash is no route (the fuzz test met a 307 to /v1/tasks once).
        reader, writer = await asyncio.open_unix_connection(sock)
        writer.write(b"GET /v1/tasks/ HTTP/1.1\r\nHost: hal\r\nAuthorization: Bearer tok\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert answer.startswith(b"HTTP/1.1 404"), answer
        writer.close()
    finally:
        await server.close()


async def test_the_unix_socket_serves_the_api_alone(tmp_path: Path, sock_dir: Path) -> None:
    router = daemon_router()
    ctx = ServerContext(home=tmp_path, token="tok")
    server = HalServer(build_app(ctx, router))  # TCP: API + dashboard
    sock = str(sock_dir / "api.sock")
    await server.listen_unix(sock, build_app(ctx, router, dashboard=False))
    port = await server.listen_tcp()
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port
    try:
        answers = []
        for connect in (lambda: asyncio.open_unix_connection(sock),
                        lambda: asyncio.open_connection("127.0.0.1", port)):  # fmt: skip
            reader, writer = await connect()
            writer.write(request)
            answers.append(await asyncio.wait_for(reader.read(), 5))
            writer.close()
        unix, tcp = answers
        assert unix.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in unix
        # The dashboard: a page shell (it needs no session: it holds no data).
        assert b'<meta name="hal-page"' in tcp and b"content-security-policy" in tcp
    finally:
        await server.close()


async def test_the_openapi_document_is_built_at_its_first_request_not_with_the_app(
    tmp_path: Path, sock_dir: Path, monkeypatch: Any
) -> None:
    """Each daemon built it at its start (dear in CPU), for a document few clients
    fetch: now the first request builds it, once."""
    import hal9999.server.openapi as openapi

    built: list[object] = []
    real = openapi.openapi_schema

    def counted(router: Any) -> dict[str, Any]:
        built.append(router)
        return real(router)

    monkeypatch.setattr(openapi, "openapi_schema", counted)
    router = daemon_router()
    server = HalServer(build_app(ServerContext(home=tmp_path, token="tok"), router))
    assert built == []
    sock = str(sock_dir / "api.sock")
    await server.listen_unix(sock)
    try:
        client = DaemonClient(DaemonInfo(1, sock, 0, 0.0), "tok")
        first = await client.call("GET", "/v1/openapi.json")
        assert await client.call("GET", "/v1/openapi.json") == first == real(router)
        assert len(built) == 1
    finally:
        await server.close()
