"""The registry through the SDK against a real server: gates, artifacts, aliases, tenancy, audit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testkit import raises_soon, wait_for

from foedus.client_sdk import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from foedus.client_sdk.testing import LocalServer, ReplicaSet
from foedus.server.store.sql import SqlStore
from foedus.v1 import registry_pb2, registry_pb2_grpc


def blob_files(server: LocalServer) -> set[Path]:
    return set((server.data_dir / "artifacts" / "sha256").rglob("*"))


def stored_copies(server: LocalServer, digest: str) -> int:
    """How many copies of a blob the server keeps: files in its artifact directory or, for replicas
    (the database artifact store), rows in the database; each replica's read cache holds one at most."""
    if not isinstance(server, ReplicaSet):
        return sum(1 for p in blob_files(server) if p.name == digest)
    for replica in server.replicas:
        assert len([p for p in blob_files(replica) if p.name == digest]) <= 1
    store = SqlStore(server.replicas[0].settings["db"], run_migrations=False)
    try:
        return sum(1 for stored, _ in store.blob_digests() if stored == digest)
    finally:
        store.close()


def test_onnx_gates_record_signature_latency_and_profile(tenant: Client, onnx_model: Path) -> None:
    x = np.random.default_rng(0).normal(size=(200, 4))
    v = tenant.models.register(
        "iris",
        onnx_model,
        lineage={"data_fingerprint": "iris-v1", "code_revision": "abc", "parent_version": 0, "owner": "ml"},
        reference_data=x,
        feature_names=["sl", "sw", "pl", "pw"],
    )
    got = tenant.models.get_version("iris", v.version)
    assert got.artifact.onnx_opset == 17
    assert [(o.name, o.dtype) for o in got.signature.outputs] == [
        ("label", "int64"),
        ("probabilities", "float32"),
    ]
    assert got.latency.runs >= 5
    assert 0 < got.latency.p50_ms <= got.latency.p99_ms
    assert got.lineage.data_fingerprint == "iris-v1"
    assert dict(got.lineage.properties) == {"owner": "ml"}
    assert [f.name for f in got.reference_profile.features] == ["sl", "sw", "pl", "pw"]
    assert sum(got.reference_profile.features[0].numeric.counts) == 200


def test_rejected_artifacts_leave_nothing_behind(server: LocalServer, tenant: Client, tmp_path: Path) -> None:
    before = blob_files(server)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf" * 100)
    with pytest.raises(InvalidArgument, match="not a valid ONNX model") as refused:
        tenant.models.register("bad", bad)
    assert str(server.data_dir) not in refused.value.message  # the server's paths stay private
    with pytest.raises(NotFound):
        tenant.models.get("bad")  # not even the model was created
    assert blob_files(server) == before
    assert list((server.data_dir / "artifacts" / "tmp").iterdir()) == []


def test_profile_must_match_the_input_width(tenant: Client, onnx_model: Path) -> None:
    with pytest.raises(InvalidArgument, match="3 features but the model's input"):
        tenant.models.register("iris", onnx_model, reference_data=np.zeros((10, 3)))


def test_identical_content_is_stored_once(server: LocalServer, tenant: Client, tmp_path: Path) -> None:
    art = tmp_path / "weights.bin"
    art.write_bytes(np.random.default_rng(7).bytes(300_000))
    a = tenant.models.register("dedup", art)
    b = tenant.models.register("dedup", art)
    assert (a.version, b.version) == (1, 2)
    assert a.artifact.sha256 == b.artifact.sha256
    assert stored_copies(server, a.artifact.sha256) == 1


def test_download_is_verified_and_archived_versions_stay_readable(tenant: Client, tmp_path: Path) -> None:
    art = tmp_path / "model.bin"
    art.write_bytes(np.random.default_rng(3).bytes(2_500_000))  # several chunks
    v1 = tenant.models.register("dl", art, aliases=["production"])
    tenant.models.register("dl", art)
    out = tenant.models.download("dl", tmp_path / "out.bin", alias="production")
    assert out.read_bytes() == art.read_bytes()
    with pytest.raises(FailedPrecondition, match="alias"):
        tenant.models.archive("dl", v1.version)
    tenant.models.set_alias("dl", "production", 2)
    tenant.models.archive("dl", v1.version)
    assert [v.version for v in tenant.models.versions("dl")] == [2]
    assert tenant.models.download("dl", tmp_path, 1).read_bytes() == art.read_bytes()
    with pytest.raises(FailedPrecondition, match="archived"):
        tenant.models.set_alias("dl", "rollback", 1)


