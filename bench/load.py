"""Load benchmark: agents and SDK clients against several control-plane replicas on PostgreSQL.

What runs, all on this machine:

* `--replicas` (2) control-plane processes (`foedus server start --artifact-store database`,
  otherwise default settings) on one fresh PostgreSQL database (created next to `--postgres-url`,
  dropped at the end), which also holds the artifacts; each replica has a data directory of its
  own (scratch and read cache). The first replica creates the admin key; the others read its key
  file and start after it listens.
* Setup through the SDK: `--tenants` (4) tenants, each with an agent key, one model with two
  versions (a logistic regression on iris as ONNX, with a reference profile) and
  `--deployments-per-tenant` (2) deployments serving {1: 0.9, 2: 0.1}.
* `--agents` (200) simulated agents in `--agent-procs` (1) asyncio processes. Each speaks the
  agent protocol as `foedus agent run` does: RegisterAgent, then a WatchAssignments stream held
  open (reconnecting on errors), DownloadArtifact of every version an assignment names (checked
  against its sha256), and every `--interval` (10 s) one telemetry batch built with the SDK's own
  builders (`IntervalAggregator`'s `VersionWindow`s and `interval_reports`: per served version the
  request and error counts, the latency histogram, prediction counts and the input features on the
  version's reference-profile bins, resources and the anomaly score; 1% of the batches carry an
  alert), sent on a ReportTelemetry stream opened for it, as the agent drains its queue. A batch
  that is not acknowledged counts as an error. Agent i talks to replica i mod `--replicas`: one
  TCP connection per agent, as behind an L4 load balancer.
* `--clients` (20) SDK clients (`foedus.client_sdk.Client`, one thread and one connection each, in
  one process) over a round_robin channel to all replicas, each in a closed loop with an
  exponential think time of mean `--think-ms` (50) between calls, doing a mix of reads (GetModel,
  GetModelVersion, ListModels, ListModelVersions, GetDeployment, ListAlerts, and GetDeploymentStatus
  and QueryMetrics over the last `--window-s` (300) seconds) and now and then a SetTraffic or a
  CreateModelVersion (an upload of a few KB that goes through the registry's gates).

Reported (one flat JSON object with `--json`):

* `p50_ms_<Rpc>`, `p99_ms_<Rpc>`, `count_<Rpc>`, `errors_<Rpc>`: client-side latency of every
  successful call, per RPC. ReportTelemetry is send -> acknowledgement of a batch;
  WatchAssignments is the time to the first assignment of a stream; a CreateModelVersion is the
  whole upload. `errors` counts every call that ended with a status other than OK (a
  WatchAssignments stream that breaks included) and every batch left unacknowledged.
* `rss_start_mb`, `rss_end_mb`, `rss_growth_mb`: resident memory of the replicas (VmRSS from
  /proc), summed over the replicas, after the warm-up (the first `--warmup-share`, 20%, of the
  run) and at its end; growth = end - start. `rss_growth_mb_max_replica` is the largest growth of
  one replica, `rss_slope_mb_per_min` the least-squares slope of the sum after the warm-up.
  `rss_slope_mb_per_min_second_half` is that slope over the second half of the run only, and
  `rss_fit_growth_mb_second_half` the growth over the second half that it amounts to (a fitted
  line, so one sample's noise of a few MB does not decide it): caches that fill for a while after
  the warm-up show in the first two figures, a leak in all of them.
* `points_acked`: telemetry points (interval reports and alerts, as the ingest limit counts them)
  in batches the replicas acknowledged; `points_found`: those of them in the database at the end
  (an interval by agent, version and start, an alert by agent and id); `points_lost` = acked -
  found. `points_stored_unacked`: rows in the database whose batch was never acknowledged (a
  batch committed just before its stream failed or the run ended); `batches_acked_duplicate`:
  batches acknowledged as already stored (a retry after a lost acknowledgement).
* `assignments_stale_at_end`: agents whose last assignment is older than their deployment's
  generation in the database, a few seconds after the last SetTraffic (changes made on one replica
  reach the watchers of another by their periodic re-read of the store).
* `server_cpu_cores`, `loadgen_cpu_cores`, `postgres_cpu_cores`, `host_busy_cores`: CPU seconds
  per second over the run of the replicas, of the load generator's processes, of the PostgreSQL
  backends serving the bench's database (those alive at the end), and of the whole host, to tell
  which side limits the figures and how much of the machine other work took; `host_load_avg`:
  the mean of the host's 1-minute load average over the run.

Run from the repository root:

    .venv/bin/python bench/load.py --json /tmp/load.json            # 5 minutes, 200 agents, 20 clients
    .venv/bin/python bench/load.py --duration 30 --agents 20 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FOEDUS_CLI = Path(sys.executable).parent / "foedus"
MODEL = "iris"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ALERT_SHARE = 0.01
PROGRESS_EVERY_S = 2.0


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ================================================================================================
# What a load process measures
# ================================================================================================


class CallLog:
    """Latencies of successful calls and errors, per RPC; one per thread or event loop."""

    def __init__(self) -> None:
        self.latencies_ms: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.first_errors: list[str] = []
        self.calls = 0
        self.error_count = 0

    def ok(self, rpc: str, ms: float) -> None:
        self.latencies_ms[rpc].append(ms)
        self.calls += 1

    def error(self, rpc: str, detail: str) -> None:
        self.errors[rpc] += 1
        self.calls += 1
        self.error_count += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{rpc}: {detail}")

    def merge(self, other: CallLog) -> None:
        for rpc, values in other.latencies_ms.items():
            self.latencies_ms[rpc].extend(values)
        for rpc, n in other.errors.items():
            self.errors[rpc] += n
        self.first_errors.extend(other.first_errors[: max(0, 10 - len(self.first_errors))])
        self.calls += other.calls
        self.error_count += other.error_count

    def to_message(self) -> dict[str, Any]:
        return {
            "latencies_ms": dict(self.latencies_ms),
            "errors": dict(self.errors),
            "first_errors": self.first_errors,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> CallLog:
        out = cls()
        for rpc, values in message["latencies_ms"].items():
            out.latencies_ms[rpc].extend(values)
            out.calls += len(values)
        for rpc, n in message["errors"].items():
            out.errors[rpc] += n
            out.calls += n
            out.error_count += n
        out.first_errors = list(message["first_errors"])
        return out


def rpc_name(method: str | bytes) -> str:
    text = method.decode() if isinstance(method, bytes) else method
    return text.rsplit("/", 1)[-1]


def iris() -> tuple[Any, Any]:
    import numpy as np
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def write_models(directory: Path, count: int) -> list[Path]:
    """`count` logistic regressions on iris (different regularisation) as ONNX files."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = iris()
    paths = []
    for i in range(count):
        clf = LogisticRegression(C=0.25 * (i + 1), max_iter=500).fit(x, y)
        onx = convert_sklearn(
            clf,
            initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
            options={id(clf): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        path = directory / f"iris-{i}.onnx"
        path.write_bytes(onx.SerializeToString())
        paths.append(path)
    return paths


@dataclass(frozen=True, slots=True)
class TenantPlan:
    name: str
    owner_key: str
    agent_key: str
    deployments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    targets: tuple[str, ...]
    """HOST:PORT of every replica."""
    tenants: tuple[TenantPlan, ...]
    model_dir: str
    duration_s: float
    interval_s: float
    think_ms: float
    window_s: int
    """What GetDeploymentStatus and QueryMetrics look at: the last this many seconds."""
    agent_rps: float
    seed: int


def worker_report(out: Any, kind: str, index: int, log_: CallLog, extra: dict[str, Any]) -> None:
    out.put(("result", kind, index, {"calls": log_.to_message(), **extra}))


# ================================================================================================
# Simulated agents (asyncio, the agent protocol on raw stubs)
# ================================================================================================


@dataclass
class SimulatedAgent:
    name: str
    tenant: TenantPlan
    deployment: str
    target: str
    rng: random.Random
    generation: int = -1
    traffic: dict[int, float] = field(default_factory=dict)
    features: dict[int, list[Any]] = field(default_factory=dict)
    """Per assigned version: the reference profile's features (for bins_for)."""
    downloaded: set[str] = field(default_factory=set)
    pending: list[Any] = field(default_factory=list)
    """Batches sent but not acknowledged yet (sent again with the same id)."""
    acked: list[tuple[Any, ...]] = field(default_factory=list)
    """Keys of the acknowledged points: ("i", version, start_ms) per interval, ("a", alert_id)."""
    batches_acked: int = 0
    duplicates: int = 0
    assignments: int = 0


class AgentFleet:
    def __init__(self, plan: LoadPlan, agents: list[SimulatedAgent], calls: CallLog) -> None:
        self.plan = plan
        self.agents = agents
        self.calls = calls
        self.stopping = False
        self.stopped = asyncio.Event()
        self.x, self.y = iris()

    async def run(self, stop: Callable[[], bool], progress: Callable[[], None]) -> None:
        import grpc

        channels = {}
        tasks = []
        for agent in self.agents:
            # One connection per agent, as separate hosts have.
            channel = grpc.aio.insecure_channel(agent.target, options=[("grpc.use_local_subchannel_pool", 1)])
            channels[agent.name] = channel
        start = time.monotonic()
        for i, agent in enumerate(self.agents):
            # Agents come up over the first interval, not all in the same millisecond.
            delay = self.plan.interval_s * i / max(1, len(self.agents))
            tasks.append(asyncio.create_task(self._watch(agent, channels[agent.name], delay)))
            tasks.append(asyncio.create_task(self._report(agent, channels[agent.name], delay)))
        while not stop():
            await asyncio.sleep(0.2)
            if time.monotonic() - start >= PROGRESS_EVERY_S:
                start = time.monotonic()
                progress()
        self.stopping = True
        self.stopped.set()
        # Report loops send what they measured since their last batch; watch streams are cancelled.
        report_tasks = tasks[1::2]
        await asyncio.wait(report_tasks, timeout=30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels.values():
            await channel.close(grace=None)

    async def _watch(self, agent: SimulatedAgent, channel: Any, delay: float) -> None:
        import grpc

        from foedus.v1 import agent_pb2, agent_pb2_grpc

        await asyncio.sleep(delay)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        metadata = (("authorization", f"Bearer {agent.tenant.agent_key}"),)
        backoff = 0.2
        while not self.stopping:
            rpc = "RegisterAgent"
            try:
                info = agent_pb2.AgentInfo(
                    name=agent.name,
                    host=f"host-{agent.name}",
                    cpu_count=8,
                    memory_bytes=32 * 1024**3,
                    execution_providers=["CPUExecutionProvider"],
                    agent_version="0.1.0",
                )
                t0 = time.perf_counter()
                await stub.RegisterAgent(
                    agent_pb2.RegisterAgentRequest(deployment=agent.deployment, agent=info),
                    metadata=metadata,
                    timeout=30,
                )
                self.calls.ok(rpc, (time.perf_counter() - t0) * 1000)
                rpc = "WatchAssignments"
                t0 = time.perf_counter()
                call = stub.WatchAssignments(
                    agent_pb2.WatchAssignmentsRequest(deployment=agent.deployment, agent=agent.name),
                    metadata=metadata,
                )
                first = True
                async for response in call:
                    if first:
                        self.calls.ok(rpc, (time.perf_counter() - t0) * 1000)
                        first = False
                    await self._apply(agent, channel, metadata, response.assignment)
                    backoff = 0.2
                # The server never ends the stream on its own.
                self.calls.error(rpc, "stream ended")
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if self.stopping:
                    return
                self.calls.error(rpc, f"{exc.code().name}: {exc.details()}")
            except Exception as exc:
                if self.stopping:
                    return
                self.calls.error("agent", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, 15.0)

    async def _apply(self, agent: SimulatedAgent, channel: Any, metadata: Any, assignment: Any) -> None:
        deployment = assignment.deployment
        agent.assignments += 1
        if deployment.generation < agent.generation:
            return
        for assigned in assignment.versions:
            if assigned.artifact.sha256 not in agent.downloaded:
                await self._download(agent, channel, metadata, deployment.model, assigned)
            agent.features[assigned.version] = list(assigned.reference_profile.features)
        agent.traffic = {t.version: t.weight for t in deployment.traffic}
        agent.generation = deployment.generation

    async def _download(
        self, agent: SimulatedAgent, channel: Any, metadata: Any, model: str, assigned: Any
    ) -> None:
        import grpc

        from foedus.v1 import registry_pb2, registry_pb2_grpc

        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        t0 = time.perf_counter()
        digest = hashlib.sha256()
        try:
            stream = stub.DownloadArtifact(
                registry_pb2.DownloadArtifactRequest(model=model, version=assigned.version),
                metadata=metadata,
                timeout=60,
            )
            async for message in stream:
                if message.WhichOneof("part") == "chunk":
                    digest.update(message.chunk)
        except grpc.aio.AioRpcError as exc:
            self.calls.error("DownloadArtifact", f"{exc.code().name}: {exc.details()}")
            return
        if digest.hexdigest() != assigned.artifact.sha256:
            self.calls.error("DownloadArtifact", f"v{assigned.version}: sha256 does not match")
            return
        self.calls.ok("DownloadArtifact", (time.perf_counter() - t0) * 1000)
        agent.downloaded.add(assigned.artifact.sha256)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), seconds)
        return self.stopped.is_set()

    def _batch(self, agent: SimulatedAgent, start: float, end: float) -> Any:
        """One interval of telemetry, built as the agent builds it."""
        import numpy as np

        from foedus.client_sdk.agent.histogram import BinnedCounts
        from foedus.client_sdk.agent.telemetry import VersionWindow, bins_for, interval_reports
        from foedus.v1 import agent_pb2, common_pb2

        rng = np.random.default_rng(agent.rng.getrandbits(32))
        windows: dict[tuple[str, bool], VersionWindow] = {}
        names: dict[str, list[str]] = {}
        total = sum(agent.traffic.values())
        seconds = end - start
        for version, weight in sorted(agent.traffic.items()):
            if weight <= 0 or total <= 0:
                continue
            n = int(rng.poisson(self.plan.agent_rps * seconds * weight / total))
            window = VersionWindow()
            window.requests = n
            window.errors = int(rng.binomial(n, 0.01))
            window.latency.record_many(rng.lognormal(np.log(2.0), 0.5, size=n))
            rows = rng.integers(0, len(self.x), size=n)
            profile = common_pb2.ReferenceProfile(features=agent.features.get(version, []))
            window.features = bins_for(profile)
            for column, counter in enumerate(window.features):
                counter.add(self.x[rows, column])
            window.predictions = BinnedCounts.categorical(["0", "1", "2"])
            window.predictions.add(self.y[rows].astype(str))
            windows[(str(version), False)] = window
            names[str(version)] = [f.name for f in profile.features]
        resources = agent_pb2.Resources(
            process_cpu_percent=float(rng.uniform(5, 30)),
            host_cpu_percent=float(rng.uniform(10, 60)),
            process_memory_bytes=int(rng.uniform(200, 400) * 2**20),
            host_memory_used_bytes=int(rng.uniform(8, 16) * 2**30),
        )
        score = float(abs(rng.normal()))
        batch = agent_pb2.TelemetryBatch(
            batch_id=uuid.uuid4().hex,
            deployment=agent.deployment,
            agent=agent.name,
            intervals=interval_reports(start, end, windows, names, resources, {"anomaly": score}),
        )
        if windows and agent.rng.random() < ALERT_SHARE:
            version = max(agent.traffic, key=lambda v: agent.traffic[v])
            batch.alerts.append(
                agent_pb2.AgentAlert(
                    alert_id=uuid.uuid4().hex,
                    time_unix_ms=int(end * 1000),
                    version=version,
                    kind="anomaly",
                    score=4.0 + score,
                    threshold=4.0,
                    detector="ewma-robust-z",
                    top=[agent_pb2.Contribution(metric="latency_p99_ms", value=9.0, attribution=3.0)],
                )
            )
        return batch

    async def _report(self, agent: SimulatedAgent, channel: Any, delay: float) -> None:
        import grpc

        from foedus.v1 import agent_pb2, agent_pb2_grpc

        stub = agent_pb2_grpc.AgentServiceStub(channel)
        metadata = (("authorization", f"Bearer {agent.tenant.agent_key}"),)
        if await self._stopped_within(delay + agent.rng.uniform(0, self.plan.interval_s)):
            return
        last = time.time()
        final = False
        while not final:
            # Like the agent's stop(flush=True): the interval cut short by the stop is sent too.
            final = await self._stopped_within(max(0.0, last + self.plan.interval_s - time.time()))
            now = time.time()
            if agent.traffic:
                agent.pending.append(self._batch(agent, last, now))
            last = now
            if not agent.pending:
                continue
            sent = {b.batch_id: (b, time.perf_counter()) for b in agent.pending}
            requests = [agent_pb2.ReportTelemetryRequest(batch=b) for b in agent.pending]
            try:
                call = stub.ReportTelemetry(iter(requests), metadata=metadata, timeout=60)
                async for ack in call:
                    entry = sent.pop(ack.batch_id, None)
                    if entry is None:
                        self.calls.error("ReportTelemetry", f"ack of unknown batch {ack.batch_id}")
                        continue
                    batch, t0 = entry
                    self.calls.ok("ReportTelemetry", (time.perf_counter() - t0) * 1000)
                    agent.batches_acked += 1
                    # A duplicate was committed by an earlier try whose ack was lost: stored once.
                    agent.duplicates += ack.duplicate
                    agent.acked += [("i", i.version, i.start_unix_ms) for i in batch.intervals]
                    agent.acked += [("a", a.alert_id) for a in batch.alerts]
            except grpc.aio.AioRpcError as exc:
                self.calls.error("ReportTelemetry", f"{exc.code().name}: {exc.details()}")
            except asyncio.CancelledError:
                for batch_id in sent:
                    self.calls.error("ReportTelemetry", f"batch {batch_id} not acknowledged by the end")
                raise
            for batch_id in sent:
                self.calls.error("ReportTelemetry", f"batch {batch_id} not acknowledged")
            agent.pending = [b for _, (b, _) in sent.items()]


def agents_main(
    plan: LoadPlan, index: int, names: list[tuple[int, str]], go: Any, stop: Any, out: Any
) -> None:
    """A process of simulated agents: `names` are (agent number, name)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through `stop`
    calls = CallLog()
    agents = []
    for number, name in names:
        tenant = plan.tenants[number % len(plan.tenants)]
        deployment = tenant.deployments[(number // len(plan.tenants)) % len(tenant.deployments)]
        agents.append(
            SimulatedAgent(
                name=name,
                tenant=tenant,
                deployment=deployment,
                target=plan.targets[number % len(plan.targets)],
                rng=random.Random(plan.seed * 100_003 + number),
            )
        )
    fleet = AgentFleet(plan, agents, calls)
    out.put(("ready", "agents", index, {}))
    go.wait()

    def progress() -> None:
        out.put(("progress", "agents", index, {"calls": calls.calls, "errors": calls.error_count}))

    try:
        asyncio.run(fleet.run(stop.is_set, progress))
    except Exception:
        calls.error("agent-process", traceback.format_exc(limit=5))
    worker_report(
        out,
        "agents",
        index,
        calls,
        {
            "acked": [(a.name, *key) for a in agents for key in a.acked],
            "batches_acked": sum(a.batches_acked for a in agents),
            "duplicates": sum(a.duplicates for a in agents),
            "assignments": sum(a.assignments for a in agents),
            "generations": {f"{a.tenant.name}/{a.deployment}/{a.name}": a.generation for a in agents},
        },
    )


# ================================================================================================
# SDK clients (threads, foedus.client_sdk.Client)
# ================================================================================================


class TimedCalls:
    """Client interceptor: the latency or the status of every call, by RPC."""

    def __init__(self, calls: CallLog) -> None:
        self.calls = calls

    def _timed(self, continuation: Any, details: Any, request: Any) -> Any:
        t0 = time.perf_counter()
        outcome = continuation(details, request)
        ms = (time.perf_counter() - t0) * 1000
        exc = outcome.exception()
        if exc is None:
            self.calls.ok(rpc_name(details.method), ms)
        else:
            code = exc.code().name if hasattr(exc, "code") else type(exc).__name__
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            self.calls.error(rpc_name(details.method), f"{code}: {detail}")
        return outcome


def timed_interceptors(calls: CallLog) -> list[Any]:
    import grpc

    timed = TimedCalls(calls)

    class Unary(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return timed._timed(continuation, details, request)

    class StreamUnary(grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return timed._timed(continuation, details, request)

    return [Unary(), StreamUnary()]


def client_loop(
    plan: LoadPlan, number: int, calls: CallLog, go: threading.Event, stop: Any, models: list[Path]
) -> None:
    import grpc

    from foedus.client_sdk import Client
    from foedus.client_sdk.client import CHUNK_SIZE
    from foedus.client_sdk.errors import FoedusError

    rng = random.Random(plan.seed * 7919 + number)
    tenant = plan.tenants[number % len(plan.tenants)]
    x, _ = iris()
    target = "ipv4:" + ",".join(plan.targets)
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
        ],
    )
    client = Client(
        grpc.intercept_channel(channel, *timed_interceptors(calls)),
        tenant.owner_key,
        timeout=30.0,
        chunk_size=CHUNK_SIZE,
    )
    now_ms = lambda: int(time.time() * 1000)  # noqa: E731

    def set_traffic() -> None:
        deployment = rng.choice(tenant.deployments)
        newest = [v.version for v in client.models.versions(MODEL, limit=2)]
        if len(newest) == 2 and rng.random() < 0.7:
            client.deployments.set_traffic(deployment, {newest[0]: 0.9, newest[1]: 0.1})
        else:
            client.deployments.set_traffic(deployment, {newest[0]: 1.0})

    def register() -> None:
        client.models.register(
            MODEL,
            rng.choice(models),
            reference_data=x,
            feature_names=FEATURES,
            lineage={"code_revision": secrets.token_hex(4)},
            create_model=False,
        )

    ops: list[tuple[float, Callable[[], object]]] = [
        (12, lambda: client.models.get(MODEL)),
        (15, lambda: client.models.get_version(MODEL, rng.randint(1, 2))),
        (6, lambda: client.models.list(limit=20)),
        (10, lambda: client.models.versions(MODEL, limit=20)),
        (15, lambda: client.deployments.get(rng.choice(tenant.deployments))),
        (12, lambda: client.monitoring.status(rng.choice(tenant.deployments), window_s=plan.window_s)),
        (
            12,
            lambda: client.monitoring.query(
                rng.choice(tenant.deployments),
                rng.choice(["requests", "latency_p99_ms", "errors", "anomaly"]),
                start_unix_ms=now_ms() - plan.window_s * 1000,
                step_s=10,
            ),
        ),
        (8, lambda: client.monitoring.alerts(rng.choice(tenant.deployments), limit=50)),
        (1.0, set_traffic),
        (0.3, register),
    ]
    weights = [w for w, _ in ops]
    actions = [a for _, a in ops]
    go.wait()
    try:
        while not stop.is_set():
            action = rng.choices(actions, weights)[0]
            try:
                action()
            except FoedusError:
                pass  # counted by the interceptor
            except Exception as exc:
                calls.error("client", f"{type(exc).__name__}: {exc}")
            if plan.think_ms > 0:
                time.sleep(rng.expovariate(1000.0 / plan.think_ms))
    finally:
        client.close()


def clients_main(plan: LoadPlan, index: int, numbers: list[int], go: Any, stop: Any, out: Any) -> None:
    """A process of SDK clients, one thread each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    models = sorted(Path(plan.model_dir).glob("*.onnx"))
    logs = [CallLog() for _ in numbers]
    started = threading.Event()
    threads = [
        threading.Thread(
            target=client_loop, args=(plan, n, lg, started, stop, models), name=f"client-{n}", daemon=True
        )
        for n, lg in zip(numbers, logs, strict=True)
    ]
    for thread in threads:
        thread.start()
    out.put(("ready", "clients", index, {}))
    go.wait()
    started.set()
    while not stop.wait(PROGRESS_EVERY_S):
        calls = sum(lg.calls for lg in logs)
        errors = sum(lg.error_count for lg in logs)
        out.put(("progress", "clients", index, {"calls": calls, "errors": errors}))
    for thread in threads:
        thread.join(timeout=60)
    merged = CallLog()
    for lg in logs:
        merged.merge(lg)
    worker_report(out, "clients", index, merged, {})


# ================================================================================================
# PostgreSQL and the replicas
# ================================================================================================


def libpq_url(url: str) -> str:
    """A SQLAlchemy-style URL (postgresql+psycopg://) as libpq takes it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def with_database(url: str, database: str) -> str:
    base, _, _ = libpq_url(url).rpartition("/")
    return f"{base}/{database}"


def create_database(url: str) -> str:
    import psycopg

    name = f"foedus_load_{secrets.token_hex(4)}"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Replica:
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=5)


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_s() -> float:
    """CPU seconds the whole host has been busy (all cores, idle and I/O wait left out)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def database_backends(db_url: str) -> list[int]:
    import psycopg

    name = db_url.rpartition("/")[2]
    with psycopg.connect(libpq_url(db_url)) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,)
        ).fetchall()
    return [int(r[0]) for r in rows]


