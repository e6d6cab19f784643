"""`foedus deployment | metrics | alerts` against a real server: output and documented exit codes."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from testkit import run_cli as run

from foedus.client_sdk import Client
from foedus.client_sdk.agent.histogram import LatencyHistogram
from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.testing import LocalServer
from foedus.v1 import agent_pb2, agent_pb2_grpc


def report(client: Client, deployment: str, version: int, latencies_ms: np.ndarray) -> None:
    """What an agent would send: one interval with a latency histogram, and one alert."""
    hist = LatencyHistogram()
    hist.record_many(latencies_ms)
    buckets, counts = hist.to_sparse()
    now = time.time_ns() // 1_000_000
    batch = agent_pb2.TelemetryBatch(
        batch_id=str(uuid.uuid4()),
        deployment=deployment,
        agent="probe-1",
        intervals=[
            agent_pb2.IntervalReport(
                start_unix_ms=now - 30_000,
                duration_ms=10_000,
                version=version,
                requests=len(latencies_ms),
                errors=4,
                latency_ms=agent_pb2.SparseHistogram(
                    buckets=buckets.tolist(), counts=counts.tolist(), sum=hist.sum_ms
                ),
            )
        ],
        alerts=[
            agent_pb2.AgentAlert(
                alert_id="a-1",
                time_unix_ms=now - 20_000,
                version=version,
                kind="latency",
                score=7.5,
                threshold=4.0,
                detector="ewma-robust-z",
            )
        ],
    )
    stub = agent_pb2_grpc.AgentServiceStub(client._channel)
    acks = list(
        stub.ReportTelemetry(
            iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=client._rpc.metadata
        )
    )
    assert [a.batch_id for a in acks] == [batch.batch_id]


def test_a_deployment_workflow_from_the_shell(
    server: LocalServer, onnx_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner = server.create_tenant(f"cli-{uuid.uuid4().hex[:8]}")
    me = ("--server", server.target, "--api-key", owner)
    for _ in range(3):
        code, _, err = run(capsys, *me, "model", "register", "iris", str(onnx_model))
        assert code == 0, err

    code, out, err = run(capsys, *me, "deployment", "create", "iris-prod", "--model", "iris",
                         "--version", "1", "--weight", "9", "--version", "2", "--weight", "1",
                         "--description", "production")  # fmt: skip
    assert code == 0, err
    assert re.search(r"^iris-prod\s+iris\s+v1=9,v2=1\s+1\s+production", out, re.M), out

    code, out, err = run(
        capsys, *me, "deployment", "create", "iris-canary", "--model", "iris", "--version", "3"
    )
    assert code == 0, err
    assert re.search(r"^iris-canary\s+iris\s+v3=1\s+1", out, re.M), out

    code, out, err = run(capsys, *me, "deployment", "set", "iris-prod", "--version", "2", "--shadow", "3")
    assert code == 0, err
    assert re.search(r"^iris-prod\s+iris\s+v2=1\s+v3\s+2", out, re.M), out

    code, out, _ = run(capsys, *me, "-o", "json", "deployment", "get", "iris-prod")
    assert code == 0
    d = json.loads(out)[0]
    assert (d["traffic"], d["shadow_version"], d["generation"]) == (
        [{"version": 2, "weight": 1.0}],
        3,
        2,
    )

    code, out, _ = run(capsys, *me, "deployment", "list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "iris-canary", "iris-prod"]

    # telemetry, as an editor's agent-like code reports it, then the status
    with Client.connect(server.target, api_key=owner) as client:
        editor = client.keys.create("editor").secret
        viewer = client.keys.create("viewer").secret
    latencies = np.random.default_rng(3).lognormal(np.log(8.0), 0.25, size=400)
    with Client.connect(server.target, api_key=owner) as client:
        agent_key = client.keys.create("agent").secret
    with Client.connect(server.target, api_key=agent_key) as client:
        info = agent_pb2.AgentInfo(
            name="edge-1",
            host="gpu-box.local",
            execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        )
        agent_pb2_grpc.AgentServiceStub(client._channel).RegisterAgent(
            agent_pb2.RegisterAgentRequest(deployment="iris-prod", agent=info), metadata=client._rpc.metadata
        )
    with Client.connect(server.target, api_key=editor) as client:
        report(client, "iris-prod", 2, latencies)
        start = time.time_ns() // 1_000_000 - 120_000
        client.monitoring.log_batch(
            "iris-prod", [("accuracy", 0.9, start, 1), ("accuracy", 0.8, start + 60_000, 2)]
        )

    code, out, err = run(capsys, *me, "deployment", "status", "iris-prod", "--window", "600")
    assert code == 0, err
    row = re.search(r"^2\s+(\d+)\s+(\d+)\s+([\d.]+)%\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert row, out
    assert (row[1], row[2], row[3]) == ("400", "4", "1.00")
    assert float(row[4]) == pytest.approx(np.median(latencies), rel=0.05)
    assert float(row[6]) == pytest.approx(400 / 600, abs=1e-3)
    assert "agents (1)" in out  # the probe never registered, edge-1 did
    assert re.search(
        r"^edge-1\s+gpu-box.local\s+CUDAExecutionProvider,CPUExecutionProvider\s+\S+Z$", out, re.M
    ), out

    code, out, _ = run(capsys, *me, "-o", "json", "deployment", "status", "iris-prod")
    status = json.loads(out)
    assert status["deployment"]["name"] == "iris-prod"
    assert status["versions"][0]["requests"] == 400

    code, out, err = run(capsys, *me, "metrics", "query", "iris-prod", "accuracy", "--since", "10m")
    assert code == 0, err
    assert [line.split()[-1] for line in out.splitlines()] == ["VALUE", "0.9", "0.8"]
    code, out, _ = run(capsys, *me, "-o", "json", "metrics", "query", "iris-prod", "requests", "--version", "2",
                       "--since", "1h", "--step", "3600")  # fmt: skip
    assert [p["value"] for p in json.loads(out)] == [400.0]

    code, out, err = run(capsys, *me, "alerts", "list")
    assert code == 0, err
    assert re.search(
        r"^\d+\s+\S+Z\s+iris-prod\s+probe-1\s+2\s+latency\s+7.5\s+4\s+ewma-robust-z\s+\d+$", out, re.M
    ), out
    code, out, _ = run(capsys, *me, "alerts", "list", "--deployment", "iris-canary")
    assert (code, out.strip()) == (0, "(none)")
    code, out, _ = run(capsys, *me, "-o", "json", "alerts", "list", "--limit", "1")
    assert json.loads(out)[0]["alert"]["alert_id"] == "a-1"

    code, _, err = run(capsys, *me, "model", "archive", "iris", "1")
    assert code == 0, err
    as_viewer = ("--server", server.target, "--api-key", viewer)
    cases = [
        ((*me, "deployment", "get", "nope"), exit_codes.NOT_FOUND, "not found"),
        ((*me, "deployment", "status", "nope"), exit_codes.NOT_FOUND, "not found"),
        (
            (*me, "deployment", "create", "x", "--model", "nope", "--version", "1"),
            exit_codes.NOT_FOUND,
            "not found",
        ),
        ((*me, "deployment", "set", "iris-prod", "--version", "99"), exit_codes.NOT_FOUND, "not found"),
        ((*me, "deployment", "set", "iris-prod", "--version", "1"), exit_codes.INVALID, "archived"),
        (
            (*me, "deployment", "create", "Bad!", "--model", "iris"),
            exit_codes.INVALID,
            "invalid deployment name",
        ),
        (
            (*me, "deployment", "create", "iris-prod", "--model", "iris"),
            exit_codes.CONFLICT,
            "already exists",
        ),
        ((*as_viewer, "deployment", "set", "iris-prod", "--version", "2"), exit_codes.DENIED, "viewer"),
        (
            (*me, "deployment", "set", "iris-prod", "--version", "2", "--version", "3", "--weight", "1"),
            exit_codes.USAGE,
            "one --weight per --version",
        ),
        (
            (*me, "metrics", "query", "iris-prod", "accuracy", "--since", "yesterday"),
            exit_codes.USAGE,
            "duration",
        ),
        ((*me, "deployment", "create", "y"), exit_codes.USAGE, "--model"),
        ((*me, "deployment", "set", "iris-prod"), exit_codes.USAGE, "at least one version"),
        ((*me, "metrics", "query", "nope", "accuracy"), exit_codes.NOT_FOUND, "not found"),
    ]
    for args, expected, text in cases:
        code, out, err = run(capsys, *args)
        assert code == expected, (args, out, err)
        assert text in err, (args, err)
        assert "Traceback" not in err

    # unchanged by the refusals
    code, out, _ = run(capsys, *me, "-o", "json", "deployment", "get", "iris-prod")
    assert json.loads(out)[0]["generation"] == 2