def test_downloads_get_the_permissions_the_umask_gives(tenant: Client, tmp_path: Path) -> None:
    import os
    import stat

    art = tmp_path / "model.bin"
    art.write_bytes(b"weights" * 1000)
    tenant.models.register("perm", art)
    for umask, mode in [(0o022, 0o644), (0o077, 0o600)]:
        previous = os.umask(umask)
        try:
            out = tenant.models.download("perm", tmp_path / f"out-{umask:o}.bin", 1)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(out.stat().st_mode) == mode
        assert out.read_bytes() == art.read_bytes()
    assert not list(tmp_path.glob(".*.part"))  # no partial file left beside them


def test_aliases_move_and_report_where_they_were(tenant: Client, tmp_path: Path) -> None:
    art = tmp_path / "a.bin"
    art.write_bytes(b"x" * 10)
    tenant.models.register("al", art, aliases=["production", "candidate"])
    tenant.models.register("al", art)
    assert tenant.models.set_alias("al", "production", 2) == 1
    assert tenant.models.set_alias("al", "fresh", 2) == 0
    assert dict(tenant.models.get("al").aliases) == {"candidate": 1, "fresh": 2, "production": 2}
    assert list(tenant.models.get_version("al", 2).aliases) == ["fresh", "production"]
    tenant.models.delete_alias("al", "candidate")
    with pytest.raises(NotFound):
        tenant.models.get_version("al", alias="candidate")


def test_paging_through_many_models(tenant: Client) -> None:
    for i in range(12):
        tenant.models.create(f"m{i:02d}")
    with pytest.raises(AlreadyExists):
        tenant.models.create("m00")
    names = [m.name for m in tenant.models.list(name_prefix="m")]
    assert names == [f"m{i:02d}" for i in range(12)]


def test_parent_version_must_be_a_version_of_the_same_model(
    server: LocalServer, tenant: Client, tmp_path: Path
) -> None:
    art = tmp_path / "weights.bin"
    art.write_bytes(np.random.default_rng(5).bytes(50_000))
    v1 = tenant.models.register("child", art)
    tenant.models.archive("child", v1.version)  # an archived parent is still a parent
    v2 = tenant.models.register("child", art, lineage={"parent_version": v1.version})
    assert tenant.models.get_version("child", v2.version).lineage.parent_version == v1.version
    for _ in range(3):  # version 3 exists, but of another model of this tenant
        tenant.models.register("other", art)
    with Client.connect(server.target, api_key=server.create_tenant("parents-b")) as b:
        b.models.register("child", art)
        b.models.register("child", art)
        b.models.register("child", art)
    before = blob_files(server)
    refused = [
        ("child", 3),  # not a version of "child" (model "other", and tenant b's "child", have one)
        ("fresh", 1),  # a model created by this very registration has no versions yet
    ]
    for model, parent in refused:
        with pytest.raises(
            InvalidArgument, match=f"parent_version {parent} is not a version of model '{model}'"
        ):
            tenant.models.register(model, art, lineage={"parent_version": parent})
    assert [v.version for v in tenant.models.versions("child", include_archived=True)] == [2, 1]
    with pytest.raises(NotFound):
        tenant.models.get("fresh")
    assert blob_files(server) == before


def test_disabled_tenant_and_revoked_key_are_refused(server: LocalServer) -> None:
    owner = server.create_tenant("gated")
    with server.client() as admin, Client.connect(server.target, api_key=owner) as client:
        editor = client.keys.create("editor", description="ci")
        with Client.connect(server.target, api_key=editor.secret) as ci:
            ci.models.create("x")
            client.keys.revoke(editor.key.key_id)
            raises_soon(Unauthenticated, "revoked", lambda: ci.models.get("x"))
        admin.tenants.disable("gated")
        raises_soon(PermissionDenied, "disabled", lambda: client.models.get("x"))
        admin.tenants.enable("gated")

        def served() -> bool:
            try:
                return client.models.get("x").name == "x"
            except PermissionDenied:
                return False

        wait_for(served, 10, "the tenant enabled again to be served")


