"""The agent process: `foedus agent run`.

It registers with the control plane, keeps a WatchAssignments stream open (reconnecting with
backoff), downloads and loads assigned versions (cached on disk by digest, execution provider chosen
by measurement), serves them over the Open Inference Protocol, and every interval turns what it
measured into telemetry. Telemetry goes to a durable local queue first and is dropped only after the
control plane acknowledged the commit of its batch, so an outage of the control plane loses nothing
and a retried batch is never counted twice. None of this stands in the way of serving: requests are
answered from the loaded versions whether the control plane is reachable or not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import math
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from foedus.client_sdk.agent.detector import DETECTOR_NAME, AnomalyDetector, DetectorConfig
from foedus.client_sdk.agent.history import HISTORY_METRICS, LocalHistory
from foedus.client_sdk.agent.labels import (
    DEFAULT_RETENTION_S,
    PredictionBuffer,
    PredictionLog,
    VersionOutputs,
)
from foedus.client_sdk.agent.ops_models import MAX_WINDOW, AnomalyScorer, OpsModelError, ResourcePredictor
from foedus.client_sdk.agent.queue import TelemetryQueue, TelemetryQueueFull
from foedus.client_sdk.agent.serving import (
    InferenceServicer,
    LoadedModel,
    ModelTable,
    RequestObserver,
    Route,
    inference_server,
)
from foedus.client_sdk.agent.telemetry import (
    IntervalAggregator,
    ResourceSampler,
    VersionWindow,
    interval_reports,
    read_gpus,
)
from foedus.client_sdk.errors import FoedusError, from_rpc_error
from foedus.client_sdk.observability import Observability, ObservabilitySettings
from foedus.client_sdk.targets import listen_on, resolve_target
from foedus.client_sdk.tracing import ServerTracing, aio_client_tracing
from foedus.v1 import agent_pb2, agent_pb2_grpc, registry_pb2, registry_pb2_grpc

log = logging.getLogger("foedus.agent")
PERMANENT = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
KEY_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
"""Before the agent has ever registered, these end it (`Agent.refused`): a wrong key stays wrong.
Afterwards (a key revoked while it runs) it keeps serving what it has and retries."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    deployment: str
    """The deployment this agent serves."""
    server: str
    """Control plane HOST:PORT."""
    api_key: str
    """An agent-role key of the deployment's tenant."""
    listen: str = "127.0.0.1:8001"
    """Where the Open Inference Protocol service listens; port 0 picks a free one."""
    data_dir: Path = Path("foedus-agent")
    """Model cache, telemetry queue and local history."""
    name: str = field(default_factory=socket.gethostname)
    """Unique within the deployment."""
    interval_s: float = 10.0
    """Telemetry interval."""
    history_retention_s: float = 7 * 86_400
    prediction_retention_s: float = DEFAULT_RETENTION_S
    """How long predictions of requests with an id wait on local disk for their labels (7 days)."""
    label_poll_s: float | None = None
    """How often the agent pulls labels and reports what it joined; None: every interval_s."""
    providers: tuple[str, ...] | None = None
    """Execution providers to consider; None: every one this host offers."""
    anomaly_threshold: float = 4.0
    """Robust z-score over which an interval raises an alert (statistical detector)."""
    detector_warmup: int = 30
    """Intervals the statistical detector only learns from before it scores."""
    anomaly_deployment: str | None = None
    """Deployment of the tenant that serves the learned anomaly scorer; None: statistical detector only."""
    resource_deployment: str | None = None
    """Deployment that serves the resource predictor; None: no resource predictions."""
    channel_credentials: grpc.ChannelCredentials | None = None
    """TLS to the control plane; None is plaintext."""
    otlp_endpoint: str = ""
    """OpenTelemetry collector (OTLP/gRPC) for the agent's traces and metrics; empty:
    OTEL_EXPORTER_OTLP_ENDPOINT when set, else none (OTEL_SERVICE_NAME, default foedus-agent)."""
    metrics_listen: str = ""
    """HOST:PORT of a Prometheus scrape endpoint (/metrics); empty: none."""


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.table = ModelTable()
        self.aggregator = IntervalAggregator()
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="foedus-agent")
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.queue = TelemetryQueue(config.data_dir / "telemetry.db")
        self.history = LocalHistory(config.data_dir / "history.db", retention_s=config.history_retention_s)
        self.prediction_log = PredictionLog(
            config.data_dir / "predictions.db", retention_s=config.prediction_retention_s
        )
        self.prediction_buffer = PredictionBuffer()
        self._sensitive: dict[str, str] = {}  # version -> its declared sensitive feature
        self.detector = AnomalyDetector(
            len(HISTORY_METRICS),
            metric_names=list(HISTORY_METRICS),
            config=DetectorConfig(threshold=config.anomaly_threshold, warmup=config.detector_warmup),
        )
        self.resources = ResourceSampler()
        self._loaded: dict[str, LoadedModel] = {}  # by sha256
        self._download_locks: dict[str, asyncio.Lock] = {}
        self._feature_names: dict[str, list[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._metadata = (("authorization", f"Bearer {config.api_key}"),)
        self._queued = asyncio.Event()
        self.anomaly_scorer: AnomalyScorer | None = None
        # The last intervals' metric vectors (HISTORY_METRICS), for windowed ops models; seeded from
        # the local history so a restarted agent scores with a full window at once.
        by_time = {t: metrics for t, _, metrics, _ in self.history.rows()}  # one row per version
        self._recent: collections.deque[np.ndarray] = collections.deque(
            (
                np.asarray([by_time[t].get(m, 0.0) for m in HISTORY_METRICS], dtype=np.float64)
                for t in sorted(by_time)[-MAX_WINDOW:]
            ),
            maxlen=MAX_WINDOW,
        )
        self.resource_predictor: ResourcePredictor | None = None
        self._stopping = False
        self.port = 0
        self.generation = 0
        self.connected = asyncio.Event()
        self.refused = asyncio.Event()
        """Set when the control plane refused the agent's key before it ever registered."""
        self.refusal: FoedusError | None = None
        self._registered_once = False
        self.observability: Observability | None = None
        """The OpenTelemetry providers the agent reports with; None when OpenTelemetry is off."""

    # --- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.observability = Observability.start(
            ObservabilitySettings("foedus-agent", self.config.otlp_endpoint, self.config.metrics_listen)
        )
        server_interceptors: list[Any] = []
        client_interceptors: list[Any] = []
        observer: RequestObserver = self.aggregator
        if self.observability is not None:
            providers: dict[str, Any] = {
                "tracer_provider": self.observability.tracer_provider,
                "meter_provider": self.observability.meter_provider,
            }
            server_interceptors.append(ServerTracing(**providers))
            client_interceptors.extend(aio_client_tracing(**providers))
            observer = MeteredObserver(self.aggregator, self.observability.meter_provider, self.queue)
        self._server = inference_server(
            InferenceServicer(
                self.table,
                self.executor,
                observer=observer,
                predictions=self.prediction_buffer,
                server_name="foedus-agent",
            ),
            server_interceptors,
        )
        self.port = listen_on(self._server, self.config.listen)
        await self._server.start()
        # Several replicas (HOST:PORT,HOST:PORT): streams move to another one when theirs goes away.
        target, options = resolve_target(self.config.server)
        if self.config.channel_credentials is not None:
            self._channel = grpc.aio.secure_channel(
                target, self.config.channel_credentials, options=options, interceptors=client_interceptors
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                target, options=options, interceptors=client_interceptors
            )
        self._tasks = [
            asyncio.create_task(
                self._watch_assignments(self.config.deployment, self._apply), name="assignments"
            ),
            *(
                asyncio.create_task(
                    self._watch_assignments(dep, functools.partial(self._apply_ops, kind)),
                    name=f"ops-{kind}",
                )
                for kind, dep in (
                    ("anomaly", self.config.anomaly_deployment),
                    ("resource", self.config.resource_deployment),
                )
                if dep
            ),
            asyncio.create_task(self._intervals(), name="intervals"),
            asyncio.create_task(self._send_telemetry(), name="telemetry"),
            asyncio.create_task(self._performance(), name="performance"),
        ]
        log.info(
            "agent %s serving deployment %s on port %d", self.config.name, self.config.deployment, self.port
        )

    async def stop(self, *, flush: bool = True) -> None:
        """Stops serving; with `flush`, the last interval is queued first (sent on the next start)
        and the predictions still in memory are written to the prediction log."""
        if flush:
            self._record_interval(*self.aggregator.cut())
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        # A cancellation can be lost inside asyncio.wait_for (Python 3.11); the loops also check
        # `_stopping`, and nothing here waits for them for long.
        await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.stop(2.0)
        if self._channel is not None:
            await self._channel.close(grace=None)
        self.executor.shutdown(wait=True)
        if self.observability is not None:
            self.observability.shutdown()
        self.queue.close()
        self.history.close()
        if flush:  # predictions still in memory go to disk, to be joined after a restart
            self.prediction_log.record(self.prediction_buffer.take(), self._sensitive)
        self.prediction_log.close()

    # --- assignments -----------------------------------------------------------------------------
    async def _watch_assignments(
        self, deployment: str, apply: Callable[[agent_pb2.Assignment], Awaitable[None]]
    ) -> None:
        assert self._channel is not None
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        backoff = 0.2
        while not self._stopping:
            try:
                info = agent_pb2.AgentInfo(
                    name=self.config.name,
                    host=socket.gethostname(),
                    cpu_count=os.cpu_count() or 0,
                    memory_bytes=_memory_bytes(),
                    execution_providers=_available_providers(),
                    gpus=[agent_pb2.Gpu(name=g.name, memory_bytes=g.memory_total_bytes) for g in read_gpus()],
                    agent_version="0.1.0",
                )
                await stub.RegisterAgent(
                    agent_pb2.RegisterAgentRequest(deployment=deployment, agent=info),
                    metadata=self._metadata,
                    timeout=30,
                )
                self._registered_once = True
                call = stub.WatchAssignments(
                    agent_pb2.WatchAssignmentsRequest(deployment=deployment, agent=self.config.name),
                    metadata=self._metadata,
                )
                async for response in call:
                    await apply(response.assignment)
                    if deployment == self.config.deployment:
                        self.connected.set()
                    backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                if exc.code() in KEY_REFUSED and not self._registered_once:
                    refused = from_rpc_error(exc)
                    error = type(refused)(f"the control plane refused the agent's API key: {refused.message}")
                    log.error("%s; the agent stops", error.message)
                    self.refusal = error
                    self.refused.set()
                    return
                level = logging.ERROR if exc.code() in PERMANENT else logging.INFO
                log.log(
                    level, "assignments of %s: %s: %s; retrying", deployment, exc.code().name, exc.details()
                )
            except Exception:
                log.exception("applying an assignment failed; retrying")
            self.connected.clear()
            await asyncio.sleep(backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, 15.0)

    async def _apply(self, assignment: agent_pb2.Assignment) -> None:
        deployment = assignment.deployment
        if deployment.generation < self.generation:
            return
        loaded: dict[str, LoadedModel] = {}
        for assigned in assignment.versions:
            model = await self._load(deployment.model, assigned)
            loaded[str(assigned.version)] = model
            self.aggregator.set_profile(model.version, assigned.reference_profile)
            self._feature_names[model.version] = [f.name for f in assigned.reference_profile.features]
            self.prediction_buffer.configure(model.version, self._outputs_of(model.version, assigned))
        weights = {str(t.version): t.weight for t in deployment.traffic}
        shadow = str(deployment.shadow_version) if deployment.shadow_version else None
        if weights:
            self.table.set_route(deployment.name, Route.build(loaded, weights, shadow))
        else:
            self.table.remove(deployment.name)
        self.generation = deployment.generation
        log.info("generation %d: serving %s", self.generation, weights or "nothing")

    def _outputs_of(self, version: str, assigned: agent_pb2.AssignedVersion) -> VersionOutputs:
        """Tags "class_labels" (comma-separated labels of the probability columns) and
        "sensitive_feature" (an input feature of the reference profile) of a version."""
        tags = dict(assigned.tags)
        classes = (
            tuple(c.strip() for c in tags["class_labels"].split(",")) if tags.get("class_labels") else None
        )
        feature = tags.get("sensitive_feature", "")
        names = self._feature_names.get(version, [])
        if feature and feature not in names:
            log.error(
                "v%s declares sensitive feature %r, which its reference profile lacks", version, feature
            )
            feature = ""
        if feature:
            self._sensitive[version] = feature
        return VersionOutputs(classes, names.index(feature) if feature else None, feature)

    async def _apply_ops(self, kind: str, assignment: agent_pb2.Assignment) -> None:
        """Loads the ops model a deployment assigns: its highest-weight version."""
        deployment = assignment.deployment
        if not deployment.traffic:
            return
        chosen = max(deployment.traffic, key=lambda t: (t.weight, t.version)).version
        (assigned,) = [v for v in assignment.versions if v.version == chosen]
        model = await self._load(deployment.model, assigned, serve_as=deployment.name)
        try:
            if kind == "anomaly":
                scorer = AnomalyScorer(model, deployment.model, dict(assigned.tags))
                _ = scorer.threshold
                self.anomaly_scorer = scorer
            else:
                self.resource_predictor = ResourcePredictor(model, deployment.model, dict(assigned.tags))
        except OpsModelError as exc:
            log.error("cannot use %s v%d as %s model: %s", deployment.model, chosen, kind, exc)
            return
        log.info("%s model: %s v%d", kind, deployment.model, chosen)

    async def _load(
        self, model_name: str, assigned: agent_pb2.AssignedVersion, *, serve_as: str | None = None
    ) -> LoadedModel:
        digest = assigned.artifact.sha256
        cached = self._loaded.get(digest)
        if serve_as is None and cached is not None and cached.version == str(assigned.version):
            return cached
        path = self.config.data_dir / "models" / f"{digest}.onnx"
        async with self._download_locks.setdefault(digest, asyncio.Lock()):
            if not path.exists() or _sha256(path) != digest:
                await self._download(model_name, assigned.version, path, digest)
        loop = asyncio.get_running_loop()
        session, choice = await loop.run_in_executor(self.executor, self._select, path)
        log.info(
            "loaded %s v%d on %s (p50 %.3f ms)", model_name, assigned.version, choice.provider, choice.p50_ms
        )
        model = LoadedModel.from_session(
            serve_as or self.config.deployment, str(assigned.version), session, p50_ms=choice.p50_ms
        )
        if serve_as is None:
            self._loaded[digest] = model
        return model

    def _select(self, path: Path) -> tuple[Any, Any]:
        from foedus.client_sdk.agent.providers import select_session

        return select_session(path, candidates=self.config.providers)

    async def _download(self, model: str, version: int, path: Path, digest: str) -> None:
        assert self._channel is not None
        stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.part")
        hasher = hashlib.sha256()
        stream: Any = stub.DownloadArtifact(
            registry_pb2.DownloadArtifactRequest(model=model, version=version),
            metadata=self._metadata,
            timeout=3600,
        )
        # Chunks of 1 MiB go to the page cache: a write takes microseconds, not worth a thread hop.
        with open(tmp, "wb") as f:  # noqa: ASYNC230
            async for message in stream:
                if message.WhichOneof("part") == "chunk":
                    hasher.update(message.chunk)
                    f.write(message.chunk)
        if hasher.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            raise ValueError(f"downloaded {model} v{version} does not match its sha256 {digest}")
        os.replace(tmp, path)

    # --- telemetry -------------------------------------------------------------------------------
    async def _intervals(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.interval_s)
            start, end, windows = self.aggregator.cut()  # on the loop, where requests are recorded
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._record_interval, start, end, windows
                )
            except TelemetryQueueFull:
                log.error("the telemetry queue is full; this interval is not recorded")
            except Exception:
                log.exception("recording an interval failed")

    def _record_interval(
        self, start: float, end: float, windows: dict[tuple[str, bool], VersionWindow]
    ) -> None:
        """Scores a finished interval, keeps it in the local history and queues its telemetry."""
        served = {k: w for k, w in windows.items() if not k[1]}
        if not windows:
            return
        resources = self.resources.sample()
        vector = _metric_vector(served, end - start, resources)
        row = np.asarray([vector[m] for m in HISTORY_METRICS], dtype=np.float64)
        statistical = self.detector.update(row)
        self._recent.append(row)
        recent = np.asarray(self._recent)
        scorer = self.anomaly_scorer
        top: list[tuple[str, float]]
        if scorer is not None:
            score, threshold, detector = scorer.score(recent), scorer.threshold, scorer.label
            # before a windowed model's first full window its input is padded with the first
            # interval (a flat stretch the model never saw in training): scored, never alerted on
            anomalous = score > threshold and len(recent) >= scorer.window
            top = self._explain(scorer, recent) if anomalous else []
        else:
            score = float(statistical.score) if np.isfinite(statistical.score) else 0.0
            threshold, detector = self.config.anomaly_threshold, DETECTOR_NAME
            anomalous = statistical.is_anomaly
            top = [(str(name), float(z)) for name, z in statistical.top]
        scores = {"anomaly": score}
        if self.resource_predictor is not None:
            scores.update(self.resource_predictor.predict(recent))
        for version, _ in served:
            self.history.append(int(start * 1000), version, vector, scores)
        batch = agent_pb2.TelemetryBatch(
            deployment=self.config.deployment,
            agent=self.config.name,
            intervals=interval_reports(start, end, windows, self._feature_names, resources, scores),
        )
        if anomalous and served:
            version = max(served, key=lambda k: served[k].requests)[0]
            batch.alerts.append(
                agent_pb2.AgentAlert(
                    alert_id=uuid.uuid4().hex,
                    time_unix_ms=int(end * 1000),
                    version=int(version),
                    kind="anomaly",
                    score=score,
                    threshold=threshold,
                    detector=detector,
                    top=[
                        agent_pb2.Contribution(
                            metric=name, value=float(vector[name]), attribution=attribution
                        )
                        for name, attribution in top[:3]
                    ],
                )
            )
        self.queue.put(batch.SerializeToString())
        self._queued.set()

    def _explain(self, scorer: AnomalyScorer, recent: np.ndarray) -> list[tuple[str, float]]:
        """SHAP attributions against recent intervals the scorer found normal."""
        normal = [
            [metrics[m] for m in HISTORY_METRICS]
            for _, _, metrics, scores in self.history.rows()[-200:]
            if scores.get("anomaly", math.inf) <= scorer.threshold
        ]
        if len(normal) < 3:
            return []
        try:
            return scorer.explain(recent, np.asarray(normal, dtype=np.float64))
        except Exception:
            log.exception("SHAP explanation failed")
            return []

    async def _send_telemetry(self) -> None:
        assert self._channel is not None
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        backoff = 0.2
        while not self._stopping:
            batches = await asyncio.get_running_loop().run_in_executor(self.executor, self.queue.peek, 50)
            if not batches:
                self._queued.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), 1.0)
                continue
            try:
                requests = []
                for item in batches:
                    batch = agent_pb2.TelemetryBatch.FromString(item.payload)
                    batch.batch_id = item.batch_id
                    requests.append(agent_pb2.ReportTelemetryRequest(batch=batch))
                call = stub.ReportTelemetry(iter(requests), metadata=self._metadata, timeout=60)
                async for ack in call:
                    await asyncio.get_running_loop().run_in_executor(
                        self.executor, self.queue.ack, [ack.batch_id]
                    )
                backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                level = logging.ERROR if exc.code() in PERMANENT else logging.INFO
                log.log(
                    level,
                    "telemetry: %s: %s; %d batch(es) wait",
                    exc.code().name,
                    exc.details(),
                    len(batches),
                )
                # a tenant over its ingest limit is told when to send again
                retry_after = getattr(from_rpc_error(exc), "retry_after_s", 0.0)
                await asyncio.sleep(max(retry_after, backoff * (1 + random.random() / 2)))
                backoff = min(backoff * 2, 15.0)

    # --- labels and performance --------------------------------------------------------------------
    async def _performance(self) -> None:
        """Writes buffered predictions, pulls labels, joins them and reports the counts."""
        assert self._channel is not None
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        loop = asyncio.get_running_loop()
        backoff = 0.2
        while not self._stopping:
            await asyncio.sleep(self.config.label_poll_s or self.config.interval_s)
            try:
                await loop.run_in_executor(
                    self.executor, self.prediction_log.record, self.prediction_buffer.take(), self._sensitive
                )
                while True:
                    response = await stub.PullLabels(
                        agent_pb2.PullLabelsRequest(
                            deployment=self.config.deployment, after_sequence=self.prediction_log.cursor
                        ),
                        metadata=self._metadata,
                        timeout=60,
                    )
                    await loop.run_in_executor(
                        self.executor, self.prediction_log.join, list(response.labels), self._sensitive
                    )
                    if not response.labels:
                        break
                await loop.run_in_executor(self.executor, self.prediction_log.prune)
                while reports := await loop.run_in_executor(self.executor, self.prediction_log.outbox):
                    for batch_id, request in reports:
                        request.deployment = self.config.deployment
                        request.agent = self.config.name
                        await stub.ReportPerformance(request, metadata=self._metadata, timeout=60)
                        await loop.run_in_executor(self.executor, self.prediction_log.ack, batch_id)
                backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                level = logging.ERROR if exc.code() in PERMANENT else logging.INFO
                log.log(level, "labels and performance: %s: %s", exc.code().name, exc.details())
                await asyncio.sleep(backoff * (1 + random.random() / 2))
                backoff = min(backoff * 2, 15.0)
            except Exception:
                log.exception("joining labels failed")


