"""The store contract (foedus.server.store.base.Store), run on every backend: SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from foedus.server.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
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
from foedus.server.store.records import (
    AlertRecord,
    IncidentState,
    RolloutEventRecord,
    RolloutPhase,
    RolloutRecord,
    Strategy,
    TrafficChange,
    WebhookRecord,
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


def test_registry_usage_counts_a_tenants_models_and_artifact_bytes(store: SqlStore) -> None:
    assert store.registry_usage("acme") == (0, 0)
    store.create_model("acme", "empty", "", {}, "k", 1)
    store.create_version(
        "acme", "churn", new_version(artifact_size=100), create_model=True, aliases=(), now_us=2
    )
    store.create_version(
        "acme", "churn", new_version(artifact_size=100), create_model=False, aliases=(), now_us=3
    )
    store.create_version(
        "beta", "other", new_version(artifact_size=7), create_model=True, aliases=(), now_us=4
    )
    assert store.registry_usage("acme") == (2, 200)  # a shared artifact counts per version
    assert store.registry_usage("beta") == (1, 7)


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


def _rollout(**kw: object) -> RolloutRecord:
    fields: dict[str, object] = dict(
        id=0,
        tenant="acme",
        deployment="prod",
        model="m",
        stable_version=1,
        candidate_version=2,
        strategy=Strategy.CANARY,
        phase=RolloutPhase.PROGRESSING,
        step=0,
        candidate_weight=10.0,
        reason="canary 10%",
        spec={"deployment": "prod", "version": 2, "strategy": 1},
        state={"cursor": 0, "analysis": {"grid": [0.5, 1.5]}},
        analysis={"candidate_requests": 0.0},
        winner_version=0,
        revision=0,
        scheduled_for_us=5,
        started_at_us=5,
        finished_at_us=0,
        created_at_us=5,
        created_by="k",
        updated_at_us=5,
    )
    fields.update(kw)
    return RolloutRecord(**fields)  # type: ignore[arg-type]


def _event(kind: str, t: int = 5) -> RolloutEventRecord:
    return RolloutEventRecord(0, t, kind, f"{kind} happened", 0, 10.0, {"x": 1.5})


def _deployed(store: SqlStore) -> None:
    store.create_version("acme", "m", new_version(), create_model=True, aliases=(), now_us=1)
    store.create_version("acme", "m", new_version(), create_model=False, aliases=(), now_us=1)
    store.create_deployment("acme", "prod", "m", "", ((1, 1.0),), 0, "k", 1)


def test_rollouts_one_active_per_deployment_with_traffic_in_the_same_transaction(store: SqlStore) -> None:
    _deployed(store)
    change = TrafficChange(((1, 90.0), (2, 10.0)), 0)
    r = store.create_rollout(_rollout(), [_event("started")], change)
    assert (r.id > 0, r.revision) == (True, 1)
    d = store.get_deployment("acme", "prod")
    assert (d.traffic, d.generation) == (((1, 90.0), (2, 10.0)), 2)
    with pytest.raises(FailedPrecondition, match="active rollout"):
        store.create_rollout(_rollout(), [], None)
    assert store.get_deployment("acme", "prod").generation == 2  # the refused start changed nothing
    # the state, including nested JSON, round-trips
    got = store.get_rollout("acme", r.id)
    assert got == dataclasses.replace(_rollout(), id=r.id, revision=1)
    assert store.latest_rollout("acme", "prod").id == r.id
    assert [x.id for x in store.active_rollouts()] == [r.id]
    # another tenant sees nothing of it
    with pytest.raises(NotFound):
        store.get_rollout("beta", r.id)
    with pytest.raises(NotFound):
        store.list_rollout_events("beta", r.id, 0, 10)
    assert store.list_rollouts("beta", None, False, "", 10).items == []
    # finishing frees the deployment for the next rollout
    done = store.update_rollout(
        dataclasses.replace(got, phase=RolloutPhase.ROLLED_BACK, finished_at_us=9, candidate_weight=0.0),
        [_event("rolled_back", 9)],
        TrafficChange(((1, 100.0),), 0),
    )
    assert done.revision == 2
    assert store.active_rollouts() == []
    assert store.get_deployment("acme", "prod").traffic == ((1, 100.0),)
    second = store.create_rollout(_rollout(created_at_us=10), [_event("started", 10)], None)
    assert [x.id for x in store.list_rollouts("acme", "prod", False, "", 10).items] == [second.id, r.id]
    assert [x.id for x in store.list_rollouts("acme", None, True, "", 10).items] == [second.id]
    assert [x.id for x in store.finished_rollouts("acme", "m", 0)] == [r.id]
    assert store.finished_rollouts("acme", "other", 0) == []


def test_rollout_updates_are_guarded_by_revision_and_events_numbered(store: SqlStore) -> None:
    _deployed(store)
    r = store.create_rollout(_rollout(), [_event("started"), _event("gate")], None)
    first = store.update_rollout(
        dataclasses.replace(r, step=1), [_event("step", 6)], TrafficChange(((2, 100.0),), 0)
    )
    # a writer holding the old revision loses, and writes nothing at all
    with pytest.raises(Aborted):
        store.update_rollout(
            dataclasses.replace(r, step=3), [_event("step", 7)], TrafficChange(((1, 100.0),), 0)
        )
    assert store.get_rollout("acme", r.id).step == 1
    assert store.get_deployment("acme", "prod").traffic == ((2, 100.0),)
    events = store.list_rollout_events("acme", r.id, 0, 100)
    assert [(e.seq, e.kind) for e in events] == [(1, "started"), (2, "gate"), (3, "step")]
    assert events[0].evidence == {"x": 1.5}
    assert [e.seq for e in store.list_rollout_events("acme", r.id, 1, 1)] == [2]
    assert first.revision == 2


def test_intervals_after_and_hourly_request_history(store: SqlStore) -> None:
    from foedus.server.store import IntervalRecord

    _deployed(store)
    hour = 3_600_000

    def interval(start: int, requests: int, shadow: bool = False) -> IntervalRecord:
        return IntervalRecord("a", 1, start, 1000, shadow, requests, 0, 0, {}, None, [], {}, {})

    store.ingest_telemetry(
        "acme", "prod", "a", "b1", [interval(hour + 5, 10), interval(hour + 9, 7, True)], [], [], 1
    )
    mark = store.last_interval_id("acme", "prod")
    store.ingest_telemetry(
        "acme", "prod", "a", "b2", [interval(2 * hour + 1, 4), interval(3 * hour - 1, 6)], [], [], 2
    )
    after = store.intervals_after("acme", "prod", mark, 10)
    assert [n.interval.requests for n in after] == [4, 6]
    assert after[0].id > mark
    assert store.intervals_after("acme", "prod", mark, 1)[0].interval.requests == 4
    history = store.request_rate_history("acme", "prod", 0, 4 * hour, hour)
    assert history == [(hour, 10, 1000), (2 * hour, 10, 2000)]  # shadow requests left out
    with pytest.raises(NotFound):
        store.intervals_after("beta", "prod", 0, 10)


def test_counts_only_interval_queries_leave_the_drift_counts_out(store: SqlStore) -> None:
    from foedus.server.store import IntervalRecord

    _deployed(store)
    features = [{"name": "x", "counts": [1, 2]}]
    full = IntervalRecord(
        "a", 1, 5, 1000, False, 3, 1, 0, {"sum": 1.0}, {"name": "p", "counts": [3]}, features, {}, {"s": 2.0}
    )
    store.ingest_telemetry("acme", "prod", "a", "b1", [full], [], [], 1)
    (got,) = store.query_intervals("acme", "prod", None, 0, 10)
    assert got == full
    (lean,) = store.query_intervals("acme", "prod", None, 0, 10, counts_only=True)
    assert lean == dataclasses.replace(full, features=[], predictions=None)


def test_status_and_metric_series_add_up_the_streamed_intervals(store: SqlStore) -> None:
    from foedus.server.monitoring.service import MonitoringService
    from foedus.server.store import IntervalRecord
    from foedus.server.store.records import Role
    from foedus.server.tenancy.principal import Principal

    _deployed(store)
    now_ms = 10_000_000
    rows = [
        IntervalRecord(
            agent="a",
            version=1 + i % 2,
            start_ms=now_ms - 200_000 + i * 100,
            duration_ms=100,
            shadow=i % 3 == 2,
            requests=10 + i % 7,
            errors=i % 2,
            invalid=int(i % 5 == 0),
            latency={},
            predictions=None,
            features=[],
            resources={"cpu": float(i % 10)},
            scores={"anomaly": float(i % 13 + i // 100)},
        )
        for i in range(600)  # more than one batch of streamed rows
    ]
    store.ingest_telemetry("acme", "prod", "a", "b1", rows, [], [], 1)
    streamed = list(store.stream_intervals("acme", "prod", None, 0, now_ms))
    assert streamed == store.query_intervals("acme", "prod", None, 0, now_ms, counts_only=True)
    assert [r.version for r in store.stream_intervals("acme", "prod", 2, 0, now_ms)] == [2] * 300

    service = MonitoringService(store, clock=lambda: now_ms * 1000)
    owner = Principal("k", Role.OWNER, "acme")
    _, _, stats = service.status(owner, "prod", 300)
    for s in stats:  # per version, served and shadow apart
        group = [r for r in rows if (r.version, r.shadow) == (s.version, s.shadow)]
        assert (s.requests, s.errors, s.invalid) == (
            sum(r.requests for r in group),
            sum(r.errors for r in group),
            sum(r.invalid for r in group),
        )
        assert s.max_anomaly_score == max(r.scores["anomaly"] for r in group)
    assert sorted((s.version, s.shadow) for s in stats) == [(1, False), (1, True), (2, False), (2, True)]

    start = now_ms - 200_000
    series = dict(service.query(owner, "prod", "requests", 0, start, now_ms, 10))
    cpu = dict(service.query(owner, "prod", "cpu", 0, start, now_ms, 10))
    for step in range(6):  # 100 intervals a step; shadow traffic stays out of the counts
        in_step = rows[step * 100 : (step + 1) * 100]
        t = start + step * 10_000
        assert series[t] == sum(r.requests for r in in_step if not r.shadow)
        assert cpu[t] == pytest.approx(sum(r.resources["cpu"] for r in in_step) / len(in_step))
    assert len(series) == 6


def test_leases_are_exclusive_until_they_expire(store: SqlStore) -> None:
    assert store.acquire_lease("controller", "a", now_us=100, ttl_us=50)
    assert not store.acquire_lease("controller", "b", now_us=120, ttl_us=50)
    assert store.acquire_lease("controller", "a", now_us=140, ttl_us=50)  # renewed until 190
    assert not store.acquire_lease("controller", "b", now_us=180, ttl_us=50)
    assert store.acquire_lease("controller", "b", now_us=191, ttl_us=50)
    assert not store.acquire_lease("controller", "a", now_us=200, ttl_us=50)


def test_server_members_register_renew_and_expire(store: SqlStore) -> None:
    assert store.renew_member("a", now_us=100, ttl_us=50) == 1  # registered
    assert store.renew_member("b", now_us=120, ttl_us=50) == 2
    assert store.renew_member("a", now_us=160, ttl_us=50) == 2  # renewed; b (120) is still live
    assert store.renew_member("a", now_us=171, ttl_us=50) == 1  # b was last renewed 51 us ago
    assert store.renew_member("b", now_us=180, ttl_us=50) == 2  # an expired member comes back
    store.remove_member("b")
    store.remove_member("b")  # gone already: nothing to do
    assert store.renew_member("a", now_us=190, ttl_us=50) == 1
    assert store.renew_member("c", now_us=300, ttl_us=50) == 1  # a expired meanwhile


def test_evaluations_append_to_the_lineage(store: SqlStore) -> None:
    from foedus.server.store import Evaluation

    _deployed(store)
    ev = Evaluation("holdout", {"accuracy": 0.9}, 30, 1, {"accuracy": 0.8}, "f" * 64, 7, "k")
    store.add_evaluation("acme", "m", 2, ev)
    v = store.add_evaluation("acme", "m", 2, dataclasses.replace(ev, dataset="other"))
    assert [e.dataset for e in v.lineage.evaluations] == ["holdout", "other"]
    assert v.lineage.evaluations[0] == ev
    assert v.lineage.data_fingerprint == "data-1"  # the rest of the lineage is untouched
    with pytest.raises(NotFound):
        store.add_evaluation("beta", "m", 2, ev)
    with pytest.raises(NotFound):
        store.add_evaluation("acme", "m", 9, ev)


def test_federation_keys_runs_and_opt_ins(store: SqlStore) -> None:
    from foedus.server.store.records import (
        FederationRunRecord,
        FederationRunState,
        NodeKeyRecord,
        OptInRecord,
    )

    key = NodeKeyRecord("f" * 64, "acme", "-----BEGIN PUBLIC KEY-----\n...\n", "node 1", 5, "admin")
    store.add_node_key(key)
    with pytest.raises(AlreadyExists):
        store.add_node_key(dataclasses.replace(key, tenant="beta"))  # one key, one tenant
    with pytest.raises(NotFound):
        store.add_node_key(dataclasses.replace(key, fingerprint="e" * 64, tenant="ghost"))
    assert store.list_node_keys("acme", False) == [key]
    assert store.list_node_keys("beta", True) == []
    with pytest.raises(NotFound):
        store.revoke_node_key("beta", key.fingerprint, 9)
    assert store.revoke_node_key("acme", key.fingerprint, 9).revoked_at_us == 9
    assert store.revoke_node_key("acme", key.fingerprint, 11).revoked_at_us == 9  # the first time stays
    assert store.list_node_keys("acme", False) == []
    assert [k.revoked_at_us for k in store.list_node_keys(None, True)] == [9]

    run = FederationRunRecord(
        0,
        "anomaly",
        "fedavg",
        3,
        {"mode": ""},
        FederationRunState.RUNNING,
        ("acme",),
        (),
        "",
        0,
        "",
        1,
        "admin",
        1,
        0,
    )
    first = store.create_federation_run(run)
    second = store.create_federation_run(dataclasses.replace(run, tenants=("acme", "beta")))
    assert store.get_federation_run(first.id, "acme") == first
    with pytest.raises(NotFound):
        store.get_federation_run(first.id, "beta")  # beta did not take part
    assert [r.id for r in store.list_federation_runs("beta", "", 10).items] == [second.id]
    page = store.list_federation_runs(None, "", 1)
    assert [r.id for r in page.items] == [second.id]
    assert [r.id for r in store.list_federation_runs(None, page.next_token, 1).items] == [first.id]
    rounds = ({"round": 1, "metrics": {"loss": 0.5}, "nodes": 1, "bytes": 10, "seconds": 0.1},)
    done = dataclasses.replace(first, history=rounds, state=FederationRunState.FAILED, finished_at_us=7)
    store.update_federation_run(done)
    assert store.get_federation_run(first.id, None) == done

    store.create_version("acme", "m", new_version(), create_model=True, aliases=(), now_us=1)
    store.create_deployment("acme", "prod", "m", "", ((1, 1.0),), 0, "k", 1)
    opt = OptInRecord("acme", "anomaly", "prod", 3, "owner")
    store.set_opt_in(opt, True)
    store.set_opt_in(dataclasses.replace(opt, deployment="prod"), True)  # replaces, never duplicates
    assert store.list_opt_ins("acme", None) == [opt]
    assert store.list_opt_ins("beta", None) == []
    assert store.list_opt_ins(None, "resource") == []
    store.set_opt_in(opt, False)
    assert store.list_opt_ins(None, None) == []


def test_blobs_are_stored_whole_once_and_read_back_in_order(store: SqlStore) -> None:
    digest = "ab" * 32
    chunks = [b"first chunk ", b"second chunk ", b"last"]
    assert store.blob_size(digest) is None
    with pytest.raises(NotFound):
        list(store.blob_chunks(digest))
    assert store.put_blob(digest, sum(map(len, chunks)), iter(chunks), now_us=100)
    assert store.blob_size(digest) == sum(map(len, chunks))
    assert list(store.blob_chunks(digest)) == chunks
    # Stored again (another replica, a re-upload): nothing written, its time refreshed.
    assert not store.put_blob(digest, 3, iter([b"xyz"]), now_us=200)
    assert list(store.blob_chunks(digest)) == chunks
    assert store.blob_digests() == [(digest, 200)]
    store.delete_blob(digest)
    assert store.blob_size(digest) is None and store.blob_digests() == []


def test_a_failed_blob_write_leaves_nothing_behind(store: SqlStore) -> None:
    digest = "cd" * 32

    def broken() -> Iterator[bytes]:
        yield b"some bytes"
        raise OSError("the upload file went away")

    with pytest.raises(OSError):
        store.put_blob(digest, 10, broken(), now_us=1)
    assert store.blob_size(digest) is None
    assert store.put_blob(digest, 4, iter([b"good"]), now_us=2)
    assert list(store.blob_chunks(digest)) == [b"good"]


def test_labels_are_sequenced_per_deployment_and_scoped(store: SqlStore) -> None:
    _deployed(store)
    first, last = store.add_labels("acme", "prod", ["r1", "r2", "r3"], ["0", "1", "2"], 5)
    assert last - first == 2
    more = store.add_labels("acme", "prod", ["r4"], ["1"], 6)
    assert more[0] > last
    pulled = store.labels_after("acme", "prod", 0, 100)
    assert [(r.request_id, r.label) for r in pulled] == [("r1", "0"), ("r2", "1"), ("r3", "2"), ("r4", "1")]
    assert [r.sequence for r in pulled] == sorted(r.sequence for r in pulled)
    assert [r.request_id for r in store.labels_after("acme", "prod", first, 2)] == ["r2", "r3"]
    with pytest.raises(NotFound):
        store.add_labels("beta", "prod", ["r9"], ["1"], 7)
    with pytest.raises(NotFound):
        store.labels_after("beta", "prod", 0, 100)
    assert len(store.labels_after("acme", "prod", 0, 100)) == 4


def test_old_labels_are_deleted_in_batches_and_sequences_not_reused(store: SqlStore) -> None:
    _deployed(store)
    _deployment(store, "beta")
    old_first, _ = store.add_labels("acme", "prod", ["a1", "a2", "a3"], ["0", "1", "0"], 100)
    store.add_labels("beta", "prod", ["b1", "b2"], ["1", "1"], 150)
    newest = store.add_labels("acme", "prod", ["a4"], ["1"], 200)[1]
    assert store.delete_labels_before(150, 2) == 2  # the oldest first, at most the limit
    assert [r.request_id for r in store.labels_after("acme", "prod", 0, 100)] == ["a3", "a4"]
    assert store.delete_labels_before(150, 2) == 1
    assert store.delete_labels_before(150, 2) == 0  # nothing logged before 150 is left
    assert [r.request_id for r in store.labels_after("beta", "prod", 0, 100)] == ["b1", "b2"]
    # A cursor before the oldest kept label continues from what is there.
    assert [r.request_id for r in store.labels_after("acme", "prod", old_first, 100)] == ["a4"]
    # With every label gone, new ones still get sequences above every one handed out before, so
    # a cursor past the deleted labels does not skip them.
    assert store.delete_labels_before(1_000, 100) == 3
    assert store.labels_after("acme", "prod", 0, 100) == []
    first, _ = store.add_labels("acme", "prod", ["a5"], ["0"], 300)
    assert first > newest
    assert [r.request_id for r in store.labels_after("acme", "prod", newest, 100)] == ["a5"]


def test_the_retention_sweep_deletes_every_label_past_the_retention_in_batches(store: SqlStore) -> None:
    from foedus.server.monitoring.performance import DELETE_BATCH, PerformanceService
    from foedus.server.tenancy.principal import Principal

    _deployed(store)
    day_us = 86_400 * 10**6
    now = [100 * day_us]
    old = DELETE_BATCH * 2 + 5
    store.add_labels("acme", "prod", [f"o{i}" for i in range(old)], ["1"] * old, now[0] - 31 * day_us)
    store.add_labels("acme", "prod", ["k1", "k2"], ["0", "1"], now[0] - 29 * day_us)
    owner = Principal("k", Role.OWNER, "acme")
    kept = PerformanceService(store, clock=lambda: now[0])  # retention 0: for ever
    assert kept.expire_labels() == 0
    sweep = PerformanceService(store, clock=lambda: now[0], retention_s=30 * 86_400)
    assert sweep.expire_labels() == old
    assert [r.request_id for r in sweep.pull_labels(owner, "prod", 0, 0)] == ["k1", "k2"]
    now[0] += 2 * day_us
    assert sweep.expire_labels() == 2
    assert sweep.pull_labels(owner, "prod", 0, 0) == []


def test_performance_counts_are_stored_once_and_read_by_window(store: SqlStore) -> None:
    from foedus.server.store.records import PerformanceRecord

    _deployed(store)
    rows = [
        PerformanceRecord("a", 1, 60_000, "", "", {"task": "classification", "labelled": 2}),
        PerformanceRecord("a", 2, 120_000, "x", "sex", {"task": "classification", "labelled": 1}),
    ]
    assert store.ingest_performance("acme", "prod", "p1", rows, 1) is False
    assert store.ingest_performance("acme", "prod", "p1", rows, 2) is True  # a retry stores nothing
    assert [r.version for r in store.query_performance("acme", "prod", None, 0, 10**9)] == [1, 2]
    assert store.query_performance("acme", "prod", 2, 0, 10**9) == [rows[1]]
    assert store.query_performance("acme", "prod", None, 60_000, 120_000) == [rows[0]]
    with pytest.raises(NotFound):
        store.query_performance("beta", "prod", None, 0, 10**9)
    with pytest.raises(NotFound):
        store.ingest_performance("beta", "prod", "p2", rows, 3)


def _alert(alert_id: str, time_ms: int, *, score: float = 8.0, metric: str = "latency_p99_ms") -> AlertRecord:
    return AlertRecord(
        agent="a1",
        alert_id=alert_id,
        time_ms=time_ms,
        version=1,
        kind="anomaly",
        score=score,
        threshold=4.0,
        detector="ewma-robust-z",
        top=[
            {"metric": metric, "value": 1.0, "attribution": -3.0},
            {"metric": "errors", "value": 0.0, "attribution": 1.0},
        ],
    )


def _deployment(store: SqlStore, tenant: str = "acme") -> None:
    store.create_version(tenant, "m", new_version(), create_model=True, aliases=(), now_us=1)
    store.create_deployment(tenant, "prod", "m", "", ((1, 1.0),), 0, "k", 1)


def test_alerts_group_into_incidents_by_gap_once_each(store: SqlStore) -> None:
    _deployment(store)
    burst = [_alert(f"x{i}", 10_000 + i * 1000) for i in range(5)]
    store.ingest_telemetry("acme", "prod", "a1", "b1", [], burst[:3], [], 1)
    store.ingest_telemetry("acme", "prod", "a1", "b2", [], burst[2:], [], 2)  # x2 again: not new
    assert store.ungrouped_alert_deployments() == [("acme", "prod")]
    events = store.group_alerts("acme", "prod", 60_000, 100)
    assert [(e.kind, e.deployment, e.tenant) for e in events] == [("opened", "prod", "acme")]
    assert store.group_alerts("acme", "prod", 60_000, 101) == []  # each alert is grouped once
    assert store.ungrouped_alert_deployments() == []
    incident = store.get_incident("acme", events[0].incident_id)
    assert (incident.alert_count, incident.first_ms, incident.last_ms) == (5, 10_000, 14_000)
    assert incident.max_ratio == 2.0
    assert incident.attributions == {"latency_p99_ms": 15.0, "errors": 5.0}
    assert (incident.state, incident.versions, incident.kinds) == (IncidentState.FIRING, (1,), ("anomaly",))
    # Within the gap it joins; past it, a new incident opens (the old one stays open until quiet).
    store.ingest_telemetry("acme", "prod", "a1", "b3", [], [_alert("y", 70_000), _alert("z", 200_000)], [], 3)
    events = store.group_alerts("acme", "prod", 60_000, 300)
    assert [e.kind for e in events] == ["updated", "opened"]
    assert store.get_incident("acme", incident.id).alert_count == 6
    page = store.list_incidents("acme", "prod", True, "", 1)
    assert [i.id for i in page.items] == [events[1].incident_id]
    assert [i.id for i in store.list_incidents("acme", None, True, page.next_token, 1).items] == [incident.id]
    alerts = store.incident_alerts("acme", incident.id, 100)
    assert [a.alert_id for a in alerts] == ["y", "x4", "x3", "x2", "x1", "x0"]
    assert {a.incident_id for a in store.list_alerts("acme", "prod", "", 100).items} == {
        incident.id,
        events[1].incident_id,
    }
    after = store.incident_events_after("acme", None, 0, 100)
    assert [e.kind for e in after] == ["opened", "updated", "opened"]
    assert store.last_incident_event_id("acme") == after[-1].id
    with pytest.raises(NotFound):
        store.get_incident("beta", incident.id)
    with pytest.raises(NotFound):
        store.incident_alerts("beta", incident.id, 10)
    assert store.incident_events_after("beta", None, 0, 100) == []
    assert store.list_incidents("beta", None, False, "", 10).items == []


def test_concurrent_grouping_opens_one_incident(store: SqlStore) -> None:
    _deployment(store)
    store.ingest_telemetry(
        "acme", "prod", "a1", "b1", [], [_alert(f"x{i}", 1000 + i) for i in range(50)], [], 1
    )
    made: list[str] = []
    errors: list[BaseException] = []

    def group() -> None:
        try:
            made.extend(e.kind for e in store.group_alerts("acme", "prod", 60_000, 5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=group) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert made == ["opened"]
    (incident,) = store.list_incidents("acme", None, False, "", 10).items
    assert incident.alert_count == 50


def test_incident_states_and_quiet_resolution(store: SqlStore) -> None:
    _deployment(store)
    store.ingest_telemetry("acme", "prod", "a1", "b1", [], [_alert("x", 1000)], [], 1)
    (opened,) = store.group_alerts("acme", "prod", 60_000, 1_000_000)
    firing = (IncidentState.FIRING,)
    acked, event = store.set_incident_state(
        "acme", opened.incident_id, IncidentState.ACKNOWLEDGED, firing, "k1", 2_000_000
    )
    assert (acked.state, acked.acknowledged_by, acked.state_changed_at_us) == (
        IncidentState.ACKNOWLEDGED,
        "k1",
        2_000_000,
    )
    assert event is not None and event.kind == "acknowledged"
    again, event = store.set_incident_state(
        "acme", opened.incident_id, IncidentState.ACKNOWLEDGED, firing, "k2", 3_000_000
    )
    assert (again.acknowledged_by, event) == ("k1", None)
    with pytest.raises(NotFound):
        store.set_incident_state("beta", opened.incident_id, IncidentState.RESOLVED, firing, "k", 4)
    assert store.resolve_quiet_incidents(1_000_000, 5_000_000) == []  # its last alert came at 1_000_000
    (resolved,) = store.resolve_quiet_incidents(1_000_001, 5_000_000)
    assert (resolved.kind, resolved.incident_id, resolved.deployment) == (
        "resolved",
        opened.incident_id,
        "prod",
    )
    assert store.resolve_quiet_incidents(9_000_000, 9_000_000) == []
    record = store.get_incident("acme", opened.incident_id)
    assert (record.state, record.resolved_by) == (IncidentState.RESOLVED, "auto")
    with pytest.raises(FailedPrecondition):
        store.set_incident_state("acme", opened.incident_id, IncidentState.ACKNOWLEDGED, firing, "k", 6)
    # The next alert opens a new incident.
    store.ingest_telemetry("acme", "prod", "a1", "b2", [], [_alert("y", 1500)], [], 1)
    (reopened,) = store.group_alerts("acme", "prod", 60_000, 7_000_000)
    assert reopened.kind == "opened" and reopened.incident_id != opened.incident_id


def test_webhooks_are_per_tenant_and_set_by_url(store: SqlStore) -> None:
    first = store.set_webhook(WebhookRecord(0, "acme", "https://h.example/a", "s" * 20, "one", 1, "k"))
    again = store.set_webhook(WebhookRecord(0, "acme", "https://h.example/a", "t" * 20, "two", 2, "k"))
    assert again.id == first.id
    assert (again.secret, again.description, again.created_at_us) == ("t" * 20, "two", 1)
    other = store.set_webhook(WebhookRecord(0, "beta", "https://h.example/a", "u" * 20, "", 3, "k"))
    assert other.id != first.id
    assert [h.secret for h in store.list_webhooks("acme")] == ["t" * 20]
    with pytest.raises(NotFound):
        store.delete_webhook("beta", first.id)
    store.delete_webhook("acme", first.id)
    assert store.list_webhooks("acme") == []
    assert [h.id for h in store.list_webhooks("beta")] == [other.id]
    with pytest.raises(NotFound):
        store.set_webhook(WebhookRecord(0, "ghost", "https://h.example/a", "s" * 20, "", 1, "k"))


def test_version_reads_see_every_change_and_keep_little(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both backends keep the decoded records of the last version rows read, within a bound; any
    change to a row shows at the next read."""
    import foedus.server.store.sql as sql

    monkeypatch.setattr(sql, "_VERSION_MEMO_SIZE", 3)
    for i in range(5):
        store.create_version("acme", f"m{i}", new_version(), create_model=True, aliases=(), now_us=1)
    store.create_version("acme", "m0", new_version(), create_model=False, aliases=(), now_us=1)
    first = store.get_version("acme", "m0", 1)
    assert store.get_version("acme", "m0", 1) is first  # kept, not decoded again
    store.set_alias("acme", "m0", "production", 1, now_us=2)
    by_number = store.get_version("acme", "m0", 1)
    assert by_number.aliases == ("production",)
    assert store.get_version_by_alias("acme", "m0", "production") is by_number  # one row, one record
    store.set_alias("acme", "m0", "production", 2, now_us=2)
    assert store.get_version_by_alias("acme", "m0", "production").version == 2
    with pytest.raises(NotFound):
        store.get_version_by_alias("beta", "m0", "production")
    with pytest.raises(NotFound):
        store.get_version_by_alias("acme", "m0", "staging")
    store.set_alias("acme", "m0", "production", 1, now_us=2)
    store.archive_version("acme", "m0", 2, now_us=3)
    assert store.get_version("acme", "m0", 2).state == VersionState.ARCHIVED
    with pytest.raises(NotFound):
        store.get_version("beta", "m0", 1)  # kept records are per tenant too
    for i in range(5):  # more rows than the bound: the kept records stay within it
        assert store.get_version("acme", f"m{i}", 1).model == f"m{i}"
    assert len(store._version_memo) <= 3
    assert store._memo_bytes == sum(size for _, size in store._version_memo.values())


