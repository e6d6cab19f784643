"""Drift reports end to end: a real control plane, a real agent counting served inputs, the SDK and CLI.

The iris model is registered with the iris rows as its reference (150 rows, so the default method
uses the KS and chi-square p-values). The agent first serves every iris row twice: the served
distribution is the reference's, and nothing drifts. Then it serves the rows with petal length
(feature x2) moved up by 3 cm: that feature, and only it, drifts. Each phase is read over its own
window. Another tenant sees none of it.
"""

from __future__ import annotations

import asyncio
import json
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

from testkit import run_cli, wait_for

from foedus.client_sdk import Client, DriftThresholds, FailedPrecondition, InvalidArgument, NotFound
from foedus.client_sdk.agent.runtime import Agent, AgentConfig
from foedus.client_sdk.testing import LocalServer
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc
from foedus.v1 import monitoring_pb2

INTERVAL_S = 0.3


class Rig:
    def __init__(self, tmp: Path, make_server: Callable[..., LocalServer]) -> None:
        self.server = make_server(tmp / "server", latency_runs=3)
        self.key = self.server.create_tenant("acme")
        self.client = Client.connect(self.server.target, api_key=self.key)
        models = tmp / "models"
        models.mkdir()
        self.x, _ = iris_data()
        self.client.models.register("iris", iris_onnx(models, c=1.0, name="v1.onnx"), reference_data=self.x)
        self.client.models.register("iris", iris_onnx(models, c=0.5, name="v2.onnx"))  # no profile
        self.client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        agent_key = self.client.keys.create("agent").secret
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = AgentConfig(
            deployment="iris-prod",
            server=self.server.target,
            api_key=agent_key,
            listen="127.0.0.1:0",
            data_dir=tmp / "agent",
            name="agent-0",
            interval_s=INTERVAL_S,
        )
        self.agent: Agent = self._call(self._start(config))
        wait_for(lambda: self.agent.generation >= 1, 60, "the agent to load version 1")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.agent.port}")
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    @staticmethod
    async def _start(config: AgentConfig) -> Agent:
        agent = Agent(config)
        await agent.start()
        return agent

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def serve(self, rows: np.ndarray) -> None:
        for start in range(0, len(rows), 10):
            batch = rows[start : start + 10].astype("<f4")
            req = inference_pb2.ModelInferRequest(model_name="iris-prod")
            req.inputs.add(name="input", datatype="FP32", shape=list(batch.shape))
            req.raw_input_contents.append(batch.tobytes())
            self.stub.ModelInfer(req, timeout=10)

    def report_after(self, since_ms: int, rows: int) -> monitoring_pb2.GetDriftReportResponse:
        """The report over [since_ms, now) once the agent reported `rows` inputs in it."""
        box: list[monitoring_pb2.GetDriftReportResponse] = []

        def counted() -> bool:
            window_s = max(1, int((time.time() * 1000 - since_ms) // 1000))
            box[:] = [self.client.monitoring.drift("iris-prod", window_s=window_s)]
            return all(f.current_count >= rows for f in box[0].features)

        wait_for(counted, 30, f"{rows} inputs in the drift report")
        return box[0]

    def close(self) -> None:
        self.channel.close()
        self._call(self.agent.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.client.close()
        self.server.stop()


@pytest.fixture
def rig(tmp_path: Path, make_server: Callable[..., LocalServer]) -> Iterator[Rig]:
    r = Rig(tmp_path, make_server)
    try:
        yield r
    finally:
        r.close()


def test_drift_report_from_agent_counts(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    served = np.concatenate([rig.x, rig.x])
    start_ms = int(time.time() * 1000) - 1000
    rig.serve(served)
    quiet = rig.report_after(start_ms, len(served))
    assert (quiet.model, quiet.version) == ("iris", 1)
    assert [f.name for f in quiet.features] == ["x0", "x1", "x2", "x3"]
    assert quiet.intervals >= 1 and quiet.compared_features == 4
    for f in quiet.features:
        assert f.current_count == len(served) and f.reference_count == len(rig.x)
        # the same rows, each twice: the served distribution is the reference's
        assert f.method in ("ks", "chi2") and not f.drifted
        assert f.psi == pytest.approx(0.0, abs=1e-9) and f.ks_statistic == pytest.approx(0.0, abs=1e-12)
    assert not quiet.dataset_drift and quiet.thresholds.p_value == 0.05

    # Let the first phase's last interval close before the second phase starts.
    time.sleep(3 * INTERVAL_S)
    second_ms = int(time.time() * 1000)
    time.sleep(2 * INTERVAL_S)
    moved = rig.x.copy()
    moved[:, 2] += 3.0
    rig.serve(moved)
    report = rig.report_after(second_ms, len(moved))
    by_name = {f.name: f for f in report.features}
    assert [f.name for f in report.features if f.drifted] == ["x2"]
    assert by_name["x2"].ks_p_value < 1e-6 and by_name["x2"].psi > 1.0
    assert by_name["x2"].current_count == len(moved)
    assert report.drifted_features == 1 and not report.dataset_drift  # 1 of 4 < 50%
    share = rig.client.monitoring.drift(
        "iris-prod", window_s=report.end_unix_ms // 1000 - second_ms // 1000 + 1,
        thresholds=DriftThresholds(drift_share=0.25),
    )  # fmt: skip
    assert share.dataset_drift and share.thresholds.drift_share == 0.25
    psi = rig.client.monitoring.drift("iris-prod", window_s=3600, method="psi")
    assert {f.method for f in psi.features} == {"psi"}

    target, key = rig.server.target, rig.key
    code, out, _ = run_cli(capsys, "--server", target, "--api-key", key, "drift", "report", "iris-prod")
    assert code == 0
    x2 = next(line for line in out.splitlines() if line.startswith("x2"))
    assert "DRIFT" in x2
    assert "iris v1: 1 of 4 features drifted" in out
    code, out, _ = run_cli(
        capsys, "--server", target, "--api-key", key, "-o", "json", "drift", "report", "iris-prod",
        "--version", "1", "--window", "1h", "--method", "psi",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out)
    assert data["version"] == 1 and {f["method"] for f in data["features"]} == {"psi"}
    code, _, err = run_cli(
        capsys, "--server", target, "--api-key", key, "drift", "report", "iris-prod", "--window", "soon"
    )
    assert code == 2 and "--window" in err


def test_drift_report_errors_and_tenant_isolation(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NotFound):
        rig.client.monitoring.drift("ghost")
    with pytest.raises(NotFound):
        rig.client.monitoring.drift("iris-prod", version=9)
    with pytest.raises(FailedPrecondition, match="no reference profile"):
        rig.client.monitoring.drift("iris-prod", version=2)
    with pytest.raises(InvalidArgument, match="unknown drift method"):
        rig.client.monitoring.drift("iris-prod", method="magic")
    with pytest.raises(InvalidArgument, match="p_value"):
        rig.client.monitoring.drift("iris-prod", thresholds=DriftThresholds(p_value=2.0))
    other = Client.connect(rig.server.target, api_key=rig.server.create_tenant("globex"))
    try:
        with pytest.raises(NotFound) as theirs:
            other.monitoring.drift("iris-prod")
        with pytest.raises(NotFound) as ghost:
            other.monitoring.drift("ghost")
        assert str(theirs.value).replace("iris-prod", "X") == str(ghost.value).replace("ghost", "X")
    finally:
        other.close()
    code, _, err = run_cli(
        capsys, "--server", rig.server.target, "--api-key", rig.key, "drift", "report", "ghost"
    )
    assert code == 3 and "ghost" in err
