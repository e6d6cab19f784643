"""`foedus alerts watch` prints incident events from the WatchAlerts stream as agents report alerts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from foedus.client_sdk import Client
from foedus.client_sdk.testing import LocalServer
from foedus.v1 import agent_pb2, agent_pb2_grpc


def _report_alert(client: Client) -> None:
    alert = agent_pb2.AgentAlert(
        alert_id=uuid.uuid4().hex,
        time_unix_ms=int(time.time() * 1000),
        version=1,
        kind="anomaly",
        score=9.0,
        threshold=4.0,
        detector="ewma-robust-z",
        top=[agent_pb2.Contribution(metric="latency_p99_ms", value=42.0, attribution=9.0)],
    )
    batch = agent_pb2.TelemetryBatch(
        batch_id=uuid.uuid4().hex, deployment="iris-prod", agent="a1", alerts=[alert]
    )
    stub = agent_pb2_grpc.AgentServiceStub(client._channel)
    acks = list(
        stub.ReportTelemetry(
            iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=client._rpc.metadata
        )
    )
    assert len(acks) == 1


def test_watch_prints_the_open_incident_then_its_updates(server: LocalServer, onnx_model: Path) -> None:
    owner = server.create_tenant(f"w-{uuid.uuid4().hex[:8]}")
    with Client.connect(server.target, api_key=owner) as client:
        client.models.register("iris", onnx_model)
        client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        _report_alert(client)  # opens the incident before the watch begins
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
        watch = subprocess.Popen(
            [sys.executable, "-m", "foedus.client_sdk.cli.main", "--server", server.target, "--api-key", owner,
             "-o", "json", "alerts", "watch", "--deployment", "iris-prod", "--count", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            first = watch.stdout.readline()  # the watch has begun: what follows is live
            _report_alert(client)
            rest, err = watch.communicate(timeout=60)
        finally:
            watch.kill()
    assert watch.returncode == 0, err
    lines = [json.loads(line) for line in [first, *rest.strip().splitlines()]]
    got = [(e["kind"], int(e["incident"]["alert_count"])) for e in lines]
    assert got == [("INCIDENT_EVENT_KIND_OPEN", 1), ("INCIDENT_EVENT_KIND_UPDATED", 2)]
    assert lines[0]["incident"]["id"] == lines[1]["incident"]["id"]
    assert int(lines[1]["id"]) > 0
    assert lines[1]["incident"]["metrics"][0]["metric"] == "latency_p99_ms"
    assert lines[1]["incident"]["deployment"] == "iris-prod"
