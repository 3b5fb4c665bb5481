"""The daemon's HTTP layer: bearer auth, routing, error mapping, keep-alive, the client."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from hal9999.errors import TaskNotFound, TaskStateError
from hal9999.server.app import ServerContext, build_app
from hal9999.server.client import DaemonClient
from hal9999.server.listen import HalServer
from hal9999.server.routing import ApiRequest as Request
from hal9999.server.routing import Router
from hal9999.server.runtime import DaemonFiles, DaemonInfo


def router() -> Router:
    r = Router()

    async def echo(request: Request) -> Any:
        return {"id": request.params["id"], "body": request.json(), "q": request.query}

    async def missing(request: Request) -> Any:
        raise TaskNotFound("no task 'x'", hint="list them")

    async def wrong(request: Request) -> Any:
        raise TaskStateError("a queued task cannot become succeeded")

    async def boom(request: Request) -> Any:
        raise RuntimeError("secret internals")

    # It reads a body, so it declares the names the tests send (a route declaring none
    # refuses any).
    r.add("POST", "/v1/echo/{id}", echo, body_fields=frozenset({"a", "k"}), body={})
    r.add("GET", "/v1/missing", missing)
    r.add("GET", "/v1/wrong", wrong)
    r.add("GET", "/v1/boom", boom)
    return r


def http_server(r: Router, token: str, *, log_file: str | None = None, **limits: Any) -> HalServer:
    """The daemon's server stack serving ``r`` (no dashboard)."""
    ctx = ServerContext(home=Path("/nonexistent"), token=token, log_file=log_file)
    return HalServer(build_app(ctx, r, dashboard=False), **limits)


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await reader.read()
    writer.close()
    return out


async def test_tcp_needs_the_token_and_keeps_alive(tmp_path: Path) -> None:
    server = http_server(router(), "s3cret")
    port = await server.listen_tcp()
    denied = await raw(port, b"GET /v1/missing HTTP/1.1\r\nHost: hal\r\nConnection: close\r\n\r\n")
    assert denied.startswith(b"HTTP/1.1 401")
    bad = await raw(
        port,
        b"GET /v1/missing HTTP/1.1\r\nHost: hal\r\n"
        b"Authorization: Bearer nope\r\nConnection: close\r\n\r\n",
    )
    assert bad.startswith(b"HTTP/1.1 401")
    body = b'{"a": 1}'
    two = (
        b"POST /v1/echo/7?x=y HTTP/1.1\r\nHost: hal\r\nAuthorization: Bearer s3cret\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    ) + (
        b"GET /v1/nope HTTP/1.1\r\nHost: hal\r\n"
        b"Authorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
    )
    out = await raw(port, two)
    first, second = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and b'"id": "7"' in first and b'"x": "y"' in first
    assert second.startswith(b"404")
    await server.close()


