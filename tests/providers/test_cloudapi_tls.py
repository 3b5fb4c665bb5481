"""The cloud API client's TLS context for ``verify=True`` (src/hal9999/providers/cloud/api.py)
is made once per process and CA setting, not once per client."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import certifi
import pytest

from hal9999.providers.cloud.api import CloudApi


async def test_clients_share_one_default_context(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: list[dict[str, Any]] = []
    create = ssl.create_default_context

    def counted(*args: Any, **kw: Any) -> ssl.SSLContext:
        made.append(kw)
        return create(*args, **kw)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    # CA bundles named in the environment (httpx's trust_env; paths new to this process).
    bundles = [tmp_path / "ca1.pem", tmp_path / "ca2.pem"]
    for bundle in bundles:
        bundle.write_bytes(Path(certifi.where()).read_bytes())

    def client() -> CloudApi:
        return CloudApi(vendor="Test", base_url="https://api.invalid", token="t")

    monkeypatch.setenv("SSL_CERT_FILE", str(bundles[0]))
    clients = [client() for _ in range(3)]
    assert [m.get("cafile") for m in made] == [str(bundles[0])]
    # Another bundle is honoured, in its own context.
    monkeypatch.setenv("SSL_CERT_FILE", str(bundles[1]))
    clients += [client(), client()]
    assert [m.get("cafile") for m in made] == [str(b) for b in bundles]
    # An explicit context (Kubernetes' cluster CA) is the client's own, untouched.
    own = create()
    clients.append(CloudApi(vendor="Test", base_url="https://api.invalid", token=None, verify=own))
    assert len(made) == 2
    for c in clients:
        await c.aclose()
