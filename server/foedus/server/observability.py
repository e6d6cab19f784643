"""The control plane's own metrics: telemetry ingest, agent streams, rollouts by phase, model latency.

RPC spans and durations come from `foedus.client_sdk.tracing.ServerTracing`; these are the
domain's figures beside them. Made only when OpenTelemetry is on (see `Observability`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from foedus.client_sdk.agent.histogram import LatencyHistogram
from foedus.client_sdk.tracing import SCOPE_VERSION, TENANT
from foedus.server.store.base import Store
from foedus.server.store.records import RolloutPhase
from foedus.v1 import agent_pb2

log = logging.getLogger("foedus.server")

DEPLOYMENT = "foedus.deployment"
VERSION = "foedus.model.version"
QUANTILE = "foedus.quantile"
PHASE = "foedus.rollout.phase"
ACTIVE_PHASES = (RolloutPhase.SCHEDULED, RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


class ControlPlaneMetrics:
    """Instruments of the control plane; `store` answers the rollout gauge at collection time."""

    def __init__(self, meter_provider: metrics.MeterProvider, store: Store) -> None:
        self._store = store
        meter = metrics.get_meter("foedus.server", SCOPE_VERSION, meter_provider)
        self.batches, self.intervals, self.requests = (
            meter.create_counter(f"foedus.telemetry.{name}", unit=f"{{{unit}}}", description=description)
            for name, unit, description in (
                ("batches", "batch", "Telemetry batches agents reported."),
                (
                    "intervals",
                    "interval",
                    "Per-version intervals of the reported batches (new batches only).",
                ),
                ("requests", "request", "Model requests the reported intervals count (new batches only)."),
            )
        )
        self.watch_streams = meter.create_up_down_counter(
            "foedus.agent.watch_streams",
            unit="{stream}",
            description="Open WatchAssignments streams (agents connected to this process).",
        )
        self.model_latency = meter.create_gauge(
            "foedus.model.latency",
            unit="s",
            description="Latency quantiles of a deployment's version over the last reported interval.",
        )
        meter.create_observable_gauge(
            "foedus.rollouts",
            callbacks=[self._rollouts],
            unit="{rollout}",
            description="Active rollouts of every tenant by phase.",
        )

    def ingested(self, tenant: str, batch: agent_pb2.TelemetryBatch, *, duplicate: bool) -> None:
        self.batches.add(1, {TENANT: tenant, "foedus.duplicate": duplicate})
        if duplicate:
            return
        for interval in batch.intervals:
            attributes = {TENANT: tenant, DEPLOYMENT: batch.deployment, VERSION: str(interval.version)}
            self.intervals.add(1, attributes)
            self.requests.add(interval.requests, attributes)
            if interval.shadow or not interval.latency_ms.counts:
                continue
            hist = LatencyHistogram.from_sparse(
                interval.latency_ms.buckets, interval.latency_ms.counts, sum_ms=interval.latency_ms.sum
            )
            for q in (0.5, 0.99):
                self.model_latency.set(hist.quantile(q) / 1000.0, {**attributes, QUANTILE: str(q)})

    def _rollouts(self, options: CallbackOptions) -> Iterable[Observation]:
        try:
            phases = Counter(r.phase for r in self._store.active_rollouts())
        except Exception:
            log.exception("counting rollouts for the rollout gauge failed")
            return []
        return [Observation(phases[p], {PHASE: p.name.lower()}) for p in ACTIVE_PHASES]