async def test_client_maps_errors_back(tmp_path: Path) -> None:
    files = DaemonFiles(tmp_path)
    token = files.ensure_token()
    assert files.ensure_token() == token and (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    server = http_server(router(), token)
    sock = str(files.socket_path())
    await server.listen_unix(sock)
    client = DaemonClient(DaemonInfo(1, sock, 0, 0.0), token)
    assert (await client.call("POST", "/v1/echo/a", {"k": [1]}))["body"] == {"k": [1]}
    with pytest.raises(TaskNotFound, match="no task") as found:
        await client.call("GET", "/v1/missing")
    assert found.value.hint == "list them"
    with pytest.raises(TaskStateError):
        await client.call("GET", "/v1/wrong")
    with pytest.raises(Exception, match="internal error") as internal:
        await client.call("GET", "/v1/boom")
    assert "secret internals" not in str(internal.value)
    assert json.loads(json.dumps(await client.call("POST", "/v1/echo/b")))["body"] == {}
    await server.close()


async def test_the_client_sends_an_id_whatever_it_holds(tmp_path: Path) -> None:
    """A task id is the user's text (``hal task show ID``): spliced into the request line, a
    space made it "malformed request", a ``?`` started a query (``abc?force=1`` asked for
    ``abc`` with ``force``) and a CR LF began a header of the user's."""
    files = DaemonFiles(tmp_path)
    token = files.ensure_token()
    server = http_server(router(), token)
    sock = str(files.socket_path())
    await server.listen_unix(sock)
    client = DaemonClient(DaemonInfo(1, sock, 0, 0.0), token)
    for odd in ("a b", "a?x=1", "a#b", "a%20b", "a\r\nX-Extra: 1", "é"):
        echoed = await client.call("POST", f"/v1/echo/{odd}", query={"q": "1"})
        assert (echoed["id"], echoed["q"]) == (odd, {"q": "1"})
    await server.close()


def test_long_homes_get_a_short_socket(tmp_path: Path) -> None:
    long_home = tmp_path / ("x" * 120)
    sock = DaemonFiles(long_home).socket_path()
    assert len(str(sock)) < 108 and sock.name.endswith(".sock")


@pytest.mark.parametrize("mode", [0o755, 0o777])
def test_a_long_home_socket_is_never_put_where_others_reach(
    tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    # The short directory in /tmp was taken as found (mkdir exist_ok): one made first by
    # someone else, open to them, let them replace the socket and take the clients' token.
    import os
    import tempfile

    from hal9999.errors import HomeError

    monkeypatch.setattr(tempfile, "tempdir", str(sock_dir))
    short = sock_dir / f"hal9999-{os.getuid()}"
    short.mkdir()
    short.chmod(mode)
    files = DaemonFiles(tmp_path / ("x" * 120))
    with pytest.raises(HomeError, match="not a directory of this user's alone") as caught:
        files.socket_path()
    assert "shorter HAL_HOME" in (caught.value.hint or "")
    short.chmod(0o700)
    assert files.socket_path().parent == short


async def test_internal_error_names_the_log_file_and_the_task(tmp_path: Path) -> None:
    files = DaemonFiles(tmp_path)
    token = files.ensure_token()
    r = router()

    async def task_boom(request: Request) -> Any:
        raise RuntimeError("secret internals")

    r.add("POST", "/v1/tasks/{id}/stop", task_boom)
    server = http_server(r, token, log_file=str(files.log_file))
    sock = str(files.socket_path())
    await server.listen_unix(sock)
    client = DaemonClient(DaemonInfo(1, sock, 0, 0.0), token)
    with pytest.raises(Exception, match="internal error") as internal:
        await client.call("POST", "/v1/tasks/abc123/stop")
    message = str(internal.value)
    assert str(files.log_file) in message and "task abc123" in message
    assert "secret internals" not in message
    await server.close()


def test_the_blocking_client_reads_a_response_however_it_arrives(sock_dir: Path) -> None:
    # The thin client's reader (on the C socket module, no makefile): headers and body in
    # pieces, a body past one read, a response cut short, the JSON errors mapped back.
    import socket
    import threading

    from hal9999.server.client import DaemonUnavailable

    big = json.dumps({"text": "x" * 200_000}).encode()
    error = json.dumps({"error": {"code": "task_not_found", "message": "no"}}).encode()
    answers = [
        [b"HTTP/1.1 200 OK\r\ncontent-le", b"ngth: 10\r\n", b"\r\n", b'{"a": ', b"[1]}"],
        [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big) + big],
        [b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n" % len(error) + error],
        [b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n{}"],
        [b"HTTP/1.1 200 OK\r\ncontent-"],
    ]
    sock = str(sock_dir / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock)
    listener.listen()

    def serve() -> None:
        for pieces in answers:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                for piece in pieces:
                    conn.sendall(piece)
                    time.sleep(0.01)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = DaemonClient(DaemonInfo(1, sock, 0, 0.0), "tok")
    assert client.request("GET", "/x") == {"a": [1]}
    assert client.request("GET", "/x") == json.loads(big)
    with pytest.raises(TaskNotFound, match="no"):
        client.request("GET", "/x")
    with pytest.raises(DaemonUnavailable, match="ended after 2 of 20 bytes"):
        client.request("GET", "/x")
    with pytest.raises(DaemonUnavailable, match="before its headers"):
        client.request("GET", "/x")
    server.join(10)
    listener.close()