class CpuMeter:
    """CPU time over the run: the replicas, the load generator, the database's backends, the host."""

    def __init__(self, db_url: str, replicas: list[int], loadgen: list[int]) -> None:
        self.db_url = db_url
        self.replicas = replicas
        self.loadgen = loadgen
        self.start = self._sample()

    def _sample(self) -> dict[str, Any]:
        return {
            "replicas": sum(process_cpu_s(pid) for pid in self.replicas),
            "loadgen": sum(process_cpu_s(pid) for pid in self.loadgen),
            "postgres": {pid: process_cpu_s(pid) for pid in database_backends(self.db_url)},
            "host": host_busy_s(),
        }

    def cores(self, elapsed: float) -> dict[str, float]:
        """CPU seconds per second since the start. Backends that closed during the run are missed."""
        end = self._sample()
        start_pg = self.start["postgres"]
        postgres = sum(cpu - start_pg.get(pid, 0.0) for pid, cpu in end["postgres"].items())
        return {
            "server_cpu_cores": (end["replicas"] - self.start["replicas"]) / elapsed,
            "loadgen_cpu_cores": (end["loadgen"] - self.start["loadgen"]) / elapsed,
            "postgres_cpu_cores": postgres / elapsed,
            "host_busy_cores": (end["host"] - self.start["host"]) / elapsed,
        }


