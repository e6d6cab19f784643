"""Development key material for a Flower federation: a CA, a SuperLink certificate, SuperNode keys.

Everything here is meant for loopback test federations and first deployments; a production
federation brings its own PKI. The files are what Flower 1.42 expects:

* TLS: a PEM CA certificate (handed to the SuperNodes and to ``flwr`` as the root certificate)
  and a PEM server certificate + key for the SuperLink, whose subject alternative names cover
  the addresses the SuperNodes dial (``127.0.0.1``, ``::1`` and ``localhost`` by default).
* SuperNode authentication: one ECDSA key pair on the NIST P-384 curve per SuperNode, the
  private key in OpenSSH format (``flower-supernode --auth-supernode-private-key``) and the
  public key as an OpenSSH line (``flwr supernode register``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["NodeKeyPair", "TlsFiles", "generate_node_keys", "generate_tls"]

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a development PKI: the CA certificate and the SuperLink's certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyPair:
    """A SuperNode's authentication key pair (OpenSSH-format ECDSA P-384)."""

    private_key: Path
    public_key: Path

    @property
    def public_key_line(self) -> str:
        """The public key as one OpenSSH line (``ecdsa-sha2-nistp384 AAAA...``)."""
        return self.public_key.read_text(encoding="ascii").strip()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def generate_tls(
    directory: Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    valid_days: int = 30,
    common_name: str = "foedus-superlink",
) -> TlsFiles:
    """Create a development CA and a SuperLink server certificate signed by it.

    Writes ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key`` into ``directory`` (keys
    mode 0600) and returns the paths Flower needs. ``hosts`` become the certificate's subject
    alternative names: IP addresses as IP entries, anything else as DNS names.
    """
    if not hosts:
        raise ValueError("the server certificate needs at least one host name or address")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foedus development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    key_format = serialization.PrivateFormat.PKCS8
    no_password = serialization.NoEncryption()
    _write_private(directory / "ca.key", ca_key.private_bytes(pem, key_format, no_password))
    _write_private(files.server_key, server_key.private_bytes(pem, key_format, no_password))
    return files


def generate_node_keys(directory: Path, name: str) -> NodeKeyPair:
    """Create a SuperNode authentication key pair ``<name>`` and ``<name>.pub`` in ``directory``.

    The curve is NIST P-384, the one Flower's documentation uses; ``flwr supernode register``
    accepts any NIST curve and ``flower-supernode`` reads the OpenSSH private key unencrypted.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid key name {name!r}")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    pair = NodeKeyPair(private_key=directory / name, public_key=directory / f"{name}.pub")
    _write_private(
        pair.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pair.public_key.write_bytes(public + f" {name}\n".encode("ascii"))
    return pair
