"""A development PKI: a CA, server certificates and client certificates for (mutual) TLS.

Meant for first deployments and tests (`foedus certs`, Flower's development federation); a
production installation brings its own PKI. Keys are ECDSA P-256; certificates are PEM files
readable by everyone (0644), private keys are readable by their owner only (0600).

Needs `cryptography` (``pip install cryptography``; the federation and dev extras have it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateUsage",
    "KeyPair",
    "issue",
    "load_key_pair",
    "new_ca",
    "subject_alt_names",
    "write_certificate",
    "write_private",
    "write_private_key",
]

DEFAULT_CA_NAME = "Foedus development CA"


class CertificateUsage(Enum):
    """What a leaf certificate may be used for (its extended key usage)."""

    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _window(valid_days: int, ca: KeyPair | None = None) -> tuple[dt.datetime, dt.datetime]:
    if valid_days <= 0:
        raise ValueError("valid_days must be positive")
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=valid_days)
    if ca is not None:  # a leaf never outlives its CA
        not_after = min(not_after, ca.cert.not_valid_after_utc)
    return now - dt.timedelta(minutes=5), not_after


def subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    """IP addresses become IP entries, anything else a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def new_ca(common_name: str = DEFAULT_CA_NAME, *, valid_days: int = 365) -> KeyPair:
    """A self-signed CA that signs leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _window(valid_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def issue(
    ca: KeyPair,
    common_name: str,
    usage: CertificateUsage,
    *,
    hosts: Sequence[str] = (),
    valid_days: int = 365,
) -> KeyPair:
    """A leaf certificate signed by `ca`.

    A server certificate needs `hosts`: the names and addresses clients dial, which become its
    subject alternative names (clients check those, not the common name). A client certificate
    identifies its holder by `common_name`.
    """
    if not common_name:
        raise ValueError("a certificate needs a common name")
    if usage is CertificateUsage.SERVER and not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _window(valid_days, ca)
    eku = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if usage is CertificateUsage.SERVER
        else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if hosts:
        builder = builder.add_extension(subject_alt_names(hosts), critical=False)
    return KeyPair(builder.sign(ca.key, hashes.SHA256()), key)


def write_private(path: Path, data: bytes) -> None:
    """Writes `data` to `path` readable by the owner only (also when the file existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Writes an unencrypted PKCS#8 PEM private key, mode 0600."""
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    """Writes a PEM certificate, mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def load_key_pair(cert_path: Path, key_path: Path) -> KeyPair:
    """Reads a PEM certificate and its unencrypted PEM private key (an ECDSA CA's, say)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an ECDSA private key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    return KeyPair(cert, key)
