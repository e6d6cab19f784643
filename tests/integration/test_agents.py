"""A real control plane, two real agents on port 0, and Open Inference Protocol clients."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data, iris_onnx

pytest.importorskip("onnxruntime")

from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.agent.runtime import Agent, AgentConfig
from foedus.client_sdk.testing import LocalServer
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc
from foedus.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    deployment_pb2,
    deployment_pb2_grpc,
    monitoring_pb2,
    monitoring_pb2_grpc,
)

OUTAGE_S = float(os.environ.get("FOEDUS_TEST_OUTAGE_S", "60"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentLoop:
    """Agents on one event loop in a background thread, as `foedus agent run` runs them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_agent(self, config: AgentConfig) -> Agent:
        async def start() -> Agent:
            agent = Agent(config)
            await agent.start()
            return agent

        return self.call(start())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def request(x: np.ndarray) -> inference_pb2.ModelInferRequest:
    req = inference_pb2.ModelInferRequest(model_name="iris-prod")
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype("<f4").tobytes())
    return req


class Setup:
    def __init__(self, tmp: Path, make_server: Callable[..., LocalServer]) -> None:
        # A fixed port, so that the server halted and started again is back where agents look for it.
        self.server = make_server(tmp / "server", listen=f"127.0.0.1:{free_port()}", latency_runs=3)
        owner = self.server.create_tenant("acme")
        self.owner = Client.connect(self.server.target, api_key=owner)
        d = tmp / "models"
        d.mkdir()
        x, _ = iris_data()
        self.owner.models.register("iris", iris_onnx(d, c=1.0, name="a.onnx"), reference_data=x)
        self.owner.models.register("iris", iris_onnx(d, c=0.01, name="b.onnx"), reference_data=x)
        self.agent_key = self.owner.keys.create("agent", description="agents").secret
        self.owner_key = owner
        self.channel = grpc.insecure_channel(self.server.target)
        self.meta = (("authorization", f"Bearer {owner}"),)
        self.deployments = deployment_pb2_grpc.DeploymentServiceStub(self.channel)
        self.monitoring = monitoring_pb2_grpc.MonitoringServiceStub(self.channel)
        self.deployments.CreateDeployment(
            deployment_pb2.CreateDeploymentRequest(
                name="iris-prod", model="iris", traffic=[deployment_pb2.TrafficSplit(version=1, weight=1)]
            ),
            metadata=self.meta,
        )
        self.loop = AgentLoop()
        self.agents = [
            self.loop.start_agent(
                AgentConfig(
                    deployment="iris-prod",
                    server=self.server.target,
                    api_key=self.agent_key,
                    listen="127.0.0.1:0",
                    data_dir=tmp / f"agent-{i}",
                    name=f"agent-{i}",
                    interval_s=0.3,
                )
            )
            for i in range(2)
        ]
        self.agent_channels = [grpc.insecure_channel(f"127.0.0.1:{a.port}") for a in self.agents]
        self.stubs = [inference_pb2_grpc.GRPCInferenceServiceStub(c) for c in self.agent_channels]
        wait_for(lambda: all(a.generation >= 1 for a in self.agents), 60, "agents to load generation 1")

    def set_traffic(self, weights: dict[int, float]) -> int:
        resp = self.deployments.SetTraffic(
            deployment_pb2.SetTrafficRequest(
                name="iris-prod",
                traffic=[deployment_pb2.TrafficSplit(version=v, weight=w) for v, w in weights.items()],
            ),
            metadata=self.meta,
        )
        return resp.deployment.generation

    def served_requests(self) -> int:
        status = self.monitoring.GetDeploymentStatus(
            monitoring_pb2.GetDeploymentStatusRequest(name="iris-prod", window_s=3600), metadata=self.meta
        )
        return sum(v.requests for v in status.versions if not v.shadow)

    def start_ops_agent(self, data_dir: Path, name: str, anomaly: str, resource: str | None = None) -> Agent:
        """Another agent of iris-prod, on port 0, that runs the ops models of the deployments
        `anomaly` (and `resource`); stopped with the others."""
        agent = self.loop.start_agent(
            AgentConfig(
                deployment="iris-prod",
                server=self.server.target,
                api_key=self.agent_key,
                listen="127.0.0.1:0",
                data_dir=data_dir,
                name=name,
                interval_s=0.3,
                anomaly_deployment=anomaly,
                resource_deployment=resource,
            )
        )
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for c in self.agent_channels:
            c.close()
        for agent in self.agents:
            self.loop.call(agent.stop())
        self.loop.close()
        self.channel.close()
        self.owner.close()
        self.server.stop()


