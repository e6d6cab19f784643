"""Rollout strategies, gates, windows, capacity and predictive rollback against a real server.

A simulated agent (the test, with an agent key) reads the deployment's traffic split and reports
what each version served through the real AgentService, so the behaviour of each version (error
rate, latency, load) is chosen exactly. The controller ticks every 0.2 s.
"""

from __future__ import annotations

import csv
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data, iris_onnx, slow_iris_onnx
from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.agent.histogram import latency_bucket_index
from foedus.client_sdk.errors import FailedPrecondition
from foedus.client_sdk.rollouts import TERMINAL, phase_name
from foedus.client_sdk.testing import LocalServer
from foedus.v1 import agent_pb2, agent_pb2_grpc, rollout_pb2

TICK_S = 0.2
HOUR_MS = 3_600_000
TAXI = Path(__file__).resolve().parents[1] / "data" / "nyc_taxi" / "nyc_taxi_2014-09-08_2014-11-16.csv"


@dataclass
class Behaviour:
    """How a version behaves: its error rate and lognormal latency (median, log-sd)."""

    error_rate: float = 0.01
    median_ms: float = 5.0
    log_sd: float = 0.4
    median_growth_per_s: float = 0.0  # the median grows by this factor per second (a trend)


@dataclass
class SimAgent:
    """Reports, every `interval_s`, what each version of the current split served at `rps`."""

    channel: grpc.Channel
    key: str
    deployment: str
    behaviours: dict[int, Behaviour]
    rps: float = 400.0
    interval_s: float = 0.1
    name: str = "sim-agent"
    cpu_count: int = 8
    seed: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {self.key}"),)
        self.rng = np.random.default_rng(self.seed)
        self.stub.RegisterAgent(
            agent_pb2.RegisterAgentRequest(
                deployment=self.deployment,
                agent=agent_pb2.AgentInfo(name=self.name, host="sim", cpu_count=self.cpu_count),
            ),
            metadata=self.md,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _report(self, version: int, n: int, shadow: bool) -> agent_pb2.IntervalReport:
        b = self.behaviours[version]
        median = b.median_ms * (1.0 + b.median_growth_per_s) ** (time.monotonic() - self.started)
        latencies = self.rng.lognormal(np.log(median), b.log_sd, size=n)
        buckets, counts = np.unique(latency_bucket_index(latencies), return_counts=True)
        return agent_pb2.IntervalReport(
            start_unix_ms=time.time_ns() // 1_000_000,
            duration_ms=int(self.interval_s * 1000),
            version=version,
            shadow=shadow,
            requests=n,
            errors=int(self.rng.binomial(n, b.error_rate)),
            latency_ms=agent_pb2.SparseHistogram(
                buckets=buckets.tolist(), counts=counts.tolist(), sum=float(latencies.sum())
            ),
            resources=agent_pb2.Resources(process_cpu_percent=20.0),
        )

    def _run(self) -> None:
        from foedus.v1 import deployment_pb2_grpc

        deployments = deployment_pb2_grpc.DeploymentServiceStub(self.channel)
        try:
            self._loop(deployments)
        except BaseException as exc:  # reported by close()
            self.error = exc

    def _loop(self, deployments: Any) -> None:
        from foedus.v1 import deployment_pb2

        while not self.stop.wait(self.interval_s):
            try:
                d = deployments.GetDeployment(
                    deployment_pb2.GetDeploymentRequest(name=self.deployment), metadata=self.md
                ).deployment
                total = int(self.rng.poisson(self.rps * self.interval_s))
                weights = {t.version: t.weight for t in d.traffic if t.weight > 0}
                reports = []
                for version, weight in weights.items():
                    n = round(total * weight / sum(weights.values()))
                    if n:
                        reports.append(self._report(version, n, False))
                if d.shadow_version and total:
                    reports.append(self._report(d.shadow_version, total, True))
                batch = agent_pb2.TelemetryBatch(
                    batch_id=secrets.token_hex(8),
                    deployment=self.deployment,
                    agent=self.name,
                    intervals=reports,
                )
                list(
                    self.stub.ReportTelemetry(
                        iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=self.md
                    )
                )
            except grpc.RpcError:
                pass  # the server is shutting down at the end of a test

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert self.error is None, f"the simulated agent failed: {self.error!r}"


class World:
    def __init__(self, tmp: Path, make_server: Callable[..., LocalServer]) -> None:
        self.server = make_server(tmp / "server", latency_runs=5, rollout_tick_s=TICK_S)
        self.key = self.server.create_tenant("acme")
        self.client = Client.connect(self.server.target, api_key=self.key)
        self.agent_key = self.client.keys.create("agent").secret
        self.channel = grpc.insecure_channel(self.server.target)
        models = tmp / "models"
        models.mkdir()
        self.models = models
        x, _ = iris_data()
        for i, c in enumerate((1.0, 0.9, 0.8)):
            self.client.models.register(
                "iris", iris_onnx(models, c=c, name=f"v{i + 1}.onnx"), reference_data=x
            )
        self.sims: list[SimAgent] = []

    def deploy(self, name: str, behaviours: dict[int, Behaviour], **kw: object) -> SimAgent:
        self.client.deployments.create(name, "iris", traffic={1: 1.0})
        sim = SimAgent(self.channel, self.agent_key, name, behaviours, name=f"sim-{name}", **kw)  # type: ignore[arg-type]
        self.sims.append(sim)
        return sim

    def wait_done(self, rollout_id: int, timeout: float = 60) -> rollout_pb2.Rollout:
        box: list[rollout_pb2.Rollout] = []

        def finished() -> bool:
            box[:] = [self.client.rollouts.get(rollout_id)]
            return box[0].phase in TERMINAL

        wait_for(finished, timeout, f"rollout {rollout_id} to finish")
        return box[0]

    def traffic(self, name: str) -> tuple[list[tuple[int, float]], int]:
        d = self.client.deployments.get(name)
        return [(t.version, t.weight) for t in d.traffic], d.shadow_version

    def close(self) -> None:
        for sim in self.sims:
            sim.close()
        self.channel.close()
        self.client.close()
        self.server.stop()


@pytest.fixture
def world(tmp_path: Path, make_server: Callable[..., LocalServer]) -> Iterator[World]:
    w = World(tmp_path, make_server)
    try:
        yield w
    finally:
        w.close()


def kinds(events: list[rollout_pb2.RolloutEvent]) -> list[str]:
    return [e.kind for e in events]


def test_blue_green_previews_mirrored_then_switches_with_the_old_version_mirrored(world: World) -> None:
    world.deploy("bg", {1: Behaviour(), 2: Behaviour()})
    r = world.client.rollouts.start("bg", 2, strategy="blue-green", preview_s=1, post_switch_s=1)
    assert world.traffic("bg") == ([(1, 100.0)], 2)  # preview: the candidate sees a mirrored copy
    seen: set[tuple[tuple[tuple[int, float], ...], int]] = set()

    def switched() -> bool:
        live, shadow = world.traffic("bg")
        seen.add((tuple(live), shadow))
        return world.client.rollouts.get(r.id).phase in TERMINAL

    wait_for(switched, 60, "the blue-green rollout to finish")
    done = world.client.rollouts.get(r.id)
    assert phase_name(done.phase) == "succeeded", done.reason
    assert world.traffic("bg") == ([(2, 100.0)], 0)
    assert (((2, 100.0),), 1) in seen  # after the switch, the old version was mirrored for analysis
    assert [e.step for e in world.client.rollouts.events(r.id) if e.kind == "step"] == [1]


def test_shadow_test_of_a_bad_version_rolls_back_without_touching_live_traffic(world: World) -> None:
    world.deploy("sh", {1: Behaviour(error_rate=0.01), 2: Behaviour(error_rate=0.2)})
    r = world.client.rollouts.start("sh", 2, strategy="shadow", duration_s=60)
    assert world.traffic("sh") == ([(1, 100.0)], 2)
    done = world.wait_done(r.id)
    assert phase_name(done.phase) == "rolled_back"
    assert "error rate regression" in done.reason
    assert world.traffic("sh") == ([(1, 100.0)], 0)
    versions_served = {e.weight for e in world.client.rollouts.events(r.id)}
    assert versions_served == {0.0}  # the candidate never had live traffic


def test_ab_test_promotes_the_winner_by_its_metric(world: World) -> None:
    world.deploy("ab", {1: Behaviour(median_ms=8.0), 2: Behaviour(median_ms=5.0)})
    r = world.client.rollouts.start(
        "ab", 2, strategy="ab", ab_weight=50, duration_s=2, ab_metric="latency_p50"
    )
    assert world.traffic("ab") == ([(1, 50.0), (2, 50.0)], 0)
    done = world.wait_done(r.id)
    assert (phase_name(done.phase), done.winner_version) == ("succeeded", 2), done.reason
    assert done.analysis["ab_candidate"] < done.analysis["ab_stable"]
    assert world.traffic("ab") == ([(2, 100.0)], 0)


def test_ab_test_keeps_the_stable_version_when_it_wins(world: World) -> None:
    world.deploy("ab2", {1: Behaviour(median_ms=5.0), 2: Behaviour(median_ms=5.5)})
    r = world.client.rollouts.start(
        "ab2", 2, strategy="ab", ab_weight=50, duration_s=2, ab_metric="latency_p50", analysis={"alpha": 1e-9}
    )
    done = world.wait_done(r.id)
    assert (phase_name(done.phase), done.winner_version) == ("succeeded", 1), done.reason
    assert world.traffic("ab2") == ([(1, 100.0)], 0)


def test_predictive_rollback_before_the_slo_is_breached(world: World) -> None:
    # Both versions slow down alike (load grows), so candidate and stable stay equal and the
    # comparison finds nothing; the candidate's own p99 trend heads for its SLO.
    trend = {1: Behaviour(median_growth_per_s=0.1), 2: Behaviour(median_growth_per_s=0.1)}
    world.deploy("pred", trend)
    r = world.client.rollouts.start(
        "pred",
        2,
        steps=[(50, 600, 10), (100, 600, 10)],
        analysis={"slo_latency_p99_ms": 60.0, "forecast_horizon_s": 30, "breach_probability": 0.95},
    )
    done = world.wait_done(r.id)
    assert phase_name(done.phase) == "rolled_back"
    assert done.reason.startswith("forecast:"), done.reason
    assert done.analysis["forecast_p99"] > 60.0
    # rolled back early: the measured p99 was still under the SLO
    assert done.analysis["candidate_p99_ms"] < 60.0
    assert any(a.alert.kind == "rollout_rolled_back_forecast" for a in world.client.monitoring.alerts("pred"))


def test_a_step_that_does_not_fit_the_capacity_waits_and_says_why(world: World) -> None:
    # one core, and the candidate costs 40 ms a request: 50% of 200 req/s needs 4 cores. The first
    # step lasts until the agents measured the candidate (the registry's profile of v2 is fast).
    world.deploy(
        "cap", {1: Behaviour(median_ms=1.0), 2: Behaviour(median_ms=40.0, log_sd=0.1)}, rps=200, cpu_count=1
    )
    r = world.client.rollouts.start(
        "cap",
        2,
        steps=[(5, 1, 40), (50, 1, 5), (100, 1, 5)],
        analysis={"latency_p50_margin": 100.0, "latency_p99_margin": 100.0},
    )

    def waiting() -> bool:
        return "waiting" in kinds(world.client.rollouts.events(r.id))

    wait_for(waiting, 30, "the capacity check to hold the step")
    [event] = [e for e in world.client.rollouts.events(r.id) if e.kind == "waiting"]
    assert "waiting for capacity" in event.message
    assert event.evidence["projected_cores"] > event.evidence["budget_cores"] == pytest.approx(0.8)
    current = world.client.rollouts.get(r.id)
    assert (current.step, phase_name(current.phase)) == (0, "progressing")
    assert current.reason.startswith("waiting for capacity")
    world.client.rollouts.abort(r.id)


def test_inconclusive_step_pauses_and_alerts_or_rolls_back(world: World) -> None:
    world.deploy("slow-traffic", {1: Behaviour(), 2: Behaviour(), 3: Behaviour()}, rps=20)
    r = world.client.rollouts.start(
        "slow-traffic", 2, steps=[(10, 1, 10**9), (100, 1, 1)], analysis={"step_deadline_s": 1}
    )
    wait_for(
        lambda: phase_name(world.client.rollouts.get(r.id).phase) == "paused", 30, "the rollout to pause"
    )
    paused = world.client.rollouts.get(r.id)
    assert paused.reason.startswith("inconclusive")
    assert any(a.alert.kind == "rollout_inconclusive" for a in world.client.monitoring.alerts("slow-traffic"))
    world.client.rollouts.abort(r.id)
    r2 = world.client.rollouts.start(
        "slow-traffic",
        3,
        steps=[(10, 1, 10**9), (100, 1, 1)],
        analysis={"step_deadline_s": 1, "rollback_on_inconclusive": True},
    )
    done = world.wait_done(r2.id)
    assert phase_name(done.phase) == "rolled_back"
    assert done.reason.startswith("inconclusive")


def test_gates_refuse_a_start_with_the_reasons(world: World) -> None:
    c = world.client
    x, y = iris_data()
    c.models.register("iris", iris_onnx(world.models, c=0.0005, name="weak.onnx"))  # v4: underfit
    c.models.register("iris", slow_iris_onnx(world.models))  # v5
    c.deployments.create("gated", "iris", traffic={1: 1.0})
    c.models.set_alias("iris", "production", 1)
    weak = c.models.evaluate("iris", 4, x, y, dataset="iris-all")
    good = c.models.evaluate("iris", 2, x, y, dataset="iris-all")
    assert weak.baseline_version == good.baseline_version == 1
    assert weak.metrics["accuracy"] < weak.baseline_metrics["accuracy"] - 0.05
    assert good.metrics["accuracy"] >= good.baseline_metrics["accuracy"] - 0.02
    stored = c.models.get_version("iris", 4).lineage.evaluations
    assert [(e.dataset, e.rows, len(e.dataset_fingerprint)) for e in stored] == [("iris-all", 150, 64)]
    gate = {"quality_dataset": "iris-all", "quality_metric": "accuracy", "quality_tolerance": 0.02}
    with pytest.raises(FailedPrecondition, match=r"quality: accuracy .* worse than the stable"):
        c.rollouts.start("gated", 4, gates=gate)
    with pytest.raises(FailedPrecondition, match="no evaluation of version 3"):
        c.rollouts.start("gated", 3, gates=gate)
    with pytest.raises(FailedPrecondition, match="latency budget"):
        c.rollouts.start("gated", 5, gates={"onnx_valid": True, "latency_budget_ms": 0.5})
    assert c.rollouts.list(deployment="gated") == []  # nothing started, nothing changed
    assert world.traffic("gated") == ([(1, 1.0)], 0)
    r = c.rollouts.start("gated", 2, gates={**gate, "onnx_valid": True, "latency_budget_ms": 50.0})
    [gate_event] = [e for e in c.rollouts.events(r.id) if e.kind == "gate"]
    assert gate_event.evidence["quality_candidate"] == pytest.approx(good.metrics["accuracy"])
    c.rollouts.abort(r.id)


def _taxi_hours() -> list[tuple[int, int]]:
    """(hour start in ms, passengers in that hour) of the NYC taxi sample (NAB, MIT licence)."""
    hours: dict[int, int] = {}
    with open(TAXI) as f:
        for row in csv.DictReader(f):
            t = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            start = int(t.timestamp() * 1000) // HOUR_MS * HOUR_MS
            hours[start] = hours.get(start, 0) + int(row["value"])
    return sorted(hours.items())


def test_windows_come_from_the_request_history_and_schedule_a_start(world: World) -> None:
    c = world.client
    c.deployments.create("taxi", "iris", traffic={1: 1.0})
    taxi = _taxi_hours()
    now_hour = time.time_ns() // 1_000_000 // HOUR_MS * HOUR_MS
    shift = now_hour - HOUR_MS - taxi[-1][0]  # the sample's last hour becomes the last full hour
    stub = agent_pb2_grpc.AgentServiceStub(world.channel)
    md = (("authorization", f"Bearer {world.agent_key}"),)
    for i in range(0, len(taxi), 500):
        reports = [
            agent_pb2.IntervalReport(start_unix_ms=t + shift, duration_ms=HOUR_MS, version=1, requests=n)
            for t, n in taxi[i : i + 500]
        ]
        batch = agent_pb2.TelemetryBatch(
            batch_id=f"taxi-{i}", deployment="taxi", agent="history", intervals=reports
        )
        list(stub.ReportTelemetry(iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=md))
    resp = c.rollouts.windows("taxi", duration_s=3600, count=3, days=7)
    assert resp.history_hours == min(len(taxi), 8 * 7 * 24)  # the server looks 8 weeks back
    assert resp.model_mae > 0 and resp.baseline_mae > 0
    assert len(resp.windows) == 3
    for w in resp.windows:
        taxi_hour = datetime.fromtimestamp((w.start.ToMilliseconds() - shift) / 1000, UTC).hour
        assert 1 <= taxi_hour <= 6, f"a window at {taxi_hour}:00 taxi time"
        assert w.relative_to_mean < 0.35
    r = c.rollouts.start("taxi", 2, in_window=True)
    assert phase_name(r.phase) == "scheduled"
    assert r.scheduled_for.ToMilliseconds() == min(w.start.ToMilliseconds() for w in resp.windows[:1])
    assert world.traffic("taxi") == ([(1, 1.0)], 0)  # scheduled: nothing changed yet
    assert kinds(c.rollouts.events(r.id)) == ["scheduled"]
    c.rollouts.abort(r.id)
    # without history there is no forecast, and the error says why
    c.deployments.create("new", "iris", traffic={1: 1.0})
    with pytest.raises(FailedPrecondition, match="hour"):
        c.rollouts.windows("new")


def test_dora_code_lead_time_comes_from_the_lineage(world: World) -> None:
    c = world.client
    revision_time = datetime.fromtimestamp(time.time() - 7200, UTC)
    c.models.register(
        "iris",
        iris_onnx(world.models, c=0.7, name="v4.onnx"),
        lineage={"code_revision": "abc", "code_revision_time": revision_time},
    )
    c.deployments.create("dora", "iris", traffic={1: 1.0})
    r = c.rollouts.start("dora", 4)
    c.rollouts.promote(r.id, reason="hotfix")
    [m, total] = c.rollouts.dora(days=7).metrics
    assert (m.model, m.deployments, total.deployments) == ("iris", 1, 1)
    assert m.code_lead_time_median_h == pytest.approx(2.0, abs=0.05)
    assert m.lead_time_median_h < 0.1
    assert [e.kind for e in c.rollouts.events(r.id)] == ["started", "promoted"]
