"""TLS on the upstream hop: the gateway verifies the upstream's certificate (a private CA
only when ``[gateway] ca_file`` names it) and a certificate that does not verify is a clear
502, never retried, never sent the key."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from tests.gateway.upstream import StormUpstream

from hal9999.gateway.channel import Grant, new_token
from hal9999.gateway.proxy import Gateway
from hal9999.store import Store

KEY = "sk-tls-key-0123456789abcdef"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=hal-test", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[StormUpstream]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with StormUpstream(tls=context) as server:
        yield server


@pytest.fixture
async def served(
    tmp_path: Path, sock_dir: Path
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    store = Store.open(tmp_path / "home")
    gateway = Gateway(store)
    sock = str(sock_dir / "llm.sock")
    server = await asyncio.start_unix_server(gateway.serve_connection, path=sock)
    transport = httpx.AsyncHTTPTransport(uds=sock)
    async with server, httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        yield gateway, http
    await gateway.drain()
    await gateway.aclose()
    store.close()


async def post(http: httpx.AsyncClient, token: str) -> httpx.Response:
    body = {"model": "claude-sonnet-4-5", "stream": True, "messages": []}
    return await http.post("/v1/messages", json=body, headers={"x-api-key": token})


async def test_tls_upstream_with_its_ca(
    served: tuple[Gateway, httpx.AsyncClient],
    tls_upstream: StormUpstream,
    certificate: tuple[Path, Path],
) -> None:
    gateway, http = served
    grant = Grant(task_id="t1", token=new_token(), upstream=tls_upstream.url, key=KEY,
                  settings={"ca_file": str(certificate[0])})  # fmt: skip
    gateway.register(grant)
    answer = await post(http, grant.token)
    assert answer.status_code == 200 and "message_delta" in answer.text
    assert [s.headers["x-api-key"] for s in tls_upstream.seen] == [KEY]
    await gateway.drain()
    [row] = gateway.store.gateway_requests("t1")
    assert (row.input_tokens, row.output_tokens) == (11, 7)


async def test_unverified_certificate_is_refused_at_once(
    served: tuple[Gateway, httpx.AsyncClient], tls_upstream: StormUpstream
) -> None:
    gateway, http = served
    grant = Grant(task_id="t1", token=new_token(), upstream=tls_upstream.url, key=KEY)
    gateway.register(grant)
    started = asyncio.get_running_loop().time()
    answer = await post(http, grant.token)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "upstream_unreachable"
    assert asyncio.get_running_loop().time() - started < 5, "a bad certificate is not retried"
    assert tls_upstream.seen == []


@pytest.mark.parametrize("ca_file", ["missing.pem", "a-directory", "not-pem.txt"])
async def test_a_ca_file_that_cannot_be_used_is_a_clear_refusal(
    served: tuple[Gateway, httpx.AsyncClient], tmp_path: Path, ca_file: str
) -> None:
    """It dropped the connection (RemoteProtocolError) with a traceback in the log."""
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "not-pem.txt").write_text("not a certificate\n")
    gateway, http = served
    with StormUpstream() as upstream:
        grant = Grant(task_id="t1", token=new_token(), upstream=upstream.url, key=KEY,
                      settings={"ca_file": str(tmp_path / ca_file)})  # fmt: skip
        gateway.register(grant)
        answer = await post(http, grant.token)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["code"] == "ca_file_unusable", error
        assert f"ca_file {tmp_path / ca_file} cannot be used" in error["message"]
        assert upstream.seen == []
    await gateway.drain()
    [row] = gateway.store.gateway_requests("t1")
    assert row.error == "ca_file_unusable"
