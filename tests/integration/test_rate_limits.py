"""Per-tenant limits: a tenant over its calls per second gets RESOURCE_EXHAUSTED with the time to
wait, other tenants and the admin are not affected; quotas on models and artifact bytes refuse
what would pass them, before any upload."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.errors import ResourceExhausted
from foedus.client_sdk.testing import LocalServer, ReplicaSet
from foedus.server.tenancy.limits import RateLimiter

ONE_SERVER = (
    "these exact ingest sequences need one server: a batch above one replica's share of the burst "
    "is granted (leaving the bucket in debt) by whichever replica takes it"
)


def serve_iris(client: Client, tmp_path: Path) -> None:
    """Registers the iris model and serves it as deployment "d"."""
    from foedus_testdata import iris_onnx

    client.models.register("iris", iris_onnx(tmp_path), create_model=True)
    client.deployments.create("d", "iris", traffic={1: 1.0})


def single_server(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("--replicas"):
        pytest.skip(ONE_SERVER)


def processes(server: LocalServer | ReplicaSet) -> list[LocalServer]:
    return list(getattr(server, "replicas", [server]))


def shared(server: LocalServer | ReplicaSet) -> None:
    """Waits until every server process counts all of them, so each enforces its share."""
    count = len(processes(server))
    wait_for(
        lambda: all(p.app.membership.members == count for p in processes(server)),
        10.0,
        f"the {count} server process(es) to share the limits",
    )


@pytest.fixture(scope="module")
def limited(make_server: Callable[..., LocalServer]) -> LocalServer:
    server = make_server(tenant_requests_per_s=2.0, tenant_burst=3, member_heartbeat_s=0.2)
    shared(server)
    return server


def test_a_tenant_over_its_rate_is_told_when_to_retry(limited: LocalServer) -> None:
    busy, quiet = limited.create_tenant("busy"), limited.create_tenant("quiet")
    with Client.connect(limited.target, api_key=busy) as client:
        refused: ResourceExhausted | None = None
        for _ in range(10):  # the burst of 3 and whatever refilled meanwhile, then a refusal
            try:
                client.whoami()
            except ResourceExhausted as exc:
                refused = exc
                break
        assert refused is not None, "ten quick calls never hit a limit of 2/s with a burst of 3"
        assert "'busy' is over its limit of 2 calls per second" in refused.message
        # a token comes back every 0.5 s, in each of N replicas every N * 0.5 s
        assert 0 < refused.retry_after_s <= 0.5 * len(processes(limited))
        # the others are not held back by busy's limit
        with Client.connect(limited.target, api_key=quiet) as other:
            assert other.whoami().tenant == "quiet"
        with limited.client() as admin:
            for _ in range(10):
                admin.tenants.list()
        time.sleep(refused.retry_after_s)
        wait_for(lambda: _ok(client), 5.0, "a call after the advised wait")


def _ok(client: Client) -> bool:
    try:
        client.whoami()
    except ResourceExhausted:
        return False
    return True


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # buckets are per key
    now[0] = 0.25
    assert limiter.take("a") == pytest.approx(0.25)
    now[0] = 0.5
    assert limiter.take("a") == 0.0
    now[0] = 100.0  # refills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0
    assert RateLimiter(5.0).burst == 10
    with pytest.raises(ValueError):
        RateLimiter(0.0)


def _granted(client: Client, seconds: float) -> tuple[int, float]:
    """Calls as fast as it can for about `seconds`: the calls granted, and the time they took."""
    granted = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            client.whoami()
            granted += 1
        except ResourceExhausted:
            time.sleep(0.01)
    return granted, time.monotonic() - start


def test_replicas_share_the_rate_of_the_whole_control_plane(postgres_url: str) -> None:
    rate, burst = 5.0, 10
    settings = dict(tenant_requests_per_s=rate, tenant_burst=burst, member_heartbeat_s=0.2)
    with ReplicaSet(2, db=postgres_url, artifact_store="database", **settings) as servers:
        shared(servers)
        key = servers.create_tenant("spread")
        with Client.connect(servers.target, api_key=key) as client:  # round-robin over both
            granted, elapsed = _granted(client, 3.0)
        # The burst and the refill of the whole set; each replica on its own would grant about
        # as many again (twice in all).
        allowed = burst + rate * elapsed
        assert 0.6 * allowed <= granted <= allowed + 2, (granted, elapsed)
        # A replica that stops leaves the members; the other takes over the whole rate and burst.
        survivor, gone = servers.replicas
        gone.halt()
        wait_for(lambda: survivor.app.membership.members == 1, 10.0, "the survivor to count itself alone")
        time.sleep(burst / rate)  # the bucket fills up to the whole burst
        with Client.connect(survivor.target, api_key=key) as client:
            quick = 0
            while _ok(client):
                quick += 1
        assert quick >= burst - 1  # more than the half burst it had while the other replica ran


def test_quotas_on_models_and_artifact_bytes(tmp_path: Path, make_server: Callable[..., LocalServer]) -> None:
    from foedus_testdata import iris_onnx

    artifact = iris_onnx(tmp_path)
    size = artifact.stat().st_size
    server = make_server(tenant_max_models=2, tenant_max_artifact_bytes=3 * size, latency_runs=2)
    key = server.create_tenant("small")
    with Client.connect(server.target, api_key=key) as client:
        client.models.register("a", artifact, create_model=True)
        client.models.create("b")
        with pytest.raises(ResourceExhausted, match="has 2 models, its quota is 2"):
            client.models.create("c")
        with pytest.raises(ResourceExhausted, match="quota is 2"):
            client.models.register("c", artifact, create_model=True)
        client.models.register("a", artifact)  # new versions of existing models still fit
        client.models.register("b", artifact)
        with pytest.raises(ResourceExhausted, match=f"quota of {3 * size} bytes"):
            client.models.register("a", artifact)
        assert [m.name for m in client.models.list()] == ["a", "b"]  # nothing half-made
        assert [v.version for v in client.models.versions("a")] == [2, 1]
    other = server.create_tenant("other")  # quotas are per tenant
    with Client.connect(server.target, api_key=other) as client:
        client.models.register("a", artifact, create_model=True)


def test_ingest_over_the_tenants_points_per_second_is_refused_and_not_stored(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import uuid

    single_server(request)
    with LocalServer(tenant_ingest_points_per_s=10.0, latency_runs=2) as server:
        key = server.create_tenant("chatty")
        with Client.connect(server.target, api_key=key) as client:
            serve_iris(client, tmp_path)
            start = int(time.time() * 1000) - 60_000
            first = [("loss", float(i), start + i, i) for i in range(15)]
            assert client.monitoring.log_batch("d", first) == 15  # within the burst of 20
            second_id = uuid.uuid4().hex
            second = [("loss", 100.0, start + 100 + i, 100 + i) for i in range(15)]
            with pytest.raises(
                ResourceExhausted, match="over its ingest limit of 10 points per second"
            ) as refused:
                client.monitoring.log_batch("d", second, batch_id=second_id)
            assert 0 < refused.value.retry_after_s <= 1.0
            # nothing of the refused batch was stored; sent again after the wait, it is
            (mean,) = client.monitoring.query("d", "loss", start_unix_ms=start, step_s=3600)
            assert mean[1] == pytest.approx(7.0)
            time.sleep(refused.value.retry_after_s)
            wait_for(
                lambda: _sent(client, second, second_id), 10.0, "the batch to be accepted after the wait"
            )
            (mean,) = client.monitoring.query("d", "loss", start_unix_ms=start, step_s=3600)
            assert mean[1] == pytest.approx((sum(range(15)) + 15 * 100.0) / 30)


def _sent(client: Client, points: list[tuple[str, float, int, int]], batch_id: str) -> bool:
    try:
        client.monitoring.log_batch("d", points, batch_id=batch_id)
    except ResourceExhausted:
        return False
    return True


def test_labels_count_against_the_ingest_limit_and_calls_are_bounded(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    single_server(request)
    import grpc

    from foedus.client_sdk.errors import InvalidArgument
    from foedus.v1 import agent_pb2, agent_pb2_grpc

    with (
        LocalServer(tenant_ingest_points_per_s=1.0, latency_runs=2) as server,  # bursts of 2 points
        Client.connect(server.target, api_key=server.create_tenant("labeller")) as client,
    ):
        serve_iris(client, tmp_path)
        agent_key = client.keys.create("agent").secret

        def stored() -> list[str]:
            with grpc.insecure_channel(server.target) as channel:
                pull = agent_pb2_grpc.AgentServiceStub(channel).PullLabels
                meta = (("authorization", f"Bearer {agent_key}"),)
                resp = pull(agent_pb2.PullLabelsRequest(deployment="d"), metadata=meta)
                return [label.request_id for label in resp.labels]

        # A call over the bound is refused whole, before it takes from the limit.
        with pytest.raises(InvalidArgument, match="at most 10000 labels per call"):
            client.monitoring.log_labels("d", [f"x-{i}" for i in range(10_001)], [0] * 10_001)
        assert client.monitoring.log_labels("d", ["a-0", "a-1"], [1, 0]).stored == 2  # the burst
        # Labels and telemetry points take from one limit per tenant.
        with pytest.raises(ResourceExhausted, match="over its ingest limit of 1 points per second"):
            client.monitoring.log_batch("d", [("loss", 1.0, int(time.time() * 1000), 0)])
        with pytest.raises(ResourceExhausted, match="over its ingest limit") as refused:
            client.monitoring.log_labels("d", ["b-0", "b-1"], [0, 1])
        assert "the call of 2 labels (2 points) was not stored" in refused.value.message
        assert 0 < refused.value.retry_after_s <= 2.0
        assert stored() == ["a-0", "a-1"]  # nothing of the refused call
        time.sleep(refused.value.retry_after_s)

        def sent() -> bool:
            try:
                client.monitoring.log_labels("d", ["b-0", "b-1"], [0, 1])
            except ResourceExhausted:
                return False
            return True

        wait_for(sent, 10.0, "the labels to be accepted after the wait")
        assert stored() == ["a-0", "a-1", "b-0", "b-1"]


def test_the_cli_waits_out_the_ingest_limit_between_label_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    single_server(request)
    from testkit import run_cli

    from foedus.client_sdk.cli.performance import LABELS_PER_CALL

    # 2,000 points/s, a burst of 4,000: the first call of 10,000 is granted from the full bucket and
    # leaves it 6,000 in debt, so the second is refused until about 5 s later, then sent again.
    with LocalServer(tenant_ingest_points_per_s=2_000.0, latency_runs=2) as server:
        key = server.create_tenant("labeller")
        with Client.connect(server.target, api_key=key) as client:
            serve_iris(client, tmp_path)
        count = 2 * LABELS_PER_CALL
        path = tmp_path / "labels.csv"
        path.write_text("request_id,label\n" + "".join(f"r-{i},{i % 3}\n" for i in range(count)))
        base = ("--server", server.target, "--api-key", key, "--output", "json")
        code, out, err = run_cli(capsys, *base, "performance", "log-labels", "d", str(path))
    assert code == 0, err
    assert f'"stored": {count}' in out
    assert "over the ingest limit; sending again in" in err