def start_replica(index: int, data_dir: Path, db_url: str, log_dir: Path, timeout: float = 60.0) -> Replica:
    log_path = log_dir / f"replica-{index}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
    cmd = [str(FOEDUS_CLI), "server", "start", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
    cmd += ["--artifact-store", "database"]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--db", db_url],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only the bench; it stops the replicas itself
        )
    replica = Replica(index, proc, log_path)
    end = time.monotonic() + timeout
    marker = "foedus server listening on "
    while time.monotonic() < end:
        text = log_path.read_text(errors="replace")
        if marker in text:
            replica.address = text.split(marker, 1)[1].split()[0]
            return replica
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    replica.stop()
    raise RuntimeError(f"replica {index} did not start within {timeout:.0f} s:\n{replica.log_tail()}")


def setup_tenants(
    address: str, admin_key: str, tenants: int, deployments: int, models: list[Path]
) -> tuple[TenantPlan, ...]:
    from foedus.client_sdk import Client

    x, _ = iris()
    plans = []
    with Client.connect(address, api_key=admin_key) as admin:
        for t in range(tenants):
            name = f"load-{t}"
            owner_key = admin.tenants.create(name).owner_key_secret
            with Client.connect(address, api_key=owner_key) as owner:
                agent_key = owner.keys.create("agent", description="load agents").secret
                for path in models[:2]:
                    owner.models.register(MODEL, path, reference_data=x, feature_names=FEATURES)
                names = tuple(f"dep-{d}" for d in range(deployments))
                for dep in names:
                    owner.deployments.create(dep, MODEL, traffic={1: 0.9, 2: 0.1})
            plans.append(TenantPlan(name, owner_key, agent_key, names))
    return tuple(plans)


