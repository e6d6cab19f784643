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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from foedus.client_sdk.pki import (
    CertificateUsage,
    issue,
    new_ca,
    write_certificate,
    write_private,
    write_private_key,
)

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
    ca = new_ca(valid_days=valid_days)
    server = issue(ca, common_name, CertificateUsage.SERVER, hosts=hosts, valid_days=valid_days)
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    write_certificate(files.ca_cert, ca.cert)
    write_certificate(files.server_cert, server.cert)
    write_private_key(directory / "ca.key", ca.key)
    write_private_key(files.server_key, server.key)
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
    write_private(
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
