"""``hal serve --listen HOST:PORT``: the dashboard (and API) on another address, TLS only.

The address and certificate come from those options or, when ``--listen`` is not given, from
the variables ``HAL_LISTEN``, ``HAL_TLS_CERT`` and ``HAL_TLS_KEY``; a ``--detach``-ed daemon is
started with the same options. A :class:`ListenAddress` remembers which the user set, so an
error names the option or the variable to fix. Without a certificate of the user's, hal makes
a self-signed one for the host (``<home>/tls/``, key mode 600) and reuses it while it names the
same host. Plain HTTP is never served there: every address but 127.0.0.1 is reachable by
others, and a login link or a session credential must not cross the network in clear.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hal9999.errors import ConfigError

LISTEN_ENV = "HAL_LISTEN"
CERT_ENV = "HAL_TLS_CERT"
KEY_ENV = "HAL_TLS_KEY"


def _fix(name: str, value: str) -> str:
    """How to give the setting ``name`` (an option of hal serve or a variable) ``value``."""
    return f"give {name} {value}" if name.startswith("--") else f"set {name} to {value}"


@dataclass(frozen=True)
class ListenAddress:
    """Where ``--listen`` asks the daemon to serve, with which certificate, and which options
    or variables of the user's said so (for the errors to name)."""

    host: str
    port: int
    cert: Path | None = None
    key: Path | None = None
    listen_name: str = "--listen"
    """``--listen`` or ``HAL_LISTEN``: what set the address."""
    cert_names: tuple[str, str] = ("--tls-cert", "--tls-key")
    """``--tls-cert``/``--tls-key`` or ``HAL_TLS_CERT``/``HAL_TLS_KEY``: what set the pair."""

    @property
    def url(self) -> str:
        """The dashboard's origin on this address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def bound(self, port: int) -> ListenAddress:
        """This address on the port the socket bound (the one the system picked for 0)."""
        return dataclasses.replace(self, port=port)

    def cannot_listen(self, reason: str) -> ConfigError:
        """The error for an address this host cannot listen on (busy, not its own, unknown)."""
        return ConfigError(
            f"cannot listen on {self.url}: {reason}",
            hint=_fix(self.listen_name, "an address of this host and a free port"),
        )


def parse_listen(value: str, name: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); a ConfigError naming the fix
    in ``name``, the option or variable that gave ``value``. Port 0 asks for a free port the
    system picks (the daemon records the one it bound: ``tls_port`` in ``serve.json``)."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{name} {value!r} is not HOST:PORT", hint=_example(name))
    if any(c in host for c in "/@ []") or len(host) > 253:
        raise ConfigError(f"{name} host {host!r} is not a host name or address")
    if _every_address(host):
        # The Host check (DNS rebinding) accepts only the name given here: on "every
        # address", a browser elsewhere would get 421 and the login link would name 0.0.0.0.
        raise ConfigError(
            f"{name} host {host!r} means every address, and the dashboard answers only to "
            "the one name it is given (its Host check)",
            hint=f"name the address or host name the browser will use: {_example(name)}",
        )
    return _canonical(host, name), int(port)


def _canonical(host: str, name: str) -> str:
    """``host`` as a browser writes it in the Host header: an IPv4 address in any of the C
    library's spellings (``127.1``, ``0x7f.1``, ``2130706433``, ``0177.0.0.1``) as its dotted
    quad, an IPv6 address in its short form. A browser rewrites those in the URL, so the
    Host check, which accepts only the name given here, refused the login link's every
    request with 421; a host whose last label is a number and that is no address (``1.2.3.4.5``,
    ``256.1``) is refused, as a browser refuses it."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    host = host.lower()
    last = host.removesuffix(".").rpartition(".")[2]
    if not (last.isdigit() or (last.startswith("0x") and _hex(last[2:]))):
        return host  # a host name
    labels = host.removesuffix(".").split(".")
    if len(labels) <= 4 and all(p.isdigit() or (p[:2] == "0x" and _hex(p[2:])) for p in labels):
        with contextlib.suppress(OSError):
            return socket.inet_ntoa(socket.inet_aton(".".join(labels)))
    raise ConfigError(
        f"{name} host {host!r} ends in a number but is no IPv4 address",
        hint=f"write the address as four numbers 0-255: {_example(name)}",
    )