def database_counts(db_url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(libpq_url(db_url)) as conn:
        intervals = conn.execute("SELECT agent, version, start_ms FROM intervals").fetchall()
        alerts = conn.execute("SELECT agent, alert_id FROM alerts").fetchall()
        gens = conn.execute("SELECT d.tenant, d.name, d.generation FROM deployments d").fetchall()
    return {
        "points": {(a, "i", int(v), int(t)) for a, v, t in intervals} | {(a, "a", i) for a, i in alerts},
        "generations": {f"{t}/{n}": int(g) for t, n, g in gens},
    }


# ================================================================================================
# The run
# ================================================================================================


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    import numpy as np

    if len(samples) < 3:
        return 0.0
    t = np.asarray([s[0] for s in samples]) / 60.0
    v = np.asarray([s[1] for s in samples])
    return float(np.polyfit(t, v, 1)[0])


class Interrupted(Exception):
    pass


def run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    replicas: list[Replica] = []
    procs: list[Any] = []
    db_name = ""
    try:
        models = write_models(work, 4)
        db_name = create_database(args.postgres_url)
        db_url = with_database(args.postgres_url, db_name)
        log(f"database {db_name}; {args.replicas} replica(s), artifacts in the database")
        for i in range(args.replicas):
            data_dir = work / f"data-{i}"
            if i > 0:
                # The first replica created the admin key; the others read the same key file.
                data_dir.mkdir()
                (data_dir / "admin.key").write_text((work / "data-0" / "admin.key").read_text())
            replicas.append(start_replica(i, data_dir, db_url, work))
            log(f"replica {i} listening on {replicas[-1].address} (pid {replicas[-1].proc.pid})")
        admin_key = (work / "data-0" / "admin.key").read_text().strip()
        tenants = setup_tenants(
            replicas[0].address, admin_key, args.tenants, args.deployments_per_tenant, models
        )
        log(f"setup: {len(tenants)} tenants, {args.deployments_per_tenant} deployments each")
        plan = LoadPlan(
            targets=tuple(r.address for r in replicas),
            tenants=tenants,
            model_dir=str(work),
            duration_s=args.duration,
            interval_s=args.interval,
            think_ms=args.think_ms,
            window_s=args.window_s,
            agent_rps=args.agent_rps,
            seed=args.seed,
        )
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        go, stop_clients, stop_agents = ctx.Event(), ctx.Event(), ctx.Event()
        names = [(i, f"agent-{i:04d}") for i in range(args.agents)]
        for p in range(args.agent_procs):
            procs.append(
                ctx.Process(
                    target=agents_main,
                    args=(plan, p, names[p :: args.agent_procs], go, stop_agents, out),
                    name=f"load-agents-{p}",
                )
            )
        if args.clients:
            procs.append(
                ctx.Process(
                    target=clients_main,
                    args=(plan, 0, list(range(args.clients)), go, stop_clients, out),
                    name="load-clients",
                )
            )
        for proc in procs:
            proc.start()
        ready = 0
        while ready < len(procs):
            kind, *_ = out.get(timeout=120)
            ready += kind == "ready"
        progress: dict[tuple[str, int], dict[str, int]] = {}
        rss: list[tuple[float, list[float]]] = []
        load: list[float] = []
        cpu = CpuMeter(db_url, [r.proc.pid for r in replicas], [p.pid for p in procs if p.pid])
        t0 = time.monotonic()
        go.set()
        log(f"running {args.duration:g} s: {args.agents} agents, {args.clients} clients")
        next_print = t0 + args.progress
        results: dict[tuple[str, int], dict[str, Any]] = {}
        while time.monotonic() - t0 < args.duration:
            for r in replicas:
                if r.proc.poll() is not None:
                    raise RuntimeError(f"replica {r.index} exited:\n{r.log_tail()}")
            rss.append((time.monotonic() - t0, [r.rss_mb() for r in replicas]))
            load.append(os.getloadavg()[0])
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    kind, who, index, data = out.get(timeout=max(0.01, deadline - time.monotonic()))
                    if kind == "progress":
                        progress[(who, index)] = data
            if time.monotonic() >= next_print:
                next_print += args.progress
                calls = sum(p["calls"] for p in progress.values())
                errors = sum(p["errors"] for p in progress.values())
                mem = ", ".join(f"{v:.0f}" for v in rss[-1][1])
                log(
                    f"{time.monotonic() - t0:5.0f} s: {calls:,} requests, {errors} errors, "
                    f"RSS MB [{mem}], load {os.getloadavg()[0]:.1f}"
                )
        elapsed = time.monotonic() - t0
        rss.append((elapsed, [r.rss_mb() for r in replicas]))
        cpu_cores = cpu.cores(elapsed)
        cpu_cores["host_load_avg"] = sum(load) / max(1, len(load))
        # Clients first; agents a little later, so that every change reached every watcher.
        stop_clients.set()
        time.sleep(max(3.0, 1.5 * 2.0))
        stop_agents.set()
        while len(results) < len(procs):
            kind, who, index, data = out.get(timeout=120)
            if kind == "result":
                results[(who, index)] = data
        for proc in procs:
            proc.join(timeout=30)
        counts = database_counts(db_url)
        return summarise(args, elapsed, rss, cpu_cores, results, counts)
    finally:
        # A second Ctrl-C must not cut the clean-up short (it takes seconds).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        for r in replicas:
            r.stop()
        if db_name and not args.keep_database:
            try:
                drop_database(args.postgres_url, db_name)
                log(f"dropped database {db_name}")
            except Exception as exc:
                log(f"could not drop database {db_name}: {exc}")


def summarise(
    args: argparse.Namespace,
    elapsed: float,
    rss: list[tuple[float, list[float]]],
    cpu_cores: dict[str, float],
    results: dict[tuple[str, int], dict[str, Any]],
    counts: dict[str, Any],
) -> dict[str, float]:
    calls = CallLog()
    acked: set[tuple[Any, ...]] = set()
    duplicates = 0
    stale = 0
    for (kind, _), data in results.items():
        calls.merge(CallLog.from_message(data["calls"]))
        if kind == "agents":
            acked.update(tuple(key) for key in data["acked"])
            duplicates += data["duplicates"]
            for key, generation in data["generations"].items():
                deployment = key.rsplit("/", 1)[0]
                stale += generation < counts["generations"].get(deployment, 0)
    warm = args.warmup_share * elapsed
    after = [(t, sum(v)) for t, v in rss if t >= warm]
    second_half = [(t, sum(v)) for t, v in rss if t >= elapsed / 2]
    start_sample = next((v for t, v in rss if t >= warm), rss[-1][1])
    end_sample = rss[-1][1]
    figures: dict[str, float] = {
        "duration_s": round(elapsed, 1),
        "agents": args.agents,
        "clients": args.clients,
        "replicas": args.replicas,
        "cpu_count": os.cpu_count() or 0,
        "requests_total": calls.calls,
        "throughput_rps": round(calls.calls / elapsed, 1),
        "errors": calls.error_count,
        "rss_start_mb": round(sum(start_sample), 1),
        "rss_end_mb": round(sum(end_sample), 1),
        "rss_growth_mb": round(sum(end_sample) - sum(start_sample), 1),
        "rss_growth_mb_max_replica": round(
            max(e - s for e, s in zip(end_sample, start_sample, strict=True)), 1
        ),
        "rss_max_mb": round(max(sum(v) for _, v in rss), 1),
        "rss_slope_mb_per_min": round(slope_per_min(after), 2),
        "rss_slope_mb_per_min_second_half": round(slope_per_min(second_half), 2),
        "rss_fit_growth_mb_second_half": round(slope_per_min(second_half) * (elapsed / 2) / 60.0, 1),
        "points_acked": len(acked),
        "points_found": len(acked & counts["points"]),
        "points_lost": len(acked - counts["points"]),
        "points_stored_unacked": len(counts["points"] - acked),
        "batches_acked_duplicate": duplicates,
        "assignments_stale_at_end": stale,
        **{k: round(v, 2) for k, v in cpu_cores.items()},
    }
    for rpc in sorted(set(calls.latencies_ms) | set(calls.errors)):
        values = calls.latencies_ms.get(rpc, [])
        figures[f"count_{rpc}"] = len(values)
        figures[f"errors_{rpc}"] = calls.errors.get(rpc, 0)
        figures[f"p50_ms_{rpc}"] = round(percentile(values, 50), 2)
        figures[f"p99_ms_{rpc}"] = round(percentile(values, 99), 2)
    if calls.first_errors:
        log("first errors:\n  " + "\n  ".join(calls.first_errors))
    return figures


def print_table(figures: dict[str, float]) -> None:
    rpcs = sorted(k.removeprefix("count_") for k in figures if k.startswith("count_"))
    print(f"{'RPC':<22}{'count':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for rpc in rpcs:
        print(
            f"{rpc:<22}{figures[f'count_{rpc}']:>9,}{figures[f'errors_{rpc}']:>8}"
            f"{figures[f'p50_ms_{rpc}']:>9.2f}{figures[f'p99_ms_{rpc}']:>9.2f}"
        )
    for key in (
        "duration_s", "requests_total", "throughput_rps", "errors", "rss_start_mb", "rss_end_mb",
        "rss_growth_mb", "rss_growth_mb_max_replica", "rss_slope_mb_per_min",
        "rss_slope_mb_per_min_second_half", "rss_fit_growth_mb_second_half", "points_acked",
        "points_found", "points_lost", "points_stored_unacked", "assignments_stale_at_end", "server_cpu_cores", "loadgen_cpu_cores",
        "postgres_cpu_cores", "host_busy_cores", "host_load_avg",
    ):  # fmt: skip
        print(f"{key:<28}{figures[key]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    p.add_argument("--agents", type=int, default=200, help="simulated agents (default 200)")
    p.add_argument("--clients", type=int, default=20, help="SDK clients, one thread each (default 20)")
    p.add_argument("--replicas", type=int, default=2, help="control-plane processes (default 2)")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("FOEDUS_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL database to connect to; the bench creates and drops its own next to it",
    )
    p.add_argument("--json", type=Path, help="write the figures as one flat JSON object here")
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--deployments-per-tenant", type=int, default=2)
    p.add_argument("--interval", type=float, default=10.0, help="agents' telemetry interval, s (default 10)")
    p.add_argument("--agent-rps", type=float, default=20.0, help="requests/s each agent reports serving")
    p.add_argument("--agent-procs", type=int, default=1, help="processes the agents run in (default 1)")
    p.add_argument("--think-ms", type=float, default=50.0, help="mean pause between a client's calls")
    p.add_argument(
        "--window-s", type=int, default=300, help="seconds GetDeploymentStatus and QueryMetrics cover"
    )
    p.add_argument("--warmup-share", type=float, default=0.2, help="share of the run before rss_start_mb")
    p.add_argument("--progress", type=float, default=15.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    args = p.parse_args(argv)
    if args.agents < 0 or args.clients < 0 or args.replicas < 1 or args.agent_procs < 1:
        p.error("--agents and --clients must be >= 0, --replicas and --agent-procs >= 1")
    if args.tenants < 1 or args.deployments_per_tenant < 1:
        p.error("--tenants and --deployments-per-tenant must be >= 1")
    args.agent_procs = max(1, min(args.agent_procs, args.agents))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    work = Path(tempfile.mkdtemp(prefix="foedus-load-"))
    try:
        figures = run(args, work)
    except (KeyboardInterrupt, Interrupted):
        log("interrupted; servers stopped, database dropped")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        log(f"wrote {args.json}")
    return 0 if figures["errors"] == 0 and figures["points_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
