"""The ``kubernetes`` provider over TLS against the fake API server: a kubeconfig with the
cluster's CA and a client certificate and key inline (the server requires the certificate),
a token kubeconfig over TLS, and a wrong CA, a missing client certificate and broken PEM
data each refused in one line (a HalError, never a traceback)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.fakes.k8s_api import FakeKube
from tests.fakes.k8s_tls import TlsFiles, make_pki
from tests.support.kubernetes import make, spec

from hal9999.errors import ConfigError, HalError
from hal9999.spec import ArgvCommand

pytestmark = pytest.mark.bwrap


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert_server(pki: TlsFiles) -> Iterator[FakeKube]:
    with FakeKube(tls=pki, client_certs=True) as fake:
        yield fake


@pytest.fixture(scope="module")
def token_server(pki: TlsFiles) -> Iterator[FakeKube]:
    with FakeKube(tls=pki) as fake:
        yield fake


def use(monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> None:
    monkeypatch.setenv("HAL_K8S_KUBECONFIG", str(kubeconfig))


async def test_a_client_certificate_kubeconfig_runs_a_sandbox(
    fake_k8s: FakeKube, cert_server: FakeKube, pki: TlsFiles, hal_home: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    config = cert_server.kubeconfig(tmp_path / "kc", token=None,
                                    client=(pki.client_cert, pki.client_key))  # fmt: skip
    user = json.loads(config.read_text())["users"][0]["user"]
    assert set(user) == {"client-certificate-data", "client-key-data"}
    use(monkeypatch, config)
    provider = make(hal_home)
    async with await provider.create(spec()) as sandbox:  # the API over https, exec over wss
        result = await sandbox.exec(ArgvCommand(argv=("echo", "over tls")))
        assert result.stdout == b"over tls\n"
    assert cert_server.url.startswith("https://")
    assert [m for m, _ in cert_server.calls].count("EXEC") >= 1


async def test_a_token_kubeconfig_over_tls(
    fake_k8s: FakeKube, token_server: FakeKube, hal_home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    use(monkeypatch, token_server.kubeconfig(tmp_path / "kc"))
    provider = make(hal_home)
    async with await provider.create(spec()) as sandbox:
        assert (await sandbox.exec(ArgvCommand(argv=("true",)))).ok


async def test_a_wrong_ca_is_one_clear_line(
    fake_k8s: FakeKube, cert_server: FakeKube, pki: TlsFiles, hal_home: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    other = make_pki(tmp_path / "other", name="someone-else")
    use(
        monkeypatch,
        cert_server.kubeconfig(
            tmp_path / "kc", token=None, ca=other.ca, client=(pki.client_cert, pki.client_key)
        ),
    )
    with pytest.raises(HalError) as info:
        await make(hal_home, api_attempts=1).create(spec())
    line = info.value.one_line()
    assert "certificate" in line and "\n" not in line, line
    assert "certificate-authority" in (info.value.hint or ""), info.value.hint


async def test_no_client_certificate_where_one_is_required_is_one_clear_line(
    fake_k8s: FakeKube, cert_server: FakeKube, hal_home: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    use(monkeypatch, cert_server.kubeconfig(tmp_path / "kc", token=None))
    with pytest.raises(HalError) as info:
        await make(hal_home, api_attempts=1).create(spec())
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("field", ["certificate-authority-data", "client-key-data"])
async def test_broken_pem_data_is_a_config_error(
    fake_k8s: FakeKube, cert_server: FakeKube, pki: TlsFiles, hal_home: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str,
) -> None:  # fmt: skip
    path = cert_server.kubeconfig(tmp_path / "kc", token=None,
                                  client=(pki.client_cert, pki.client_key))  # fmt: skip
    doc = json.loads(path.read_text())
    where = doc["clusters"][0]["cluster"] if field.startswith("certificate") else \
        doc["users"][0]["user"]  # fmt: skip
    where[field] = base64.b64encode(b"-----BEGIN GARBAGE-----\nnot pem\n").decode()
    path.write_text(json.dumps(doc))
    use(monkeypatch, path)
    with pytest.raises(ConfigError, match=field.removesuffix("-data")):
        await make(hal_home).create(spec())
