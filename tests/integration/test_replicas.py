"""Two replicas on one PostgreSQL: changes reach the watchers of the other replica through
LISTEN/NOTIFY, revoked keys are refused everywhere at once, artifacts live in the database, and
clients and agents fail over when a replica goes away.

The replicas re-read the store for watchers only every 300 s and trust a cached key for 300 s, so a
change that reaches the other replica within the test's wait did so by notification.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from foedus_testdata import iris_data, iris_onnx
from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.errors import Unauthenticated
from foedus.client_sdk.testing import ReplicaSet
from foedus.v1 import agent_pb2, agent_pb2_grpc

pytest.importorskip("psycopg")


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[ReplicaSet]:
    with ReplicaSet(
        2, db=postgres_url, artifact_store="database", latency_runs=3, watch_poll_s=300, auth_cache_s=300
    ) as servers:
        yield servers


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    return iris_onnx(tmp_path, c=1.0, name="a.onnx"), iris_onnx(tmp_path, c=0.01, name="b.onnx")


def test_a_traffic_change_through_one_replica_reaches_a_watcher_of_the_other(
    replicas: ReplicaSet, models: tuple[Path, Path]
) -> None:
    a, b = replicas.replicas
    owner = replicas.create_tenant(f"r-{uuid.uuid4().hex[:8]}")
    with Client.connect(a.target, api_key=owner) as client:
        for path in models:
            client.models.register("iris", path)
        client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        agent_key = client.keys.create("agent").secret
        with grpc.insecure_channel(b.target) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            stream = stub.WatchAssignments(
                agent_pb2.WatchAssignmentsRequest(deployment="iris-prod", agent="watcher"),
                metadata=(("authorization", f"Bearer {agent_key}"),),
                timeout=60,
            )
            first = next(stream).assignment
            assert [(t.version, t.weight) for t in first.deployment.traffic] == [(1, 1.0)]
            client.deployments.set_traffic("iris-prod", {1: 0.5, 2: 0.5})  # through replica a
            second = next(stream).assignment  # DEADLINE_EXCEEDED here would mean no NOTIFY
            stream.cancel()
    assert second.deployment.generation > first.deployment.generation
    assert sorted((t.version, t.weight) for t in second.deployment.traffic) == [(1, 0.5), (2, 0.5)]


def test_a_key_revoked_through_one_replica_is_refused_by_the_other(replicas: ReplicaSet) -> None:
    a, b = replicas.replicas
    owner = replicas.create_tenant(f"r-{uuid.uuid4().hex[:8]}")
    with Client.connect(a.target, api_key=owner) as client_a:
        viewer = client_a.keys.create("viewer")
        with Client.connect(b.target, api_key=viewer.secret) as client_b:
            assert client_b.whoami().role  # b authenticated it, and caches it for 300 s
            client_a.keys.revoke(viewer.key.key_id)

            def refused() -> bool:
                try:
                    client_b.whoami()
                except Unauthenticated:
                    return True
                return False

            wait_for(refused, 30, "replica b to refuse the key revoked through replica a")


def test_an_artifact_uploaded_through_one_replica_downloads_from_the_other(
    replicas: ReplicaSet, models: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = replicas.replicas
    owner = replicas.create_tenant(f"r-{uuid.uuid4().hex[:8]}")
    with Client.connect(a.target, api_key=owner) as client:
        version = client.models.register("iris", models[0])
    assert not list((b.data_dir / "artifacts" / "sha256").rglob(version.artifact.sha256))
    with Client.connect(b.target, api_key=owner) as client:
        out = client.models.download("iris", tmp_path / "copy.onnx", version=1)
    assert Path(out).read_bytes() == models[0].read_bytes()
    assert list((b.data_dir / "artifacts" / "sha256").rglob(version.artifact.sha256))  # b's cache


def test_clients_and_agents_fail_over_when_a_replica_goes_away(
    replicas: ReplicaSet, models: tuple[Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from test_agents import AgentLoop

    from foedus.client_sdk.agent.runtime import AgentConfig

    a, b = replicas.replicas
    owner = replicas.create_tenant(f"r-{uuid.uuid4().hex[:8]}")
    x, _ = iris_data()
    with Client.connect(replicas.target, api_key=owner) as client:
        for path in models:
            client.models.register("iris", path, reference_data=x)
        client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        agent_key = client.keys.create("agent").secret
        loop = AgentLoop()
        try:
            agent = loop.start_agent(
                AgentConfig(
                    deployment="iris-prod",
                    server=replicas.target,
                    api_key=agent_key,
                    listen="127.0.0.1:0",
                    data_dir=tmp_path / "agent",
                    name="agent-0",
                    interval_s=0.3,
                )
            )
            wait_for(lambda: agent.generation >= 1, 60, "the agent to load generation 1")
            # Each replica goes away in turn, so the agent's streams break at least once whichever
            # replica they were on; reads and the agent go on through the other one.
            for down, up, traffic in ((a, "b", {2: 1.0}), (b, "a", {1: 1.0})):
                down.halt()
                for _ in range(20):  # reads in flight on the halted replica are retried
                    assert client.models.get("iris").name == "iris"
                generation = client.deployments.set_traffic("iris-prod", traffic).generation
                wait_for(lambda g=generation: agent.generation >= g, 60, f"the agent to follow through {up}")
                down.start()
            loop.call(agent.stop())
        finally:
            loop.close()