@pytest.fixture
def setup(tmp_path: Path, make_server: Callable[..., LocalServer]) -> Iterator[Setup]:
    s = Setup(tmp_path, make_server)
    try:
        yield s
    finally:
        s.close()


def test_version_switches_under_load_fail_no_request(setup: Setup) -> None:
    x, _ = iris_data()
    failures: list[BaseException] = []
    served: set[str] = set()
    sent = [0]
    stop = threading.Event()
    lock = threading.Lock()

    def client(stub: Any) -> None:
        while not stop.is_set():
            try:
                version = stub.ModelInfer(request(x[:5]), timeout=10).model_version
                with lock:
                    served.add(version)
                    sent[0] += 1
            except grpc.RpcError as exc:  # pragma: no cover - reported by the assertion
                failures.append(exc)

    threads = [threading.Thread(target=client, args=(stub,)) for stub in setup.stubs for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(8):
        generation = setup.set_traffic({2: 1.0} if i % 2 == 0 else {1: 1.0})
        wait_for(lambda g=generation: all(a.generation >= g for a in setup.agents), 30, "agents to switch")
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert served == {"1", "2"}
    # every request sent shows up once in the control plane's telemetry
    wait_for(lambda: setup.served_requests() == sent[0], 30, f"{sent[0]} requests in telemetry")


@pytest.mark.slow
def test_control_plane_outage_loses_and_duplicates_nothing(setup: Setup) -> None:
    x, _ = iris_data()
    sent = 0
    for stub in setup.stubs:
        for _ in range(25):
            stub.ModelInfer(request(x[:3]))
            sent += 1
    wait_for(lambda: setup.served_requests() == sent, 30, "telemetry before the outage")
    setup.server.halt()
    deadline = time.monotonic() + OUTAGE_S
    while time.monotonic() < deadline:  # serving goes on while the control plane is away
        for stub in setup.stubs:
            stub.ModelInfer(request(x[:3]), timeout=10)
            sent += 1
        time.sleep(0.05)
    assert all(a.queue.depth() > 0 for a in setup.agents), "telemetry should wait in the local queues"
    setup.server.start()
    wait_for(lambda: all(a.queue.depth() == 0 for a in setup.agents), 60, "queues to drain")
    assert setup.served_requests() == sent


def test_agent_key_of_another_tenant_cannot_watch_or_report(setup: Setup) -> None:
    other = setup.server.create_tenant("beta")
    with Client.connect(setup.server.target, api_key=other) as beta:
        beta_agent = beta.keys.create("agent").secret
    meta = (("authorization", f"Bearer {beta_agent}"),)
    stub = agent_pb2_grpc.AgentServiceStub(setup.channel)
    with pytest.raises(grpc.RpcError) as exc:
        next(
            iter(
                stub.WatchAssignments(
                    agent_pb2.WatchAssignmentsRequest(deployment="iris-prod"), metadata=meta
                )
            )
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    batch = agent_pb2.TelemetryBatch(batch_id="x1", deployment="iris-prod", agent="intruder")
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.ReportTelemetry(iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=meta))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert setup.served_requests() == 0


def test_an_agent_whose_key_is_refused_from_the_start_stops_with_the_reason(
    setup: Setup, tmp_path: Path
) -> None:
    import subprocess
    import sys

    from foedus.client_sdk.agent.runtime import run_agent
    from foedus.client_sdk.errors import PermissionDenied, Unauthenticated

    viewer = setup.owner.keys.create("viewer", description="dashboards").secret

    def config(key: str, name: str) -> AgentConfig:
        return AgentConfig(
            deployment="iris-prod",
            server=setup.server.target,
            api_key=key,
            listen="127.0.0.1:0",
            data_dir=tmp_path / name,
            name=name,
            interval_s=0.3,
        )

    for key, error in [("fk_garbage.key", Unauthenticated), (viewer, PermissionDenied)]:
        with pytest.raises(error, match="refused the agent's API key"):
            setup.loop.call(run_agent(config(key, f"refused-{error.__name__}")), timeout=60)
    # the command line says so in one line and exits with the documented code for a bad key
    cmd = [sys.executable, "-m", "foedus.client_sdk.cli.main", "--server", setup.server.target,
           "--api-key", "fk_garbage.key", "agent", "run", "--deployment", "iris-prod",
           "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "cli-agent")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 4, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the control plane refused the agent's API key"), done.stderr
    assert "Traceback" not in done.stderr
    # agents that registered with a good key keep serving
    assert all(not a.refused.is_set() for a in setup.agents)


def test_status_shows_agents_latency_and_feature_counts(setup: Setup) -> None:
    x, _ = iris_data()
    for _ in range(10):
        setup.stubs[0].ModelInfer(request(x[:15]))
    wait_for(lambda: setup.served_requests() == 10, 30, "telemetry")
    status = setup.monitoring.GetDeploymentStatus(
        monitoring_pb2.GetDeploymentStatusRequest(name="iris-prod"), metadata=setup.meta
    )
    assert sorted(a.info.name for a in status.agents) == ["agent-0", "agent-1"]
    assert all("CPUExecutionProvider" in a.info.execution_providers for a in status.agents)
    (v1,) = [v for v in status.versions if v.version == 1]
    assert v1.requests == 10
    assert v1.errors == 0
    assert 0 < v1.latency_p50_ms <= v1.latency_p99_ms
    # inputs were counted on the reference profile's bins: every row of every feature, nothing raw
    store = setup.server.store
    rows = store.query_intervals("acme", "iris-prod", 1, 0, 2**62)
    per_feature: dict[str, int] = {}
    for row in rows:
        for f in row.features:
            total = sum(f["counts"]) + f["underflow"] + f["overflow"] + f["missing"]
            per_feature[str(f["name"])] = per_feature.get(str(f["name"]), 0) + total
    assert per_feature == {"x0": 150, "x1": 150, "x2": 150, "x3": 150}
    labels = sum(sum(r.predictions["counts"]) for r in rows if r.predictions)  # type: ignore[arg-type]
    assert labels == 150


def _queued_requests(data_dir: Path) -> int:
    from foedus.client_sdk.agent.queue import TelemetryQueue

    with TelemetryQueue(data_dir / "telemetry.db") as queue:
        batches = [agent_pb2.TelemetryBatch.FromString(b.payload) for b in queue.peek(10_000)]
    return sum(i.requests for b in batches for i in b.intervals if not i.shadow)


def test_sigkilled_agent_delivers_what_it_queued_once(setup: Setup, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    port = free_port()
    data_dir = tmp_path / "killed-agent"
    cmd = [sys.executable, "-m", "foedus.client_sdk.cli.main", "--server", setup.server.target,
           "--api-key", setup.agent_key, "agent", "run", "--deployment", "iris-prod",
           "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "--name", "killed", "--interval", "0.3"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)

            def ready() -> bool:
                try:
                    return bool(
                        stub.ModelReady(inference_pb2.ModelReadyRequest(name="iris-prod"), timeout=1).ready
                    )
                except grpc.RpcError:
                    return False

            wait_for(ready, 60, "the agent process to serve")
            setup.server.halt()  # telemetry can only be queued now
            x, _ = iris_data()
            for _ in range(40):
                stub.ModelInfer(request(x[:2]), timeout=10)
        wait_for(lambda: _queued_requests(data_dir) == 40, 30, "the agent to queue its intervals")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        setup.server.start()
        agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for(lambda: _queued_requests(data_dir) == 0, 60, "the restarted agent to send its queue")
        assert setup.served_requests() == 40
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()


@pytest.mark.slow
def test_learned_scorer_raises_an_alert_with_shap_contributions(setup: Setup, tmp_path: Path) -> None:
    from foedus_testdata import distance_scorer_onnx, resource_predictor_onnx, slow_iris_onnx

    from foedus.client_sdk.agent.history import HISTORY_METRICS

    x, _ = iris_data()

    def load(stub: Any, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            stub.ModelInfer(request(x[:2]), timeout=10)

    # Normal behaviour, from an agent's own local history.
    load(setup.stubs[0], 3.0)
    rows = np.asarray([[m[k] for k in HISTORY_METRICS] for _, _, m, _ in setup.agents[0].history.rows()])
    assert len(rows) >= 5
    mean, scale = rows.mean(axis=0), rows.std(axis=0) + 0.05 * np.abs(rows.mean(axis=0)) + 1e-3
    normal_scores = (((rows - mean) / scale) ** 2).sum(axis=1)
    threshold = 3 * float(normal_scores.max()) + 25
    scorer = distance_scorer_onnx(tmp_path, mean, scale)
    setup.owner.models.register("ops-anomaly", scorer, tags={"threshold": f"{threshold:.3f}"})
    setup.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            name="ops-anomaly",
            model="ops-anomaly",
            traffic=[deployment_pb2.TrafficSplit(version=1, weight=1)],
        ),
        metadata=setup.meta,
    )
    setup.owner.models.register("ops-resource", resource_predictor_onnx(tmp_path))
    setup.deployments.CreateDeployment(
        deployment_pb2.CreateDeploymentRequest(
            name="ops-resource",
            model="ops-resource",
            traffic=[deployment_pb2.TrafficSplit(version=1, weight=1)],
        ),
        metadata=setup.meta,
    )
    agent = setup.start_ops_agent(tmp_path / "ops-agent", "ops-agent", "ops-anomaly", "ops-resource")
    wait_for(
        lambda: (
            agent.anomaly_scorer is not None
            and agent.resource_predictor is not None
            and agent.generation >= 1
        ),
        60,
        "the ops models to load",
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
    setup.agent_channels.append(channel)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    load(stub, 2.5)  # a normal background for SHAP

    # The fault: a deliberately slow version goes live.
    setup.owner.models.register("iris", slow_iris_onnx(tmp_path))
    generation = setup.set_traffic({3: 1.0})
    wait_for(lambda: agent.generation >= generation, 60, "the slow version to go live")

    def learned_alerts() -> list[Any]:
        alerts = setup.monitoring.ListAlerts(
            monitoring_pb2.ListAlertsRequest(deployment="iris-prod"), metadata=setup.meta
        ).alerts
        return [a for a in alerts if a.alert.detector == "ops-anomaly:v1" and a.alert.version == 3]

    deadline = time.monotonic() + 30
    while not learned_alerts() and time.monotonic() < deadline:
        load(stub, 0.5)
    (alert, *_) = learned_alerts()
    assert alert.agent == "ops-agent"
    assert alert.alert.score > alert.alert.threshold
    assert alert.alert.top, "the alert carries its top contributing metrics"
    assert alert.alert.top[0].metric in ("latency_p50_ms", "latency_p99_ms")
    # the resource predictor's outputs arrive as scores of the agent's intervals
    rows = [r for r in setup.server.store.query_intervals("acme", "iris-prod", None, 0, 2**62)]
    predicted = [r for r in rows if r.agent == "ops-agent" and "memory_p90_next" in r.scores]
    assert predicted
    for r in predicted:
        assert r.scores["memory_p90_next"] == pytest.approx(
            1.1 * r.resources["process_memory_bytes"], rel=1e-3
        )
        assert "cpu_p90_next" in r.scores


@pytest.mark.slow
def test_trained_ops_models_run_in_the_agent(setup: Setup, tmp_path: Path) -> None:
    """The anomaly model (windowed autoencoder) and the resource model, trained with torch and
    exported to ONNX by foedus.federation, are registered, assigned and run by a real agent; the
    agent's scores equal the torch model's on the same intervals."""
    pytest.importorskip("torch")
    from foedus.client_sdk.agent.history import HISTORY_METRICS
    from foedus.federation.anomaly import AnomalyConfig, AnomalyModel
    from foedus.federation.resources import train_from_matrix

    rng = np.random.default_rng(7)
    t = np.arange(800)
    requests = 40 + 10 * np.sin(t / 30) + rng.normal(0, 2, t.size)
    history = np.column_stack(
        [
            requests,
            np.clip(rng.normal(0.01, 0.003, t.size), 0, 1),
            0.1 + 0.002 * requests + rng.normal(0, 0.005, t.size),
            0.3 + 0.004 * requests + rng.normal(0, 0.01, t.size),
            5 + 0.3 * requests + rng.normal(0, 1, t.size),
            4e8 + 1e5 * requests + rng.normal(0, 1e5, t.size),
        ]
    )
    config = AnomalyConfig(window=5, hidden=16, code=4, epochs=2, calibration_block=50)
    anomaly = AnomalyModel.fit(history, feature_names=HISTORY_METRICS, config=config, search=False)
    setup.owner.models.register("ops-anomaly", anomaly.export_onnx(tmp_path / "anomaly.onnx"))
    summary = train_from_matrix(history, list(HISTORY_METRICS), tmp_path / "resource.onnx", seed=0)
    setup.owner.models.register("ops-resource", tmp_path / "resource.onnx")
    for name in ("ops-anomaly", "ops-resource"):
        setup.owner.deployments.create(name, name, traffic={1: 1.0})
    agent = setup.start_ops_agent(tmp_path / "ops-agent", "ops-agent", "ops-anomaly", "ops-resource")
    wait_for(
        lambda: agent.anomaly_scorer is not None and agent.resource_predictor is not None,
        60,
        "the trained ops models to load",
    )
    scorer, predictor = agent.anomaly_scorer, agent.resource_predictor
    assert scorer is not None and predictor is not None
    assert anomaly.config.windows == (5, 10)  # the default pair of ensemble members
    assert (scorer.window, scorer.features, scorer.threshold) == (
        10,
        HISTORY_METRICS,
        pytest.approx(anomaly.threshold),
    )
    assert predictor.window == summary["window"]
    # the agent's ONNX scorer and the torch model agree on the same intervals (the drift
    # compensation the export asks for has not moved: fewer than drift_blocks blocks have passed)
    assert scorer.compensation is not None
    assert scorer.compensation.blocks == config.drift_blocks
    assert (scorer.compensation.weights == 1.0).all()
    rows = history[-12:]
    assert scorer.score(rows) == pytest.approx(float(anomaly.score(rows)[-1]), rel=1e-4, abs=1e-5)
    # and both models' outputs arrive as scores of the agent's intervals
    channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
    setup.agent_channels.append(channel)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    x, _ = iris_data()

    def scored() -> bool:
        stub.ModelInfer(request(x[:2]), timeout=10)
        store = setup.server.store
        found = [
            r for r in store.query_intervals("acme", "iris-prod", None, 0, 2**62) if r.agent == "ops-agent"
        ]
        return any("cpu_p90_next" in r.scores and "anomaly" in r.scores for r in found)

    wait_for(scored, 30, "intervals scored by both trained models")


def test_a_windowed_scorer_raises_no_alert_before_its_window_is_full(setup: Setup, tmp_path: Path) -> None:
    """A fresh agent pads a windowed model's input with its first interval until W intervals
    exist; those intervals are scored but alert no one, the ones after are alerted on."""
    pytest.importorskip("torch")
    from foedus.client_sdk.agent.history import HISTORY_METRICS
    from foedus.federation.anomaly import AnomalyConfig, AnomalyModel

    rng = np.random.default_rng(3)
    config = AnomalyConfig(window=3, members=2, hidden=8, code=2, epochs=1, calibration_block=50)
    train = rng.normal(size=(300, len(HISTORY_METRICS)))
    model = AnomalyModel.fit(train, feature_names=HISTORY_METRICS, config=config, search=False)
    assert model.window == 6
    # every score is above the threshold tag: only the window rule can hold an alert back
    onnx_path = model.export_onnx(tmp_path / "windowed.onnx")
    setup.owner.models.register("ops-anomaly", onnx_path, tags={"threshold": "-1"})
    setup.owner.deployments.create("ops-anomaly", "ops-anomaly", traffic={1: 1.0})
    agent = setup.start_ops_agent(tmp_path / "fresh-agent", "fresh-agent", "ops-anomaly")
    wait_for(lambda: agent.anomaly_scorer is not None, 60, "the windowed model to load")
    channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
    setup.agent_channels.append(channel)
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    x, _ = iris_data()

    def alerts() -> list[Any]:
        stub.ModelInfer(request(x[:2]), timeout=10)
        found = setup.monitoring.ListAlerts(
            monitoring_pb2.ListAlertsRequest(deployment="iris-prod"), metadata=setup.meta
        ).alerts
        return [a for a in found if a.alert.detector == "ops-anomaly:v1" and a.agent == "fresh-agent"]

    wait_for(lambda: bool(alerts()), 60, "alerts once the window is full")
    first = min(a.alert.time_unix_ms for a in alerts())
    rows = agent.history.rows()
    scored = sorted({t for t, _, _, scores in rows if "anomaly" in scores and t < first})
    # the intervals up to and including the first alerted one (every one of them scored over the
    # threshold, and the agent records an interval only when it served traffic): the first alert
    # comes with the first full window, not before it and not later
    assert len(scored) == model.window, (len(scored), model.window)
