"""The store contract (foedus.server.store.base.Store), run on every backend: SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from foedus.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from foedus.server.store import (
    AuditRecord,
    FeatureProfile,
    KeyRecord,
    LatencyProfile,
    Lineage,
    NewVersion,
    ReferenceProfile,
    Role,
    Signature,
    TenantState,
    TensorSpec,
    VersionState,
)
from foedus.server.store.sql import SqlStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'foedus.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = SqlStore(url)
    s.create_tenant("acme", "Acme", "admin", 1)
    s.create_tenant("beta", "Beta", "admin", 1)
    yield s
    s.close()


def new_version(sha: str = "a" * 64, **kw: object) -> NewVersion:
    fields: dict[str, object] = dict(
        description="d",
        tags={"team": "risk"},
        artifact_sha256=sha,
        artifact_size=10,
        framework="onnx",
        onnx_opset=17,
        signature=Signature(
            (TensorSpec("input", "float32", (-1, 4)),), (TensorSpec("label", "int64", (-1,)),)
        ),
        latency=LatencyProfile(0.1, 0.2, 50, 1, "CPUExecutionProvider"),
        lineage=Lineage("data-1", "abc123", 0, {"k": "v"}),
        reference_profile=ReferenceProfile(
            100,
            (
                FeatureProfile("x0", "numeric", edges=(0.0, 1.0, 2.0), counts=(60, 40)),
                FeatureProfile(
                    "c", "categorical", categories=("a", "b"), counts=(70, 20), other=10, missing=3
                ),
            ),
        ),
        created_by="key1",
    )
    fields.update(kw)
    return NewVersion(**fields)  # type: ignore[arg-type]


def test_migrations_are_idempotent(store: SqlStore) -> None:
    from foedus.server.store.migrations import migrate

    migrate(store.engine)  # a second start finds nothing to do
    assert store.get_tenant("acme").display_name == "Acme"


def test_tenants(store: SqlStore) -> None:
    with pytest.raises(AlreadyExists):
        store.create_tenant("acme", "again", "admin", 2)
    with pytest.raises(NotFound):
        store.get_tenant("nope")
    assert store.set_tenant_state("acme", TenantState.DISABLED).state == TenantState.DISABLED
    assert store.get_tenant("acme").state == TenantState.DISABLED
    with pytest.raises(NotFound):
        store.set_tenant_state("nope", TenantState.DISABLED)


def test_tenant_paging_visits_each_once(store: SqlStore) -> None:
    for i in range(7):
        store.create_tenant(f"t{i}", "", "admin", 1)
    seen: list[str] = []
    token = ""
    while True:
        page = store.list_tenants(token, 3)
        assert len(page.items) <= 3
        seen += [t.name for t in page.items]
        token = page.next_token
        if not token:
            break
    assert seen == sorted(["acme", "beta", *(f"t{i}" for i in range(7))])
    with pytest.raises(InvalidArgument):
        store.list_tenants("!!not-a-token", 3)


def test_keys_are_scoped_and_revocable(store: SqlStore) -> None:
    key = KeyRecord("k1", "acme", Role.EDITOR, "ci", b"h" * 32, 5, "admin")
    store.create_key(key)
    store.create_key(KeyRecord("k2", "beta", Role.VIEWER, "", b"x" * 32, 5, "admin"))
    store.create_key(KeyRecord("adm", None, Role.ADMIN, "", b"y" * 32, 5, "boot"))
    found = store.find_key("k1")
    assert found is not None and found[0] == key and found[1] == TenantState.ACTIVE
    assert store.find_key("adm") is not None and store.find_key("adm")[1] is None  # type: ignore[index]
    assert store.find_key("zz") is None
    assert [k.key_id for k in store.list_keys("acme", False, "", 0).items] == ["k1"]
    assert [k.key_id for k in store.list_keys(None, False, "", 0).items] == ["adm"]
    with pytest.raises(NotFound):
        store.revoke_key("beta", "k1", 9)  # another tenant's key
    assert store.revoke_key("acme", "k1", 9).revoked_at_us == 9
    assert store.revoke_key("acme", "k1", 99).revoked_at_us == 9  # idempotent, keeps the first time
    assert store.list_keys("acme", False, "", 0).items == []
    assert len(store.list_keys("acme", True, "", 0).items) == 1
    assert store.count_keys(int(Role.ADMIN)) == 1
    with pytest.raises(NotFound):
        store.create_key(KeyRecord("k3", "nope", Role.VIEWER, "", b"z" * 32, 5, "admin"))


def test_audit_newest_first_and_scoped(store: SqlStore) -> None:
    for i in range(5):
        store.append_audit(AuditRecord(i, "acme", "k1", Role.EDITOR, "/m", f"r{i}", "OK"))
    store.append_audit(AuditRecord(9, "beta", "k2", Role.OWNER, "/m", "other", "OK"))
    page = store.list_audit("acme", "", 3)
    assert [a.resource for a in page.items] == ["r4", "r3", "r2"]
    rest = store.list_audit("acme", page.next_token, 3)
    assert [a.resource for a in rest.items] == ["r1", "r0"] and rest.next_token == ""
    assert [a.resource for a in store.list_audit("beta", "", 0).items] == ["other"]


def test_models_are_unique_per_tenant(store: SqlStore) -> None:
    store.create_model("acme", "churn", "", {}, "k", 1)
    store.create_model("beta", "churn", "", {}, "k", 1)  # same name, other tenant: fine
    with pytest.raises(AlreadyExists):
        store.create_model("acme", "churn", "", {}, "k", 1)
    assert [m.name for m in store.list_models("acme", "", "", 0).items] == ["churn"]
    with pytest.raises(NotFound):
        store.get_model("acme", "nope")


def test_versions_round_trip_and_number_up(store: SqlStore) -> None:
    v1 = store.create_version(
        "acme", "churn", new_version(), create_model=True, aliases=("production",), now_us=3
    )
    v2 = store.create_version(
        "acme", "churn", new_version("b" * 64), create_model=False, aliases=(), now_us=4
    )
    assert (v1.version, v2.version) == (1, 2)
    got = store.get_version("acme", "churn", 1)
    assert got == v1
    assert got.reference_profile is not None and got.reference_profile.features[1].other == 10
    assert store.get_version_by_alias("acme", "churn", "production").version == 1
    assert store.get_model("acme", "churn").latest_version == 2
    listed = store.list_versions("acme", "churn", False, "", 0).items
    assert [v.version for v in listed] == [2, 1]
    assert all(v.reference_profile is None for v in listed)  # lists leave profiles out
    with pytest.raises(NotFound):
        store.create_version("acme", "nope", new_version(), create_model=False, aliases=(), now_us=5)


def test_tenant_cannot_reach_another_tenants_versions(store: SqlStore) -> None:
    store.create_version("acme", "churn", new_version(), create_model=True, aliases=("production",), now_us=3)
    with pytest.raises(NotFound):
        store.get_version("beta", "churn", 1)
    with pytest.raises(NotFound):
        store.get_version_by_alias("beta", "churn", "production")
    with pytest.raises(NotFound):
        store.list_versions("beta", "churn", True, "", 0)
    with pytest.raises(NotFound):
        store.set_alias("beta", "churn", "production", 1, 5)
    with pytest.raises(NotFound):
        store.archive_version("beta", "churn", 1, 5)
    assert store.list_models("beta", "", "", 0).items == []


def test_concurrent_registrations_never_repeat_a_number(store: SqlStore) -> None:
    store.create_model("acme", "busy", "", {}, "k", 1)
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def register() -> None:
        try:
            for _ in range(10):
                v = store.create_version(
                    "acme", "busy", new_version(), create_model=False, aliases=("latest",), now_us=1
                )
                with lock:
                    numbers.append(v.version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(numbers) == list(range(1, 61))
    assert store.get_model("acme", "busy").latest_version == 60


def test_aliases_move_atomically_and_guard_archiving(store: SqlStore) -> None:
    store.create_version("acme", "churn", new_version(), create_model=True, aliases=("production",), now_us=3)
    store.create_version("acme", "churn", new_version(), create_model=False, aliases=("candidate",), now_us=4)
    model, previous = store.set_alias("acme", "churn", "production", 2, 5)
    assert previous == 1 and model.aliases == {"candidate": 2, "production": 2}
    with pytest.raises(FailedPrecondition):
        store.archive_version("acme", "churn", 2, 6)
    archived = store.archive_version("acme", "churn", 1, 6)
    assert archived.state == VersionState.ARCHIVED
    assert store.archive_version("acme", "churn", 1, 7).state == VersionState.ARCHIVED
    with pytest.raises(FailedPrecondition):
        store.set_alias("acme", "churn", "old", 1, 8)
    assert [v.version for v in store.list_versions("acme", "churn", False, "", 0).items] == [2]
    assert [v.version for v in store.list_versions("acme", "churn", True, "", 0).items] == [2, 1]
    assert store.delete_alias("acme", "churn", "candidate", 9).aliases == {"production": 2}
    with pytest.raises(NotFound):
        store.delete_alias("acme", "churn", "candidate", 9)
    with pytest.raises(NotFound):
        store.set_alias("acme", "churn", "production", 99, 9)


def test_referenced_digests_cover_archived_versions(store: SqlStore) -> None:
    store.create_version("acme", "m", new_version("c" * 64), create_model=True, aliases=(), now_us=1)
    store.create_version("beta", "m", new_version("d" * 64), create_model=True, aliases=(), now_us=1)
    store.archive_version("acme", "m", 1, 2)
    assert store.referenced_digests() == {"c" * 64, "d" * 64}


def test_serving_versions_cannot_be_archived(store: SqlStore) -> None:
    store.create_version("acme", "m", new_version(), create_model=True, aliases=(), now_us=1)
    store.create_version("acme", "m", new_version(), create_model=False, aliases=(), now_us=1)
    store.create_deployment("acme", "prod", "m", "", ((1, 1.0),), 2, "k", 1)
    for version in (1, 2):  # in the traffic, and mirrored as shadow
        with pytest.raises(FailedPrecondition, match="prod"):
            store.archive_version("acme", "m", version, 2)
    store.set_traffic("acme", "prod", ((2, 1.0),), 0, 3)
    assert store.archive_version("acme", "m", 1, 4).state == VersionState.ARCHIVED


def test_logged_series_are_stored_once_and_read_by_range(store: SqlStore) -> None:
    import numpy as np

    from foedus.server.store import MetricSeriesRecord

    store.create_version("acme", "m", new_version(), create_model=True, aliases=(), now_us=1)
    store.create_deployment("acme", "prod", "m", "", ((1, 1.0),), 0, "k", 1)
    times = np.arange(1000, 6000, 10, dtype="<i8")
    chunk = MetricSeriesRecord(
        "loss", times.tobytes(), (times / 1000.0).astype("<f8").tobytes(), b"", len(times), 1000, 5990
    )
    assert store.ingest_telemetry("acme", "prod", "sdk", "b1", [], [], [chunk], 1) is False
    assert store.ingest_telemetry("acme", "prod", "sdk", "b1", [], [], [chunk], 2) is True  # a retry
    points = store.query_metric_points("acme", "prod", "loss", 2000, 3000)
    assert [p.time_ms for p in points] == list(range(2000, 3000, 10))
    assert points[0].value == 2.0
    assert store.query_metric_points("acme", "prod", "other", 0, 10**9) == []
