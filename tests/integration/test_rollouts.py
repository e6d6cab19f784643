"""Progressive rollouts end to end: a real server process, two real agents, clients under load.

The controller ticks every 0.3 s and the agents report every 0.3 s, so a rollout of a few
short steps finishes in seconds. The server is SIGKILLed mid-rollout and restarted on the same
port and data directory: the rollout resumes from its stored state. With --replicas the control
plane is two server processes on one PostgreSQL database: the replica that holds the controller's
lease is the one SIGKILLed mid-rollout, and the other takes the rollout over.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data, iris_onnx, slow_iris_onnx
from serverproc import ServerSet

pytest.importorskip("onnxruntime")

from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.agent.runtime import Agent, AgentConfig
from foedus.client_sdk.errors import FailedPrecondition
from foedus.client_sdk.rollouts import TERMINAL, phase_name
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc
from foedus.v1 import rollout_pb2

TICK_S = 0.3
GOOD, BAD = 2, 3


class Load:
    """Clients calling both agents back to back; every failed call is kept."""

    def __init__(self, targets: list[str]) -> None:
        x, _ = iris_data()
        self.rows = x.astype(np.float32)
        self.failures: list[str] = []
        self.served: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.channels = [grpc.insecure_channel(t) for t in targets]
        self.threads = [
            threading.Thread(target=self._run, args=(channel, i), daemon=True)
            for i, channel in enumerate(self.channels)
        ]
        for t in self.threads:
            t.start()

    def _run(self, channel: grpc.Channel, seed: int) -> None:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            row = self.rows[rng.integers(len(self.rows))][None, :]
            req = inference_pb2.ModelInferRequest(model_name="iris-prod")
            req.inputs.add(name="input", datatype="FP32", shape=list(row.shape))
            req.raw_input_contents.append(row.astype("<f4").tobytes())
            try:
                version = stub.ModelInfer(req, timeout=10).model_version
            except grpc.RpcError as exc:
                with self.lock:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")
                continue
            with self.lock:
                self.served[version] = self.served.get(version, 0) + 1

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)
        for c in self.channels:
            c.close()


class Rig:
    def __init__(self, tmp: Path, start_control_plane: Callable[..., ServerSet]) -> None:
        self.tmp = tmp
        self.server = start_control_plane(tmp / "server", rollout_tick_s=TICK_S)
        self.key = self.server.create_tenant("acme")
        self.client = Client.connect(self.server.target, api_key=self.key)
        models = tmp / "models"
        models.mkdir()
        x, _ = iris_data()
        self.client.models.register("iris", iris_onnx(models, c=1.0, name="v1.onnx"), reference_data=x)
        self.client.models.register("iris", iris_onnx(models, c=0.9, name="v2.onnx"), reference_data=x)
        self.client.models.register("iris", slow_iris_onnx(models), reference_data=x)
        self.client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        agent_key = self.client.keys.create("agent").secret
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.agents = [
            self._call(
                self._start_agent(
                    AgentConfig(
                        deployment="iris-prod",
                        server=self.server.target,
                        api_key=agent_key,
                        listen="127.0.0.1:0",
                        data_dir=tmp / f"agent-{i}",
                        name=f"agent-{i}",
                        interval_s=TICK_S,
                    )
                )
            )
            for i in range(2)
        ]
        wait_for(lambda: all(a.generation >= 1 for a in self.agents), 60, "agents to load version 1")
        self.load = Load([f"127.0.0.1:{a.port}" for a in self.agents])

    @staticmethod
    async def _start_agent(config: AgentConfig) -> Agent:
        agent = Agent(config)
        await agent.start()
        return agent

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def wait_done(self, rollout_id: int, timeout: float = 90) -> rollout_pb2.Rollout:
        box: list[rollout_pb2.Rollout] = []

        def finished() -> bool:
            r = self.client.rollouts.get(rollout_id)
            box[:] = [r]
            return r.phase in TERMINAL

        wait_for(finished, timeout, f"rollout {rollout_id} to finish")
        return box[0]

    def close(self) -> None:
        self.load.close()
        for agent in self.agents:
            self._call(agent.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.client.close()


@pytest.fixture
def rig(tmp_path: Path, start_control_plane: Callable[..., ServerSet]) -> Iterator[Rig]:
    r = Rig(tmp_path, start_control_plane)
    try:
        yield r
    finally:
        r.close()


def kinds(events: list[rollout_pb2.RolloutEvent]) -> list[str]:
    return [e.kind for e in events]


def test_good_canary_is_promoted_step_by_step(rig: Rig) -> None:
    c = rig.client
    r = c.rollouts.start("iris-prod", GOOD, steps=[(20, 2, 30), (50, 2, 30), (100, 1, 1)])
    assert (r.phase, r.stable_version, r.candidate_version, r.step_count) == (
        rollout_pb2.ROLLOUT_PHASE_PROGRESSING,
        1,
        GOOD,
        3,
    )
    assert [(t.version, t.weight) for t in c.deployments.get("iris-prod").traffic] == [
        (1, 80.0),
        (GOOD, 20.0),
    ]
    # While it runs, the traffic belongs to the rollout.
    with pytest.raises(FailedPrecondition, match="active rollout"):
        c.deployments.set_traffic("iris-prod", {1: 1.0})
    done = rig.wait_done(r.id)
    assert phase_name(done.phase) == "succeeded", done.reason
    events = c.rollouts.events(r.id)
    assert kinds(events)[0] == "started"
    steps = [e for e in events if e.kind == "step"]
    assert [(e.step, e.weight) for e in steps] == [(1, 50.0), (2, 100.0)]
    assert kinds(events)[-1] == "succeeded"
    assert steps[0].evidence["candidate_requests"] >= 30
    # the candidate serves iris rows, as in its reference profile: little input drift
    assert 0.0 <= done.analysis["input_psi_max"] < 0.25
    assert [(t.version, t.weight) for t in c.deployments.get("iris-prod").traffic] == [(GOOD, 100.0)]
    wait_for(lambda: rig.load.served.get(str(GOOD), 0) > 0, 10, "the candidate to serve")
    assert rig.load.failures == []
    # The DORA report counts one deployment and no failure.
    [model, total] = c.rollouts.dora().metrics
    assert (model.model, model.deployments, model.failures, total.model) == ("iris", 1, 0, "")
    assert model.lead_time_median_h > 0


def test_bad_version_is_rolled_back_once_also_across_a_restart(rig: Rig) -> None:
    c = rig.client
    r = c.rollouts.start("iris-prod", BAD, steps=[(20, 30, 100), (100, 30, 100)])
    done = rig.wait_done(r.id, timeout=60)
    assert phase_name(done.phase) == "rolled_back", done.reason
    assert "regression" in done.reason
    assert done.analysis["candidate_p99_ms"] > done.analysis["stable_p99_ms"]
    # decided by the analysis inside the first step (it never advanced), not by a deadline
    assert done.step == 0
    assert kinds(c.rollouts.events(r.id)).count("step") == 0
    deployment = c.deployments.get("iris-prod")
    assert [(t.version, t.weight) for t in deployment.traffic] == [(1, 100.0)]
    assert rig.load.failures == []
    alerts = c.monitoring.alerts("iris-prod")
    assert any(a.alert.kind == "rollout_rolled_back_analysis" for a in alerts)
    # A SIGKILL and a restart change nothing: no second rollback, no traffic change.
    rig.server.kill()
    rig.server.start()
    time.sleep(6 * TICK_S)
    events = c.rollouts.events(r.id)
    assert kinds(events).count("rolled_back") == 1
    assert c.deployments.get("iris-prod").generation == deployment.generation
    [model, _] = c.rollouts.dora().metrics
    assert (model.deployments, model.failures, model.change_failure_rate) == (0, 1, 1.0)
    assert model.recovery_time_median_min >= 0


def test_sigkill_mid_rollout_resumes_without_skipping_or_repeating_a_step(rig: Rig) -> None:
    c = rig.client
    weights = (10.0, 25.0, 50.0, 75.0, 100.0)
    r = c.rollouts.start("iris-prod", GOOD, steps=[(w, 2, 20) for w in weights])
    wait_for(lambda: c.rollouts.get(r.id).step >= 1, 60, "the rollout to reach step 2")
    before = c.rollouts  # the client reconnects by itself once the server is back
    if len(rig.server.members) == 1:
        rig.server.kill()
        time.sleep(1.0)  # agents keep serving the current split while the control plane is away
        rig.server.start()
    else:  # the replica driving the rollout dies; the other takes over once the lease expires
        holder = rig.server.lease_holder("rollout-controller")
        assert holder is not None, "no replica holds the rollout controller's lease"
        holder.kill()
    done = rig.wait_done(r.id)
    assert phase_name(done.phase) == "succeeded", done.reason
    events = before.events(r.id)
    steps = [e.step for e in events if e.kind == "step"]
    assert steps == [1, 2, 3, 4], kinds(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events).count("succeeded") == 1
    assert "rolled_back" not in kinds(events)
    assert [(t.version, t.weight) for t in c.deployments.get("iris-prod").traffic] == [(GOOD, 100.0)]
    assert rig.load.failures == []


def test_pause_resume_abort_and_tenant_isolation(rig: Rig) -> None:
    c = rig.client
    r = c.rollouts.start("iris-prod", GOOD, steps=[(30, 60, 10), (100, 60, 10)])
    paused = c.rollouts.pause(r.id, reason="looking at a dashboard")
    assert (phase_name(paused.phase), paused.reason) == ("paused", "looking at a dashboard")
    with pytest.raises(FailedPrecondition, match="already paused"):
        c.rollouts.pause(r.id)
    resumed = c.rollouts.resume(r.id)
    assert phase_name(resumed.phase) == "progressing"
    with pytest.raises(FailedPrecondition, match="active rollout"):
        c.rollouts.start("iris-prod", BAD)
    # another tenant sees none of it
    other_key = rig.server.create_tenant("other")
    with Client.connect(rig.server.target, api_key=other_key) as other:
        assert other.rollouts.list() == []
        assert [m.deployments for m in other.rollouts.dora().metrics] == [0]
    aborted = c.rollouts.abort(r.id)
    assert (phase_name(aborted.phase), aborted.candidate_weight) == ("aborted", 0.0)
    assert [(t.version, t.weight) for t in c.deployments.get("iris-prod").traffic] == [(1, 100.0)]
    with pytest.raises(FailedPrecondition, match="already finished"):
        c.rollouts.promote(r.id)
    # (a tick between resume and abort may have logged its "no regression so far" analysis)
    events = [k for k in kinds(c.rollouts.events(r.id)) if k != "analysis"]
    assert events == ["started", "paused", "resumed", "aborted"]
    # a watch of a finished rollout replays its events and ends
    watched = [m.event.kind for m in c.rollouts.watch(r.id, timeout=10)]
    assert [k for k in watched if k != "analysis"] == ["started", "paused", "resumed", "aborted"]
    assert rig.load.failures == []