class MeteredObserver:
    """Passes every request on to the interval aggregator and measures it for OpenTelemetry:
    `foedus.model.inference.duration` (seconds) by deployment, version, shadow and outcome, and
    the depth of the durable telemetry queue as `foedus.agent.telemetry_queue.depth`."""

    def __init__(self, inner: RequestObserver, meter_provider: Any, queue: TelemetryQueue) -> None:
        from opentelemetry import metrics
        from opentelemetry.metrics import CallbackOptions, Observation

        from foedus.client_sdk.tracing import DURATION_BUCKETS_S, SCOPE_VERSION

        self._inner = inner
        meter = metrics.get_meter("foedus.agent", SCOPE_VERSION, meter_provider)
        self._duration = meter.create_histogram(
            "foedus.model.inference.duration",
            unit="s",
            description="Time a model version takes to answer an inference request.",
            explicit_bucket_boundaries_advisory=(0.0005, 0.001, 0.0025, *DURATION_BUCKETS_S),
        )

        def depth(options: CallbackOptions) -> list[Observation]:
            try:
                return [Observation(queue.depth())]
            except Exception:  # closed while the agent stops
                return []

        meter.create_observable_gauge(
            "foedus.agent.telemetry_queue.depth",
            callbacks=[depth],
            unit="{batch}",
            description="Telemetry batches waiting in the agent's durable queue.",
        )

    def record(
        self,
        model: LoadedModel,
        latency_ms: float,
        ok: bool,
        inputs: Any,
        outputs: Any,
        shadow: bool,
    ) -> None:
        self._inner.record(model, latency_ms, ok, inputs, outputs, shadow)
        self._duration.record(
            latency_ms / 1000.0,
            {
                "foedus.deployment": model.name,
                "foedus.model.version": model.version,
                "foedus.shadow": shadow,
                "foedus.outcome": "ok" if ok else "error",
            },
        )

    def invalid(self, model: LoadedModel) -> None:
        self._inner.invalid(model)


