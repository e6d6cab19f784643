"""TLS and mutual TLS with a real server: the SDK verifies the server against a given CA;
plaintext and unknown CAs are refused; with a client CA the server refuses clients without a
certificate signed by it. The key material comes from `foedus certs`, as an administrator makes it."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("cryptography")

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from foedus_testdata import iris_data, iris_onnx
from testkit import run_cli

from foedus.client_sdk import Client, TlsConfig, Unavailable
from foedus.client_sdk.cli.common import Globals
from foedus.client_sdk.testing import LocalServer
from foedus.v1 import admin_pb2, admin_pb2_grpc


def make_pki(capsys: pytest.CaptureFixture[str], directory: Path, *clients: str) -> Path:
    """`foedus certs ca`, `server --host 127.0.0.1 --host localhost` and one `client` per name."""
    assert run_cli(capsys, "certs", "ca", "--dir", str(directory), "--days", "2")[0] == 0
    code, _, err = run_cli(
        capsys, "certs", "server", "--dir", str(directory), "--host", "127.0.0.1", "--host", "localhost"
    )
    assert code == 0, err
    for name in clients:
        assert run_cli(capsys, "certs", "client", name, "--dir", str(directory))[0] == 0
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_command_writes_pem_files_with_private_keys_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = make_pki(capsys, tmp_path / "certs", "agent-1")
    assert mode(d) == 0o700
    assert {p.name for p in d.iterdir()} == {
        "ca.pem", "ca.key", "server.pem", "server.key", "agent-1.pem", "agent-1.key"
    }  # fmt: skip
    for name in ("ca.key", "server.key", "agent-1.key"):
        assert mode(d / name) == 0o600
        assert (d / name).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    client = x509.load_pem_x509_certificate((d / "agent-1.pem").read_bytes())
    assert mode(d / "server.pem") == 0o644
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string() == "CN=agent-1"

    # existing files are kept unless --force; a leaf needs a CA
    before = (d / "ca.key").read_bytes()
    code, _, err = run_cli(capsys, "certs", "ca", "--dir", str(d))
    assert code == 6 and "--force" in err
    assert (d / "ca.key").read_bytes() == before
    assert run_cli(capsys, "certs", "ca", "--dir", str(d), "--force")[0] == 0
    assert (d / "ca.key").read_bytes() != before
    code, _, err = run_cli(capsys, "certs", "client", "x", "--dir", str(tmp_path / "empty"))
    assert code == 3 and "foedus certs ca" in err
    code, _, _ = run_cli(capsys, "certs", "server", "--dir", str(d))  # --host is required
    assert code == 2


def test_tls_server_and_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_server: Callable[..., LocalServer]
) -> None:
    good = make_pki(capsys, tmp_path / "good")
    other = make_pki(capsys, tmp_path / "other")
    server = make_server(
        tmp_path / "data",
        tls_cert=str(good / "server.pem"),
        tls_key=str(good / "server.key"),
        client_tls=TlsConfig(ca_cert=good / "ca.pem"),
    )
    with server.client() as admin:
        assert admin.whoami().role == 5  # ROLE_ADMIN
        admin.tenants.create("secure")
    for tls in (None, TlsConfig(ca_cert=other / "ca.pem")):  # plaintext, then a CA that did not sign it
        client = Client.connect(server.target, api_key=server.admin_key, tls=tls, timeout=5)
        with client, pytest.raises(Unavailable):
            client.whoami()


def test_mutual_tls_refuses_clients_without_a_certificate_of_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_server: Callable[..., LocalServer]
) -> None:
    good = make_pki(capsys, tmp_path / "good", "ci")
    other = make_pki(capsys, tmp_path / "other", "ci")
    ca = good / "ca.pem"
    server = make_server(
        tmp_path / "data",
        tls_cert=str(good / "server.pem"),
        tls_key=str(good / "server.key"),
        tls_client_ca=str(ca),
        health_listen="127.0.0.1:0",
    )
    # probes without TLS get the health service on its own plaintext port, and nothing else
    with grpc.insecure_channel(server.health_target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as exc:
            admin_pb2_grpc.AdminServiceStub(channel).WhoAmI(admin_pb2.WhoAmIRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    signed = TlsConfig(ca_cert=ca, client_cert=good / "ci.pem", client_key=good / "ci.key")
    with Client.connect(server.target, api_key=server.admin_key, tls=signed) as admin:
        assert admin.whoami().role == 5  # ROLE_ADMIN
    refused = (
        TlsConfig(ca_cert=ca),  # no client certificate
        TlsConfig(ca_cert=ca, client_cert=other / "ci.pem", client_key=other / "ci.key"),  # another CA
        None,  # plaintext
    )
    for tls in refused:
        client = Client.connect(server.target, api_key=server.admin_key, tls=tls, timeout=5)
        with client, pytest.raises(Unavailable):
            client.whoami()

    # the same through the CLI's global options
    base = ("--server", server.target, "--api-key", server.admin_key, "-o", "json")
    code, out, err = run_cli(
        capsys, *base, "--ca-cert", str(ca), "--client-cert", str(good / "ci.pem"),
        "--client-key", str(good / "ci.key"), "whoami",
    )  # fmt: skip
    assert code == 0, err
    assert '"role": "ROLE_ADMIN"' in out or '"role": 5' in out
    code, _, _ = run_cli(capsys, *base, "--ca-cert", str(ca), "whoami")
    assert code == 7  # UNAVAILABLE: the handshake fails
    code, _, err = run_cli(capsys, *base, "--client-cert", str(good / "ci.pem"), "whoami")
    assert code == 5 and "go together" in err


def test_agent_presents_its_client_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_server: Callable[..., LocalServer]
) -> None:
    from foedus.client_sdk.agent.runtime import Agent, AgentConfig

    pki = make_pki(capsys, tmp_path / "certs", "admin", "agent-1")
    admin_tls = TlsConfig(ca_cert=pki / "ca.pem", client_cert=pki / "admin.pem", client_key=pki / "admin.key")
    server = make_server(
        tmp_path / "data",
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
        latency_runs=3,
        client_tls=admin_tls,
    )
    with server.client(server.create_tenant("acme")) as owner:
        x, _ = iris_data()
        models = tmp_path / "models"
        models.mkdir()
        owner.models.register("iris", iris_onnx(models), reference_data=x)
        owner.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        agent_key = owner.keys.create("agent").secret
    # the TLS settings as `foedus --ca-cert ... --client-cert ... agent run` builds them
    tls = Globals(
        server=server.target,
        api_key=agent_key,
        output="table",
        tls=False,
        ca_cert=str(pki / "ca.pem"),
        client_cert=str(pki / "agent-1.pem"),
        client_key=str(pki / "agent-1.key"),
    ).tls_config()
    assert tls is not None
    config = AgentConfig(
        deployment="iris-prod",
        server=server.target,
        api_key=agent_key,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "agent",
        name="agent-1",
        interval_s=0.5,
        channel_credentials=tls.channel_credentials(),
    )

    async def run() -> int:
        agent = Agent(config)
        await agent.start()
        try:
            await agent.connected.wait()  # the first assignment arrived and was applied
            return agent.generation
        finally:
            await agent.stop()

    assert asyncio.run(asyncio.wait_for(run(), 60)) >= 1
