"""Incidents: agents' alerts grouped per deployment, states, the WatchAlerts stream, signed webhooks
and ranked causes, on a real server through the SDK and the CLI."""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testkit import run_cli, wait_for

from foedus.client_sdk import Client, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from foedus.client_sdk.testing import LocalServer
from foedus.client_sdk.webhooks import SIGNATURE_HEADER, SignatureError, verify_signature
from foedus.v1 import agent_pb2, agent_pb2_grpc, monitoring_pb2

M = monitoring_pb2


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def alert(
    t_ms: int,
    *,
    version: int = 1,
    score: float = 9.0,
    top: dict[str, float] | None = None,
    alert_id: str = "",
) -> agent_pb2.AgentAlert:
    attributions = top if top is not None else {"latency_p99_ms": 6.0, "errors": -1.0, "requests": 0.5}
    return agent_pb2.AgentAlert(
        alert_id=alert_id or uuid.uuid4().hex,
        time_unix_ms=t_ms,
        version=version,
        kind="anomaly",
        score=score,
        threshold=4.0,
        detector="ewma-robust-z",
        top=[agent_pb2.Contribution(metric=m, value=1.0, attribution=a) for m, a in attributions.items()],
    )


def report(
    client: Client, deployment: str, alerts: list[agent_pb2.AgentAlert], *, batch_id: str = ""
) -> bool:
    """Sends one telemetry batch with `alerts` as agent "a1"; returns whether it was a duplicate."""
    batch = agent_pb2.TelemetryBatch(
        batch_id=batch_id or uuid.uuid4().hex, deployment=deployment, agent="a1", alerts=alerts
    )
    stub = agent_pb2_grpc.AgentServiceStub(client._channel)
    (ack,) = stub.ReportTelemetry(
        iter([agent_pb2.ReportTelemetryRequest(batch=batch)]), metadata=client._rpc.metadata
    )
    return bool(ack.duplicate)


@pytest.fixture
def deployed(tenant: Client, onnx_model: Path) -> Client:
    tenant.models.register("iris", onnx_model)
    tenant.deployments.create("iris-prod", "iris", traffic={1: 1.0})
    return tenant


def test_a_burst_of_alerts_is_one_incident_and_retries_count_once(deployed: Client) -> None:
    t0 = now_ms()
    first = [alert(t0 + i * 30_000) for i in range(4)]  # one alert every 30 s, as agents do
    batch_id = uuid.uuid4().hex
    assert report(deployed, "iris-prod", first, batch_id=batch_id) is False
    assert report(deployed, "iris-prod", first, batch_id=batch_id) is True  # a retried batch
    # The same alerts in a new batch (an agent that lost the acknowledgement) are not new alerts.
    assert report(deployed, "iris-prod", first) is False
    for i in range(4, 12, 2):
        report(deployed, "iris-prod", [alert(t0 + i * 30_000), alert(t0 + (i + 1) * 30_000, score=5.0)])

    (incident,) = deployed.monitoring.incidents("iris-prod")
    assert incident.alert_count == 12
    assert incident.state == M.INCIDENT_STATE_FIRING
    assert incident.severity == M.SEVERITY_CRITICAL  # 12 alerts (and a score 2.25 times its threshold)
    assert (incident.first_alert_unix_ms, incident.last_alert_unix_ms) == (t0, t0 + 11 * 30_000)
    assert list(incident.versions) == [1]
    assert [m.metric for m in incident.metrics] == ["latency_p99_ms", "errors", "requests"]
    assert incident.metrics[0].weight == pytest.approx(6.0 / 7.5)
    alerts = deployed.monitoring.alerts("iris-prod")
    assert len(alerts) == 12
    assert {a.incident_id for a in alerts} == {incident.id}

    # Past the gap (600 s by default) after the last alert, an alert opens a new incident.
    late = t0 + 11 * 30_000 + 601_000
    report(deployed, "iris-prod", [alert(late, score=4.5)])
    newest, older = deployed.monitoring.incidents("iris-prod")
    assert older.id == incident.id
    assert older.alert_count == 12
    assert (newest.alert_count, newest.first_alert_unix_ms) == (1, late)
    assert newest.severity == M.SEVERITY_INFO  # one alert, 1.125 times its threshold


