"""Throwaway TLS material for the fake Kubernetes API server (tests/fakes/k8s_api.py): a CA,
a server certificate for 127.0.0.1 and a client certificate (``system:masters``, as
kubeadm's admin.conf has), made with ``cryptography`` into a directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one throwaway PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _cert(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool = False,
          ip: str | None = None, org: str | None = None) -> Any:  # fmt: skip
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str, organisation: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
        if organisation:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
        return x509.Name(attrs)

    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject, org)).issuer_name(name(signer_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if ip else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)  # fmt: skip
    return builder.sign(signer_key, hashes.SHA256())


def make_pki(directory: Path, *, name: str = "fake-k8s-ca") -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in ``directory``."""
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert(name, ca_key, None, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("kube-apiserver", server_key, (name, ca_key), ip="127.0.0.1")
    client = _cert("hal", client_key, (name, ca_key), org="system:masters")
    files = TlsFiles(*(directory / f for f in ("ca.pem", "server.pem", "server-key.pem",
                                              "client.pem", "client-key.pem")))  # fmt: skip
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(server.public_bytes(pem))
    files.server_key.write_bytes(_pem_key(server_key))
    files.client_cert.write_bytes(client.public_bytes(pem))
    files.client_key.write_bytes(_pem_key(client_key))
    return files
