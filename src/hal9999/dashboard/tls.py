"""``hal serve --listen HOST:PORT``: the dashboard (and API) on another address, TLS only.

The address and certificate travel to the daemon as ``HAL_LISTEN``, ``HAL_TLS_CERT`` and
``HAL_TLS_KEY`` (so a ``--detach``-ed daemon gets them too). Without a certificate of the
user's, hal makes a self-signed one for the host (``<home>/tls/``, key mode 600) and reuses it
while it names the same host. Plain HTTP is never served there: every address but 127.0.0.1
is reachable by others, and a session cookie must not cross the network in clear.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hal9999.errors import ConfigError

LISTEN_ENV = "HAL_LISTEN"
CERT_ENV = "HAL_TLS_CERT"
KEY_ENV = "HAL_TLS_KEY"


@dataclass(frozen=True)
class ListenAddress:
    """Where ``--listen`` asks the daemon to serve, and with which certificate."""

    host: str
    port: int
    cert: Path | None = None
    key: Path | None = None

    @property
    def url(self) -> str:
        """The dashboard's origin on this address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); a ConfigError naming the fix."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--listen {value!r} is not HOST:PORT", hint="for example --listen 0.0.0.0:8443"
        )
    if any(c in host for c in "/@ []") or len(host) > 253:
        raise ConfigError(f"--listen host {host!r} is not a host name or address")
    return host, int(port)


def listen_address(environ: Mapping[str, str]) -> ListenAddress | None:
    """The ``--listen`` address the daemon was started with, if any."""
    value = environ.get(LISTEN_ENV)
    if not value:
        return None
    host, port = parse_listen(value)
    cert, key = environ.get(CERT_ENV), environ.get(KEY_ENV)
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert and --tls-key go together", hint="give both, or neither")
    return ListenAddress(host, port, Path(cert) if cert else None, Path(key) if key else None)


def _self_signed(home: Path, host: str) -> tuple[Path, Path]:
    """hal's own certificate for ``host`` (made once, kept under ``<home>/tls``)."""
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "making a certificate for --listen needs the cryptography package",
            hint="pip install 'hal9999[tls]', or give --tls-cert and --tls-key",
        ) from exc
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = home / "tls"
    cert_path, key_path = folder / f"{host}.crt", folder / f"{host}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hal dashboard {host}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem_key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(home: Path, address: ListenAddress) -> tuple[ssl.SSLContext, Path]:
    """The TLS context for ``address`` and the certificate it presents."""
    cert, key = address.cert, address.key
    if cert is None or key is None:
        cert, key = _self_signed(home, address.host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS certificate {cert} with key {key}: {exc}",
            hint="give a PEM certificate and its private key, or neither (hal makes one)",
        ) from exc
    return context, cert