def test_states_move_forward_only_and_need_an_editor(
    deployed: Client, server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    report(deployed, "iris-prod", [alert(now_ms())])
    (incident,) = deployed.monitoring.incidents("iris-prod", open_only=True)
    viewer = deployed.keys.create("viewer").secret
    with Client.connect(server.target, api_key=viewer) as as_viewer:
        with pytest.raises(PermissionDenied):
            as_viewer.monitoring.acknowledge(incident.id)
        assert as_viewer.monitoring.incident(incident.id).incident.state == M.INCIDENT_STATE_FIRING

    acked = deployed.monitoring.acknowledge(incident.id)
    assert acked.state == M.INCIDENT_STATE_ACKNOWLEDGED
    assert acked.acknowledged_by
    assert deployed.monitoring.acknowledge(incident.id).state_changed_unix_ms == acked.state_changed_unix_ms
    # An acknowledged incident keeps collecting the deployment's alerts.
    report(deployed, "iris-prod", [alert(now_ms())])
    assert deployed.monitoring.incident(incident.id).incident.alert_count == 2

    me = ("--server", server.target, "--api-key", server_key(deployed))
    code, out, err = run_cli(capsys, *me, "-o", "json", "alerts", "resolve", str(incident.id))
    assert code == 0, err
    assert json.loads(out)["state"] == "INCIDENT_STATE_RESOLVED"
    with pytest.raises(FailedPrecondition):
        deployed.monitoring.acknowledge(incident.id)
    assert deployed.monitoring.incidents("iris-prod", open_only=True) == []
    # The deployment's next alert opens a new incident: a resolved one never opens again.
    report(deployed, "iris-prod", [alert(now_ms())])
    (reopened,) = deployed.monitoring.incidents("iris-prod", open_only=True)
    assert reopened.id != incident.id
    code, out, err = run_cli(capsys, *me, "alerts", "incidents", "--deployment", "iris-prod")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ID", "DEPLOYMENT", "STATE", "SEVERITY"]
    assert [line.split()[2] for line in lines[1:]] == ["firing", "resolved"]


def server_key(client: Client) -> str:
    return str(dict(client._rpc.metadata)["authorization"]).removeprefix("Bearer ")


def test_other_tenants_incidents_are_not_found(deployed: Client, other_tenant: Client) -> None:
    report(deployed, "iris-prod", [alert(now_ms())])
    (incident,) = deployed.monitoring.incidents()
    for call in (
        lambda: other_tenant.monitoring.incident(incident.id),
        lambda: other_tenant.monitoring.explain(incident.id),
        lambda: other_tenant.monitoring.acknowledge(incident.id),
        lambda: other_tenant.monitoring.resolve(incident.id),
        lambda: next(other_tenant.monitoring.watch_alerts("iris-prod", timeout=10)),
    ):
        with pytest.raises(NotFound):
            call()
    assert other_tenant.monitoring.incidents() == []
    events = other_tenant.monitoring.watch_alerts(timeout=10)
    assert next(events).kind == M.INCIDENT_EVENT_KIND_CAUGHT_UP  # nothing of the other tenant
    assert deployed.monitoring.incident(incident.id).incident.state == M.INCIDENT_STATE_FIRING


def test_explain_ranks_the_blamed_metric_first(deployed: Client) -> None:
    t0 = now_ms()
    report(
        deployed,
        "iris-prod",
        [alert(t0 + i * 1000, top={"latency_p99_ms": 5.0, "errors": 1.0}) for i in range(3)],
    )
    (incident,) = deployed.monitoring.incidents()
    resp = deployed.monitoring.explain(incident.id)
    first = resp.causes[0]
    assert (first.kind, first.name) == ("metric", "latency_p99_ms")
    assert first.score == pytest.approx(5.0 / 6.0)
    # The deployment's creation is a change before onset, but it brought in no alerting version
    # as far as the audit log tells.
    names = [c.name for c in resp.causes]
    assert "deployment_created" in names
    assert names.index("errors") > 0


def test_explain_ranks_the_rollout_that_brought_the_alerting_version_first(
    tenant: Client, onnx_model: Path, server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant.models.register("iris", onnx_model)
    tenant.models.register("iris", onnx_model)
    tenant.deployments.create("iris-prod", "iris", traffic={1: 1.0})
    rollout = tenant.rollouts.start("iris-prod", 2, steps=[(10, 3600), (100, 3600)])
    t0 = now_ms()
    report(
        tenant,
        "iris-prod",
        [alert(t0 + i * 1000, version=2, top={"latency_p99_ms": 4.0, "errors": 1.0}) for i in range(3)],
    )
    (incident,) = tenant.monitoring.incidents()
    resp = tenant.monitoring.explain(incident.id)
    first = resp.causes[0]
    assert (first.kind, first.name, first.rollout_id, first.version) == (
        "change",
        "rollout_started",
        rollout.id,
        2,
    )
    assert resp.causes[1].name == "latency_p99_ms"
    me = ("--server", server.target, "--api-key", server_key(tenant))
    code, out, err = run_cli(capsys, *me, "alerts", "explain", str(incident.id))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"incident {incident.id} on iris-prod: firing")
    assert lines[1].split()[:3] == ["RANK", "KIND", "CAUSE"]
    assert lines[2].split()[:3] == ["1", "change", "rollout_started"]
    assert f"rollout {rollout.id} of v2 over v1" in lines[2]
    code, out, err = run_cli(capsys, *me, "-o", "json", "alerts", "explain", str(incident.id))
    assert code == 0, err
    assert json.loads(out)["causes"][0]["name"] == "rollout_started"


def test_explain_traces_a_release_that_starts_alerting_inside_an_open_incident(
    deployed: Client, onnx_model: Path
) -> None:
    """v1 alerts now and then; v2 goes live and alerts too, joining the incident v1 opened: the
    switch is measured against v2's first alert, not the incident's onset, and ranks first."""
    t0 = now_ms() - 60_000
    report(deployed, "iris-prod", [alert(t0, top={"requests": 1.0})])
    deployed.models.register("iris", onnx_model)
    deployed.deployments.set_traffic("iris-prod", {2: 1.0})
    report(
        deployed,
        "iris-prod",
        [alert(now_ms() + i * 1000, version=2, top={"latency_p99_ms": 5.0, "errors": 1.0}) for i in range(3)],
    )
    (incident,) = deployed.monitoring.incidents()
    assert (list(incident.versions), incident.alert_count) == ([1, 2], 4)
    causes = deployed.monitoring.explain(incident.id).causes
    assert (causes[0].kind, causes[0].name, causes[0].version) == ("change", "traffic_set", 2)
    assert "v2's first alert" in causes[0].detail
    assert causes[0].score > 0.99
    assert causes[1].name == "latency_p99_ms"


# --- a server that resolves quiet incidents within a second ----------------------------------------
@pytest.fixture(scope="module")
def quick_server(make_server: Callable[..., LocalServer]) -> LocalServer:
    return make_server(latency_runs=5, alert_quiet_s=1.0, alert_sweep_s=0.2)


@pytest.fixture
def quick(quick_server: LocalServer, onnx_model: Path) -> Iterator[Client]:
    key = quick_server.create_tenant(f"q-{uuid.uuid4().hex[:10]}")
    with Client.connect(quick_server.target, api_key=key) as client:
        client.models.register("iris", onnx_model)
        client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        yield client


def test_watch_alerts_streams_opened_updated_and_auto_resolved(quick: Client) -> None:
    events = quick.monitoring.watch_alerts("iris-prod", timeout=120)
    assert next(events).kind == M.INCIDENT_EVENT_KIND_CAUGHT_UP
    report(quick, "iris-prod", [alert(now_ms())])
    opened = next(events)
    assert opened.kind == M.INCIDENT_EVENT_KIND_OPENED
    assert opened.incident.state == M.INCIDENT_STATE_FIRING
    seen = [opened]
    for e in events:
        seen.append(e)
        if e.kind == M.INCIDENT_EVENT_KIND_RESOLVED:
            break
    resolved = seen[-1]
    assert resolved.incident.id == opened.incident.id
    assert resolved.incident.state == M.INCIDENT_STATE_RESOLVED
    assert resolved.incident.resolved_by == "auto"
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids))
    # Resuming after the opened event gives what came after it, and then CAUGHT_UP.
    again = quick.monitoring.watch_alerts("iris-prod", after_event_id=opened.id, timeout=60)
    replayed = []
    for e in again:
        if e.kind == M.INCIDENT_EVENT_KIND_CAUGHT_UP:
            break
        replayed.append(e.id)
    assert replayed == ids[1:]