def test_audit_records_mutations_with_outcome(server: LocalServer) -> None:
    owner = server.create_tenant("audited")
    with Client.connect(server.target, api_key=owner) as client:
        viewer = client.keys.create("viewer")
        client.models.create("a")
        with pytest.raises(AlreadyExists):
            client.models.create("a")
        with Client.connect(server.target, api_key=viewer.secret) as v:
            with pytest.raises(PermissionDenied):
                v.models.create("b")
            with pytest.raises(PermissionDenied):
                v.audit()
        entries = client.audit()
    got = [(e.method.rsplit("/", 1)[1], e.resource, e.outcome) for e in entries]
    assert got[:4] == [
        ("CreateModel", "", "PERMISSION_DENIED"),
        ("CreateModel", "models/a", "ALREADY_EXISTS"),
        ("CreateModel", "models/a", "OK"),
        ("CreateKey", f"tenants/audited/keys/{viewer.key.key_id}", "OK"),
    ]
    assert all(e.tenant == "audited" for e in entries)
    with server.client() as admin:
        assert [e.id for e in admin.audit(tenant="audited")] == [e.id for e in entries]
        platform = admin.audit(limit=None)  # no tenant: the platform's own calls
        assert ("CreateTenant", "tenants/audited") in {
            (e.method.rsplit("/", 1)[1], e.resource) for e in platform
        }
        assert all(e.tenant == "" for e in platform)


def test_an_upload_the_client_cancels_is_audited_as_cancelled(server: LocalServer) -> None:
    owner = server.create_tenant("cancelling")
    sent = threading.Event()
    release = threading.Event()

    def requests() -> Iterator[registry_pb2.CreateModelVersionRequest]:
        spec = registry_pb2.VersionSpec(model="half", create_model=True, framework="custom", size_bytes=2_000)
        yield registry_pb2.CreateModelVersionRequest(spec=spec)
        yield registry_pb2.CreateModelVersionRequest(chunk=b"x" * 1_000)
        sent.set()
        release.wait(30)  # the rest of the artifact never comes

    with (
        grpc.insecure_channel(server.target) as channel,
        Client.connect(server.target, api_key=owner) as client,
    ):
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        call = stub.CreateModelVersion.future(requests(), metadata=(("authorization", f"Bearer {owner}"),))
        assert sent.wait(30)

        def uploads_in_progress() -> list[Path]:  # the server streams an upload to a .part file
            return list(server.data_dir.rglob("*.part"))

        wait_for(lambda: bool(uploads_in_progress()), 20, "the server to receive the upload")
        call.cancel()
        release.set()

        def audited() -> list[str]:
            return [e.outcome for e in client.audit() if e.method.endswith("/CreateModelVersion")]

        wait_for(lambda: audited() == ["CANCELLED"], 20, "the cancelled upload in the audit log")
        wait_for(lambda: not uploads_in_progress(), 20, "the partial upload to be removed")
        with pytest.raises(NotFound):
            client.models.get("half")