def _hex(digits: str) -> bool:
    """``digits`` are hexadecimal digits (or none: ``0x`` alone, which the C library refuses)."""
    return all(c in "0123456789abcdefABCDEF" for c in digits)


def _every_address(host: str) -> bool:
    """Whether binding ``host`` binds every address: 0.0.0.0 and :: in any spelling the
    socket takes (``0``, ``0x0``, ``0.0``: the C library's, which ``ipaddress`` refuses;
    ``::ffff:0.0.0.0``, IPv4's every address over IPv6)."""
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        return bool((getattr(address, "ipv4_mapped", None) or address).is_unspecified)
    try:
        return socket.inet_aton(host) == bytes(4)
    except OSError:  # a host name
        return False


def _example(name: str) -> str:
    """An example value of the option or variable ``name``."""
    return f"for example {name}{' ' if name.startswith('--') else '='}192.168.1.10:8443"


def _pair(cert: str | None, key: str | None, names: tuple[str, str]) -> tuple[Path, Path] | None:
    """The certificate and key, given together or not at all."""
    if bool(cert) != bool(key):
        both = "give both, or neither" if names[0].startswith("--") else "set both, or neither"
        raise ConfigError(f"{names[0]} and {names[1]} go together", hint=both)
    return (Path(cert), Path(key)) if cert and key else None


def listen_option(listen: str, cert: str | None, key: str | None,
                  environ: Mapping[str, str]) -> ListenAddress:  # fmt: skip
    """The address of ``hal serve --listen``, with ``--tls-cert/--tls-key`` or, without them,
    the certificate ``HAL_TLS_CERT``/``HAL_TLS_KEY`` name."""
    host, port = parse_listen(listen)
    names = ("--tls-cert", "--tls-key")
    if not cert and not key:
        cert, key, names = environ.get(CERT_ENV), environ.get(KEY_ENV), (CERT_ENV, KEY_ENV)
    pair = _pair(cert, key, names)
    cert_path, key_path = (p.resolve() for p in pair) if pair else (None, None)
    return ListenAddress(host, port, cert_path, key_path, cert_names=names)


def listen_address(environ: Mapping[str, str]) -> ListenAddress | None:
    """The address ``HAL_LISTEN`` names, if any, with ``HAL_TLS_CERT``/``HAL_TLS_KEY``."""
    value = environ.get(LISTEN_ENV)
    if not value:
        return None
    host, port = parse_listen(value, LISTEN_ENV)
    names = (CERT_ENV, KEY_ENV)
    pair = _pair(environ.get(CERT_ENV), environ.get(KEY_ENV), names)
    cert, key = pair or (None, None)
    return ListenAddress(host, port, cert, key, listen_name=LISTEN_ENV, cert_names=names)


def _self_signed(home: Path, host: str) -> tuple[Path, Path]:
    """hal's own certificate for ``host`` (made once, kept under ``<home>/tls``)."""
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
    names = address.cert_names
    if cert is None or key is None:
        cert, key = _self_signed(home, address.host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        given = (
            f"give {names[0]} a PEM certificate and {names[1]} its private key, or neither"
            if names[0].startswith("--")
            else f"set {names[0]} to a PEM certificate and {names[1]} to its private key, "
            "or unset both"
        )
        raise ConfigError(
            f"cannot use the TLS certificate {cert} ({names[0]}) with key {key} "
            f"({names[1]}): {exc}",
            hint=f"{given} (hal makes one)",
        ) from exc
    return context, cert