def test_watch_alerts_begins_with_the_open_incidents(deployed: Client) -> None:
    report(deployed, "iris-prod", [alert(now_ms())])
    (incident,) = deployed.monitoring.incidents()
    events = deployed.monitoring.watch_alerts(timeout=60)
    first = next(events)
    assert (first.kind, first.incident.id) == (M.INCIDENT_EVENT_KIND_OPEN, incident.id)
    assert next(events).kind == M.INCIDENT_EVENT_KIND_CAUGHT_UP
    deployed.monitoring.acknowledge(incident.id)
    acked = next(events)
    assert (acked.kind, acked.incident.state) == (
        M.INCIDENT_EVENT_KIND_ACKNOWLEDGED,
        M.INCIDENT_STATE_ACKNOWLEDGED,
    )
    assert acked.id > first.id


# --- webhooks -------------------------------------------------------------------------------------
class Receiver:
    """A local HTTP server that records POSTs and answers 503 to the first one (to see a retry)."""

    def __init__(self) -> None:
        self.posts: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        self.attempts = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if outer.attempts == 1:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.posts.put(({k: v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/foedus"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next_post(self) -> tuple[dict[str, str], bytes]:
        return self.posts.get(timeout=60)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def test_webhooks_are_signed_retried_and_keep_their_secret(
    quick: Client, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "whsec-" + uuid.uuid4().hex
    hook = quick.monitoring.set_webhook(receiver.url, secret, description="on-call")
    assert (hook.url, hook.description) == (receiver.url, "on-call")
    listed = quick.monitoring.webhooks()
    assert [h.id for h in listed] == [hook.id]
    assert secret not in str(listed)
    with pytest.raises(InvalidArgument, match="secret"):
        quick.monitoring.set_webhook(receiver.url, "short")
    with pytest.raises(InvalidArgument, match="http"):
        quick.monitoring.set_webhook("file:///etc/passwd", secret)

    report(quick, "iris-prod", [alert(now_ms())])
    (incident,) = quick.monitoring.incidents()
    # The incident opens, and (quiet for a second) resolves by itself: two deliveries, whose first
    # attempt got a 503 and was tried again.
    posts = {h["X-Foedus-Event"]: (h, b) for h, b in (receiver.next_post(), receiver.next_post())}
    assert sorted(posts) == ["incident.opened", "incident.resolved"]
    assert receiver.attempts == 3
    for kind, (headers, body) in posts.items():
        t = verify_signature(secret, headers[SIGNATURE_HEADER], body)
        assert abs(t - time.time()) < 300
        with pytest.raises(SignatureError):
            verify_signature("another-secret-of-32-characters!", headers[SIGNATURE_HEADER], body)
        with pytest.raises(SignatureError):
            verify_signature(secret, headers[SIGNATURE_HEADER], body + b" ")
        payload = json.loads(body)
        assert payload["type"] == kind
        assert payload["incident"]["id"] == incident.id
        assert payload["incident"]["deployment"] == "iris-prod"
    assert json.loads(posts["incident.resolved"][1])["incident"]["resolved_by"] == "auto"

    quick.monitoring.delete_webhook(hook.id)
    assert quick.monitoring.webhooks() == []
    with pytest.raises(NotFound):
        quick.monitoring.delete_webhook(hook.id)


def test_webhook_cli_prints_a_new_secret_once(
    quick_server: LocalServer, quick: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    me = ("--server", quick_server.target, "--api-key", server_key(quick))
    code, out, err = run_cli(
        capsys, *me, "-o", "json", "alerts", "webhook", "set", "https://hooks.example.com/x"
    )
    assert code == 0, err
    (row,) = json.loads(out)
    assert len(row["secret"]) >= 32
    code, out, err = run_cli(capsys, *me, "alerts", "webhook", "list")
    assert code == 0, err
    assert "https://hooks.example.com/x" in out
    assert row["secret"] not in out
    code, out, err = run_cli(capsys, *me, "alerts", "webhook", "delete", str(row["id"]))
    assert code == 0, err
    wait_for(lambda: quick.monitoring.webhooks() == [], 10, "the webhook to be gone")
