"""Ambiguous or bad input to the CLI and the SDK is refused with one clear line and the documented
exit code (or the SDK's InvalidArgument), never half-done or silently reinterpreted."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from testkit import raises_soon
from testkit import run_cli as run

from foedus.client_sdk import Client
from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from foedus.client_sdk.testing import LocalServer
from foedus.v1 import common_pb2

CLI = (sys.executable, "-m", "foedus.client_sdk.cli.main")


def _owner(server: LocalServer) -> str:
    return server.create_tenant(f"t-{uuid.uuid4().hex[:10]}")


def test_an_explicit_key_file_beats_the_key_in_the_environment(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner = _owner(server)
    admin_file = tmp_path / "admin.key"
    admin_file.write_text(server.admin_key + "\n")
    monkeypatch.setenv("FOEDUS_API_KEY", owner)
    base = ("--server", server.target, "-o", "json")

    code, out, err = run(capsys, *base, "whoami")
    assert code == 0, err
    assert json.loads(out)[0]["role"] == "ROLE_OWNER"  # the role's name, not its number
    code, out, err = run(capsys, *base, "--api-key-file", str(admin_file), "whoami")
    assert code == 0, err
    assert json.loads(out)[0]["role"] == "ROLE_ADMIN"
    assert json.loads(out)[0]["tenant"] == "(platform)"

    code, _, err = run(capsys, *base, "--api-key-file", str(tmp_path / "missing.key"), "whoami")
    assert code == exit_codes.INVALID
    assert "cannot read the API key file" in err
    code, _, err = run(capsys, *base, "--api-key", owner, "--api-key-file", str(admin_file), "whoami")
    assert code == exit_codes.INVALID
    assert "not both" in err


def test_the_cli_refuses_ambiguous_and_malformed_registry_input(
    server: LocalServer, onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner = _owner(server)
    me = ("--server", server.target, "--api-key", owner + "\n")  # a pasted key's line end is dropped
    code, _, err = run(capsys, *me, "model", "register", "iris", str(onnx_model), "--alias", "production")
    assert code == 0, err
    code, _, err = run(capsys, *me, "model", "register", "iris", str(onnx_model))
    assert code == 0, err

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,c,d\n")
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("a,a,c,d\n1,2,3,4\n")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,c,d\n1,2,3,4\n1,2,3\n")
    register = (*me, "model", "register", "iris", str(onnx_model))
    cases = [
        ((*me, "model", "get", "iris", "--version", "2", "--alias", "production"), "not both"),
        (
            (*me, "model", "download", "iris", str(tmp_path), "--version", "2", "--alias", "production"),
            "not both",
        ),
        ((*me, "model", "alias", "iris", "production", "2", "--delete"), "give no VERSION"),
        ((*register, "--tag", "team=a", "--tag", "team=b"), "'team' is given twice"),
        ((*register, "--lineage", "parent_version=abc"), "parent_version must be a version number"),
        ((*register, "--lineage", "code_revision_time=1e30"), "within years 1-9999"),
        ((*register, "--lineage", "code_revision_time=nan"), "within years 1-9999"),
        ((*me, "model", "register", "iris", str(empty)), "is empty"),
        ((*register, "--reference", str(header_only)), "no rows"),
        ((*register, "--reference", str(repeated)), "repeat in the header: a"),
        ((*register, "--reference", str(ragged)), "line 3: 3 fields, the header has 4"),
        ((*me, "model", "download", "iris", str(tmp_path / "new") + "/"), "does not exist"),
        ((*me, "model", "download", "iris", str(tmp_path / "no" / "such" / "m.onnx")), "does not exist"),
    ]
    for args, text in cases:
        code, out, err = run(capsys, *args)
        assert code == exit_codes.INVALID, (args, out, err)
        assert text in err, (args, err)
        assert "Traceback" not in err
    # nothing was registered, moved or written by the refused calls
    with Client.connect(server.target, api_key=owner) as client:
        assert [v.version for v in client.models.versions("iris")] == [2, 1]
        assert client.models.get_version("iris", alias="production").version == 1
    assert not (tmp_path / "new").exists()
    assert not (tmp_path / "no").exists()

    # a path that ends in a separator is a directory: the file goes inside it
    (tmp_path / "models").mkdir()
    code, out, err = run(
        capsys, *me, "model", "download", "iris", str(tmp_path / "models") + "/", "--alias", "production"
    )
    assert code == 0, err
    assert (tmp_path / "models" / "iris-v1.onnx").read_bytes() == onnx_model.read_bytes()


def test_the_sdk_refuses_ambiguous_arguments_and_malformed_keys(
    server: LocalServer, onnx_model: Path
) -> None:
    with Client.connect(server.target, api_key=f" {_owner(server)}\n") as client:
        client.models.register("iris", onnx_model, aliases=["production"])
        with pytest.raises(InvalidArgument, match="not both"):
            client.models.get_version("iris", 1, alias="production")
        with pytest.raises(InvalidArgument, match="limit must not be negative"):
            client.models.versions("iris", limit=-1)
        with pytest.raises(InvalidArgument, match="limit must not be negative"):
            client.audit(limit=-1)
        with pytest.raises(InvalidArgument, match="reference_data: reference data must be 2-D"):
            client.models.register("iris", onnx_model, reference_data=[[[1.0]]])
        assert len(client.models.versions("iris", limit=1)) == 1
    with pytest.raises(Unauthenticated, match="malformed API key"):
        Client.connect(server.target, api_key="fds_abc_d\u00e9f")


def test_a_full_artifact_quota_gets_its_own_exit_code(
    make_server: object, onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    size = onnx_model.stat().st_size
    limited = make_server(latency_runs=5, tenant_max_artifact_bytes=size + size // 2)  # type: ignore[operator]
    me = ("--server", limited.target, "--api-key", _owner(limited))
    code, _, err = run(capsys, *me, "model", "register", "iris", str(onnx_model))
    assert code == 0, err
    code, _, err = run(capsys, *me, "model", "register", "iris", str(onnx_model))
    assert code == exit_codes.LIMITED
    assert "--tenant-max-artifact-bytes" in err


def test_a_server_that_cannot_listen_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [*CLI, "server", "start", "--data-dir", str(tmp_path / "data"), "--listen", address],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == exit_codes.ERROR
    assert f"error: cannot listen on {address}" in result.stderr
    assert "Traceback" not in result.stderr

    a_file = tmp_path / "file"
    a_file.write_text("")
    result = subprocess.run(
        [*CLI, "server", "start", "--data-dir", str(a_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == exit_codes.ERROR
    assert "is a file, not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_local_server_cannot_be_started_twice() -> None:
    local = LocalServer(latency_runs=5).start()
    try:
        with pytest.raises(RuntimeError, match="running already"):
            local.start()
    finally:
        local.stop()
    with pytest.raises(RuntimeError, match="was stopped"):
        local.start()


def test_platform_admin_keys_rotate(make_server: object, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = make_server(latency_runs=5)  # type: ignore[operator]
    owner = _owner(fresh)
    with Client.connect(fresh.target, api_key=fresh.admin_key) as admin:
        first = admin.whoami().key_id
        new = admin.keys.create("admin", description="rotation")
        assert new.key.role == common_pb2.ROLE_ADMIN
        assert new.key.tenant == ""
        live = {k.key_id for k in admin.keys.list()}
        assert live == {first, new.key.key_id}
        with pytest.raises(InvalidArgument, match="platform admin keys"):
            admin.keys.create("viewer")  # a tenant key needs its tenant
    with Client.connect(fresh.target, api_key=new.secret) as rotated:
        assert rotated.whoami().role == common_pb2.ROLE_ADMIN
        assert rotated.keys.revoke(first).revoked_at.seconds > 0
        with pytest.raises(FailedPrecondition, match="last platform admin key"):
            rotated.keys.revoke(new.key.key_id)
        assert [k.key_id for k in rotated.keys.list()] == [new.key.key_id]
    with Client.connect(fresh.target, api_key=fresh.admin_key) as revoked:
        raises_soon(Unauthenticated, "revoked", revoked.whoami)
    with Client.connect(fresh.target, api_key=owner) as tenant_owner:
        with pytest.raises(InvalidArgument, match="role must be one of"):
            tenant_owner.keys.create("admin")
        with Client.connect(fresh.target, api_key=new.secret) as rotated, pytest.raises(NotFound):
            rotated.keys.revoke(tenant_owner.whoami().key_id)  # a tenant's key is no platform key
        assert tenant_owner.whoami().role == common_pb2.ROLE_OWNER
        assert all(k.role != common_pb2.ROLE_ADMIN for k in tenant_owner.keys.list(include_revoked=True))
    code, out, err = run(
        capsys,
        "--server",
        fresh.target,
        "--api-key",
        new.secret,
        "-o",
        "json",
        "key",
        "create",
        "--role",
        "admin",
    )
    assert code == 0, err
    assert json.loads(out)[0]["role"] == "ROLE_ADMIN"
