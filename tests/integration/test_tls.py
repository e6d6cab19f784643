"""TLS: the SDK verifies the server against a given CA; plaintext and unknown CAs are refused."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest

from foedus.client_sdk import Client, TlsConfig, Unavailable
from foedus.client_sdk.testing import LocalServer

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _write_ca_and_server(directory: Path, name: str) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / f"{name}-ca.pem", directory / f"{name}-server.pem", directory / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_server_and_client(tmp_path: Path) -> None:
    ca, cert, key = _write_ca_and_server(tmp_path, "good")
    other_ca, _, _ = _write_ca_and_server(tmp_path, "other")
    with LocalServer(tmp_path / "data", tls_cert=str(cert), tls_key=str(key)) as server:
        with Client.connect(server.target, api_key=server.admin_key, tls=TlsConfig(ca_cert=ca)) as admin:
            assert admin.whoami().role == 5  # ROLE_ADMIN
            admin.tenants.create("secure")
        for tls in (None, TlsConfig(ca_cert=other_ca)):  # plaintext, then a CA that did not sign it
            client = Client.connect(server.target, api_key=server.admin_key, tls=tls, timeout=5)
            with client, pytest.raises(Unavailable):
                client.whoami()
