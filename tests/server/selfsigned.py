"""A server TLS context with a throwaway self-signed certificate, for listener tests."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def server_tls(directory: Path) -> ssl.SSLContext:
    """A server context presenting a fresh self-signed P-256 certificate for ``localhost``
    (its key and certificate written under ``directory``)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    return tls