def test_postgresql_version_reads_see_another_replicas_writes(postgres_url: str) -> None:
    """Two stores on one database, as two server replicas: a version one of them has read (and
    keeps decoded) shows the other's alias moves and archiving at the next read."""
    writer, reader = SqlStore(postgres_url), SqlStore(postgres_url, run_migrations=False)
    try:
        writer.create_tenant("acme", "Acme", "admin", 1)
        writer.create_version("acme", "churn", new_version(), create_model=True, aliases=(), now_us=1)
        writer.create_version("acme", "churn", new_version(), create_model=False, aliases=(), now_us=2)
        assert reader.get_version("acme", "churn", 1).aliases == ()
        writer.set_alias("acme", "churn", "production", 1, now_us=3)
        assert reader.get_version("acme", "churn", 1).aliases == ("production",)
        assert reader.get_version_by_alias("acme", "churn", "production").version == 1
        writer.set_alias("acme", "churn", "production", 2, now_us=3)
        assert reader.get_version_by_alias("acme", "churn", "production").version == 2
        assert reader.get_version("acme", "churn", 1).aliases == ()
        writer.archive_version("acme", "churn", 1, now_us=4)
        assert reader.get_version("acme", "churn", 1).state == VersionState.ARCHIVED
        with pytest.raises(NotFound):
            reader.get_version("acme", "churn", 3)
    finally:
        reader.close()
        writer.close()


def test_postgresql_version_reads_survive_a_dropped_connection(postgres_url: str) -> None:
    """The connection a store keeps for version reads is terminated by the database (a restart,
    an administrator): the read still answers, and the next ones go through a fresh connection."""
    import psycopg

    store = SqlStore(postgres_url)
    try:
        store.create_tenant("acme", "Acme", "admin", 1)
        created = store.create_version(
            "acme", "churn", new_version(), create_model=True, aliases=(), now_us=1
        )
        assert store.get_version("acme", "churn", 1) == created
        kept = store._pg_reader()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (kept.info.backend_pid,))
        assert store.get_version("acme", "churn", 1) == created
        fresh = store._pg_reader()
        assert fresh is not kept and not fresh.closed
        assert store.get_version("acme", "churn", 1) == created
    finally:
        store.close()