def _metric_vector(
    windows: dict[tuple[str, bool], VersionWindow], seconds: float, resources: agent_pb2.Resources
) -> dict[str, float]:
    from foedus.client_sdk.agent.histogram import LatencyHistogram

    hist = LatencyHistogram()
    requests = errors = 0
    for w in windows.values():
        hist.merge(w.latency)
        requests += w.requests
        errors += w.errors
    return {
        "requests": requests / max(seconds, 1e-3),
        "error_rate": errors / requests if requests else 0.0,
        "latency_p50_ms": hist.quantile(0.5) if hist.count else 0.0,
        "latency_p99_ms": hist.quantile(0.99) if hist.count else 0.0,
        "process_cpu_percent": resources.process_cpu_percent,
        "process_memory_bytes": float(resources.process_memory_bytes),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _available_providers() -> list[str]:
    try:
        import onnxruntime as ort

        return list(ort.get_available_providers())
    except ImportError:
        return []


async def run_agent(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Runs an agent until `stop` is set (or forever).

    Raises the SDK's Unauthenticated or PermissionDenied when the control plane refuses the key
    before the agent has ever registered (`Agent.refused`)."""
    agent = Agent(config)
    await agent.start()
    print(f"foedus agent {config.name} serving {config.deployment} on port {agent.port}", flush=True)
    waits = [
        asyncio.create_task((stop or asyncio.Event()).wait()),
        asyncio.create_task(agent.refused.wait()),
    ]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await agent.stop()
    if agent.refusal is not None:
        raise agent.refusal
