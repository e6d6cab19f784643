"""Per-tenant limits: a tenant over its calls per second gets RESOURCE_EXHAUSTED with the time to
wait, other tenants and the admin are not affected; quotas on models and artifact bytes refuse
what would pass them, before any upload."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.errors import ResourceExhausted
from foedus.client_sdk.testing import LocalServer
from foedus.server.tenancy.limits import RateLimiter


@pytest.fixture(scope="module")
def limited() -> Iterator[LocalServer]:
    with LocalServer(tenant_requests_per_s=2.0, tenant_burst=3) as server:
        yield server


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
        assert 0 < refused.retry_after_s <= 0.5  # a token comes back every 0.5 s
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


def test_quotas_on_models_and_artifact_bytes(tmp_path: Path) -> None:
    from foedus_testdata import iris_onnx

    artifact = iris_onnx(tmp_path)
    size = artifact.stat().st_size
    with LocalServer(tenant_max_models=2, tenant_max_artifact_bytes=3 * size, latency_runs=2) as server:
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