def test_health_and_reflection_are_served(server: LocalServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "foedus.v1.RegistryService", "foedus.v1.AdminService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert {"foedus.v1.RegistryService", "foedus.v1.KeyService"} <= set(services)


def test_server_on_postgresql(postgres_url: str, onnx_model: Path, tmp_path: Path) -> None:
    with LocalServer(tmp_path, db=postgres_url, latency_runs=3) as pg:
        key = pg.create_tenant("pg")
        with Client.connect(pg.target, api_key=key) as client:
            v = client.models.register("iris", onnx_model, aliases=["production"])
            assert client.models.get_version("iris", alias="production").artifact.sha256 == v.artifact.sha256
    # a restart on the same database finds everything again
    with (
        LocalServer(tmp_path, db=postgres_url, latency_runs=3) as again,
        Client.connect(again.target, api_key=key) as c,
    ):
        assert c.models.get("iris").latest_version == 1


def _raw_call(target: str, key: str, method: str, frames: list[bytes]) -> grpc.RpcError:
    """Sends `frames` as the serialized request(s), bypassing the SDK's serializers."""
    metadata = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(target) as channel:
        if method.endswith("CreateModelVersion"):
            call = channel.stream_unary(method)
            with pytest.raises(grpc.RpcError) as info:
                call(iter(frames), metadata=metadata, timeout=10)
        else:
            unary = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as info:
                unary(frames[0], metadata=metadata, timeout=10)
    return info.value


def test_requests_that_do_not_parse_are_invalid_argument(server: LocalServer, onnx_model: Path) -> None:
    # grpc alone answers UNKNOWN for a unary request that does not parse, INTERNAL for a stream.
    owner = server.create_tenant("garbled")
    garbage = b"\xff\xff\xff"
    for method in ("/foedus.v1.RegistryService/GetModel", "/grpc.health.v1.Health/Check"):
        err = _raw_call(server.target, owner, method, [garbage])
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
        assert "malformed request" in (err.details() or "")
    from foedus.v1 import registry_pb2

    data = onnx_model.read_bytes()
    spec = registry_pb2.VersionSpec(model="fresh", framework="onnx", size_bytes=len(data), create_model=True)
    frames = [
        registry_pb2.CreateModelVersionRequest(spec=spec).SerializeToString(),
        registry_pb2.CreateModelVersionRequest(chunk=data[:100]).SerializeToString(),
        garbage,
    ]
    before = blob_files(server)
    err = _raw_call(server.target, owner, "/foedus.v1.RegistryService/CreateModelVersion", frames)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "do not parse as a foedus.v1.CreateModelVersionRequest message" in (err.details() or "")
    with Client.connect(server.target, api_key=owner) as client:
        # The upload begun before the bad message is undone; the audit says what the caller saw.
        assert client.models.list() == []
        assert blob_files(server) == before
        entry = client.audit()[0]
        assert (entry.method.rsplit("/", 1)[1], entry.outcome) == ("CreateModelVersion", "INVALID_ARGUMENT")
        assert "do not parse" in entry.detail


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_text_with_nul_characters_is_refused_on_every_store(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # PostgreSQL cannot store NUL in text: unchecked, it failed the call with INTERNAL after the
    # checks, and lost the call's audit entry; SQLite stored it. Both refuse it now, up front.
    settings = {"db": request.getfixturevalue("postgres_url")} if store == "postgresql" else {}
    with LocalServer(tmp_path, **settings) as srv:
        key = srv.create_tenant("nul")
        with Client.connect(srv.target, api_key=key) as client:
            with pytest.raises(InvalidArgument, match=r"description: text must not contain NUL"):
                client.models.create("m", description="a\x00b")
            with pytest.raises(InvalidArgument, match=r"tags\['k'\]: text must not contain NUL"):
                client.models.create("m", tags={"k": "v\x00"})
            assert client.models.list() == []
            client.models.create("m", description="ab")
            assert [m.name for m in client.models.list()] == ["m"]
        with srv.client() as admin:
            with pytest.raises(InvalidArgument, match="NUL"):
                admin.tenants.create("other", display_name="x\x00")
            assert "other" not in {t.name for t in admin.tenants.list()}


def test_version_reads_follow_every_change(tenant: Client, onnx_model: Path) -> None:
    """Reads of an unchanged version reuse its decoded answer; every change shows at the next read,
    on each server (replica) alike."""
    tenant.models.register("churn", onnx_model)
    tenant.models.register("churn", onnx_model)
    for _ in range(3):  # the answer is built, then reused
        assert tenant.models.get_version("churn", 1).aliases == []
    tenant.models.set_alias("churn", "production", 1)
    assert list(tenant.models.get_version("churn", 1).aliases) == ["production"]
    tenant.models.set_alias("churn", "candidate", 1)
    assert sorted(tenant.models.get_version("churn", 1).aliases) == ["candidate", "production"]
    tenant.models.set_alias("churn", "production", 2)  # moved away from version 1
    assert list(tenant.models.get_version("churn", 1).aliases) == ["candidate"]
    assert list(tenant.models.get_version("churn", 2).aliases) == ["production"]
    recorded = tenant.models.record_evaluation("churn", 1, "holdout", {"auc": 0.9})
    assert [e.dataset for e in tenant.models.get_version("churn", 1).lineage.evaluations] == ["holdout"]
    assert recorded.lineage.evaluations[0].metrics["auc"] == pytest.approx(0.9)
    tenant.models.delete_alias("churn", "candidate")
    archived = tenant.models.archive("churn", 1)
    got = tenant.models.get_version("churn", 1)
    assert got.state == archived.state == registry_pb2.VERSION_STATE_ARCHIVED
    assert list(got.aliases) == []
