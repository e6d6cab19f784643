"""Monitoring rules: what agents may report, and how reports become status, series, alerts and drift."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from foedus.client_sdk import drift
from foedus.client_sdk.agent.histogram import NUM_BUCKETS, LatencyHistogram
from foedus.server import validation
from foedus.server.errors import FailedPrecondition, InvalidArgument
from foedus.server.store.base import Store
from foedus.server.store.records import (
    AgentRecord,
    AlertRecord,
    DeploymentRecord,
    IntervalRecord,
    MetricSeriesRecord,
    Page,
    ReferenceProfile,
)
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

MAX_INTERVALS = 10_000
MAX_METRICS = 1_000_000
MAX_ALERTS = 1_000
DAY_MS = 86_400_000
INTERVAL_METRICS = ("requests", "errors", "invalid", "latency_p50_ms", "latency_p99_ms")
DEFAULT_DRIFT_WINDOW_S = 3600
MAX_WINDOW_S = 31 * 86_400


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    batch_id: str
    deployment: str
    agent: str
    intervals: list[IntervalRecord]
    alerts: list[AlertRecord]
    series: list[MetricSeriesRecord]


@dataclass(frozen=True, slots=True)
class VersionStats:
    version: int
    shadow: bool
    requests: int
    errors: int
    invalid: int
    error_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    requests_per_s: float
    max_anomaly_score: float


@dataclass(frozen=True, slots=True)
class DriftResult:
    deployment: str
    model: str
    version: int
    start_ms: int
    end_ms: int
    intervals: int
    report: drift.DriftReport


def profile_counts(profile: ReferenceProfile) -> list[drift.FeatureCounts]:
    """A stored reference profile's own counts, in the layout of `drift.FeatureCounts`."""
    out = []
    for f in profile.features:
        if f.kind == "numeric":
            counts = np.asarray([f.underflow, *f.counts, f.overflow], dtype=np.int64)
            out.append(drift.FeatureCounts(f.name, np.asarray(f.edges, dtype=np.float64), counts, f.missing))
        else:
            counts = np.asarray([*f.counts, f.other], dtype=np.int64)
            out.append(drift.FeatureCounts(f.name, None, counts, f.missing))
    return out


def interval_counts(
    reference: list[drift.FeatureCounts], intervals: list[IntervalRecord]
) -> dict[str, drift.FeatureCounts]:
    """The agents' feature counts summed over intervals, for the features of `reference`.

    Counts that do not fit the reference bins (another bin count, or labels instead of bins) are
    left out, as are features the profile does not have.
    """
    by_name = {f.name: f for f in reference}
    sums: dict[str, list[int]] = {}
    for interval in intervals:
        for item in interval.features:
            ref = by_name.get(str(item.get("name", "")))
            counts = item.get("counts")
            if ref is None or not isinstance(counts, list) or "categories" in item:
                continue
            if ref.edges is not None:
                row = [item.get("underflow", 0), *counts, item.get("overflow", 0)]
            else:
                row = [*counts, item.get("other", 0)]
            if len(row) != ref.counts.size:
                continue
            row.append(item.get("missing", 0))
            values = [int(x) if isinstance(x, int | float) else 0 for x in row]
            old = sums.get(ref.name)
            sums[ref.name] = values if old is None else [a + b for a, b in zip(old, values, strict=True)]
    return {
        name: drift.FeatureCounts(name, by_name[name].edges, np.asarray(v[:-1], dtype=np.int64), v[-1])
        for name, v in sums.items()
    }


def drift_thresholds(given: dict[str, float]) -> drift.DriftThresholds:
    """Thresholds from the given non-zero values, defaults for the others; InvalidArgument if out of range."""
    unknown = set(given) - set(drift.API_THRESHOLDS)
    if unknown:
        raise InvalidArgument(f"unknown drift thresholds: {', '.join(sorted(unknown))}")
    # 0 (a field left unset) means the default; NaN is kept, for validate() to refuse.
    chosen = {name: value for name, value in given.items() if value != 0.0}
    thresholds = dataclasses.replace(drift.DriftThresholds(), **chosen)  # type: ignore[arg-type]
    try:
        thresholds.validate()
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return thresholds


def _histogram(latency: dict[str, object]) -> LatencyHistogram:
    return LatencyHistogram.from_sparse(
        np.asarray(latency.get("buckets", []), dtype=np.int64),
        np.asarray(latency.get("counts", []), dtype=np.int64),
        sum_ms=float(latency.get("sum", 0.0)),  # type: ignore[arg-type]
    )


class MonitoringService:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], int] = now_us,
        on_alerts: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_alerts(tenant, deployment)` runs after a batch with alerts was stored (grouping)."""
        self._store = store
        self._clock = clock
        self._on_alerts = on_alerts

    # --- agents --------------------------------------------------------------------------------
    def register_agent(
        self, caller: Principal, deployment: str, name: str, info: dict[str, object]
    ) -> DeploymentRecord:
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        validation.agent_name(name)
        self._store.register_agent(tenant, deployment, name, info, self._clock())
        return self._store.get_deployment(tenant, deployment)

    def agents(self, caller: Principal, deployment: str) -> list[AgentRecord]:
        return self._store.list_agents(caller.own_tenant(), validation.deployment_name(deployment))

    # --- ingest --------------------------------------------------------------------------------
    def ingest(self, caller: Principal, batch: TelemetryBatch) -> bool:
        """Stores a batch once; returns True for a batch committed before (a retry)."""
        tenant = caller.own_tenant()
        if not 0 < len(batch.batch_id) <= 128:
            raise InvalidArgument("batch_id is required (1-128 characters): it makes retries safe")
        validation.deployment_name(batch.deployment)
        validation.agent_name(batch.agent)
        if (
            len(batch.intervals) > MAX_INTERVALS
            or sum(c.count for c in batch.series) > MAX_METRICS
            or len(batch.alerts) > MAX_ALERTS
        ):
            raise InvalidArgument(
                f"a batch holds at most {MAX_INTERVALS} intervals, {MAX_ALERTS} alerts and {MAX_METRICS} metric points"
            )
        for interval in batch.intervals:
            self._check_interval(interval)
        for chunk in batch.series:
            self._check_series(chunk)
        for alert in batch.alerts:
            if not 0 < len(alert.alert_id) <= 128 or not math.isfinite(alert.score):
                raise InvalidArgument("an alert needs an alert_id (1-128 characters) and a finite score")
        duplicate = self._store.ingest_telemetry(
            tenant, batch.deployment, batch.agent, batch.batch_id, batch.intervals, batch.alerts, batch.series,
            self._clock(),
        )  # fmt: skip
        if batch.alerts and self._on_alerts is not None:
            # Also for a retry: the first try may have been stored and then lost before grouping.
            self._on_alerts(tenant, batch.deployment)
        return duplicate

    @staticmethod
    def _check_series(chunk: MetricSeriesRecord) -> None:
        if not 0 < len(chunk.name) <= 128:
            raise InvalidArgument(f"metric {chunk.name!r}: names are 1-128 characters")
        n = chunk.count
        if (
            n < 0
            or len(chunk.times_ms) != 8 * n
            or len(chunk.values) != 8 * n
            or len(chunk.steps) not in (0, 8 * n)
        ):
            raise InvalidArgument(
                f"metric {chunk.name!r}: times, values (and steps, if any) need one entry per point"
            )
        if not np.isfinite(np.frombuffer(chunk.values, dtype="<f8")).all():
            raise InvalidArgument(f"metric {chunk.name!r}: values must be finite numbers")

    @staticmethod
    def _check_interval(interval: IntervalRecord) -> None:
        where = f"interval of version {interval.version} at {interval.start_ms}"
        if interval.version <= 0:
            raise InvalidArgument(f"{where}: version numbers start at 1")
        if not 0 < interval.duration_ms <= DAY_MS or interval.start_ms < 0:
            raise InvalidArgument(f"{where}: duration must be between 1 ms and a day, start not negative")
        if (
            min(interval.requests, interval.errors, interval.invalid) < 0
            or interval.errors > interval.requests
        ):
            raise InvalidArgument(f"{where}: counts must not be negative and errors cannot exceed requests")
        buckets = interval.latency.get("buckets", [])
        counts = interval.latency.get("counts", [])
        if not isinstance(buckets, list) or not isinstance(counts, list) or len(buckets) != len(counts):
            raise InvalidArgument(f"{where}: latency histogram needs one count per bucket")
        if any(not 0 <= b < NUM_BUCKETS for b in buckets) or any(c < 0 for c in counts):
            raise InvalidArgument(
                f"{where}: latency buckets must be in [0, {NUM_BUCKETS}) with non-negative counts"
            )
        if any(not math.isfinite(v) for v in (*interval.scores.values(), *interval.resources.values())):
            raise InvalidArgument(f"{where}: scores and resources must be finite numbers")

    # --- reading -------------------------------------------------------------------------------
    def status(
        self, caller: Principal, name: str, window_s: int
    ) -> tuple[DeploymentRecord, list[AgentRecord], list[VersionStats]]:
        tenant = caller.own_tenant()
        validation.deployment_name(name)
        if window_s < 0 or window_s > 31 * 86_400:
            raise InvalidArgument("window_s must be between 0 and 31 days")
        window_ms = (window_s or 300) * 1000
        deployment = self._store.get_deployment(tenant, name)
        end_ms = self._clock() // 1000 + 1
        groups: dict[tuple[int, bool], _Totals] = {}
        for row in self._store.stream_intervals(tenant, name, None, end_ms - window_ms, end_ms):
            totals = groups.get((row.version, row.shadow))
            if totals is None:
                totals = groups[(row.version, row.shadow)] = _Totals()
            totals.add(row)
        stats = []
        for (version, shadow), t in sorted(groups.items()):
            stats.append(
                VersionStats(
                    version=version,
                    shadow=shadow,
                    requests=t.requests,
                    errors=t.errors,
                    invalid=t.invalid,
                    error_rate=t.errors / t.requests if t.requests else 0.0,
                    latency_p50_ms=t.latency.quantile(0.5) if t.latency.count else 0.0,
                    latency_p99_ms=t.latency.quantile(0.99) if t.latency.count else 0.0,
                    requests_per_s=t.requests / (window_ms / 1000.0),
                    max_anomaly_score=t.max_anomaly,
                )
            )
        return deployment, self._store.list_agents(tenant, name), stats

    def query(
        self,
        caller: Principal,
        deployment: str,
        metric: str,
        version: int,
        start_ms: int,
        end_ms: int,
        step_s: int,
    ) -> list[tuple[int, float]]:
        """A series of (step start, value): sums for counts, merged quantiles for latency,
        means for resources and scores, and the mean of logged points for other names."""
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        if not metric or len(metric) > 128:
            raise InvalidArgument("metric is required (at most 128 characters)")
        if version < 0 or step_s < 0 or start_ms < 0 or end_ms < 0:
            raise InvalidArgument("version, times and step must not be negative")
        end_ms = end_ms or self._clock() // 1000 + 1
        start_ms = start_ms or end_ms - 3_600_000
        step_ms = (step_s or 60) * 1000
        if end_ms <= start_ms or (end_ms - start_ms) // step_ms > 100_000:
            raise InvalidArgument("the range must be non-empty and hold at most 100000 steps")
        buckets: dict[int, list[object]] = {}
        logged = self._store.query_metric_points(tenant, deployment, metric, start_ms, end_ms)
        if logged:
            for p in logged:
                buckets.setdefault(start_ms + (p.time_ms - start_ms) // step_ms * step_ms, []).append(p.value)
            return [(t, float(np.mean(v))) for t, v in sorted(buckets.items())]  # type: ignore[arg-type]
        steps: dict[int, _Totals] = {}
        for row in self._store.stream_intervals(tenant, deployment, version or None, start_ms, end_ms):
            step = start_ms + (row.start_ms - start_ms) // step_ms * step_ms
            totals = steps.get(step)
            if totals is None:
                totals = steps[step] = _Totals(metric, served_only=True)
            totals.add(row)
        return [(t, totals.value(metric)) for t, totals in sorted(steps.items())]

    def drift(
        self,
        caller: Principal,
        deployment: str,
        version: int,
        window_s: int,
        end_ms: int,
        method: str,
        thresholds: dict[str, float],
    ) -> DriftResult:
        """Input drift of a version over [end - window, end): the agents' counts against its profile.

        Version 0 is the one with the largest traffic weight. FailedPrecondition when the version
        was registered without a reference profile."""
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        if version < 0 or end_ms < 0:
            raise InvalidArgument("version and end_unix_ms must not be negative")
        if window_s < 0 or window_s > MAX_WINDOW_S:
            raise InvalidArgument("window_s must be between 0 and 31 days (0 means an hour)")
        if method not in ("", *drift.METHODS):
            raise InvalidArgument(f"unknown drift method {method!r}: use one of {', '.join(drift.METHODS)}")
        limits = drift_thresholds(thresholds)
        record = self._store.get_deployment(tenant, deployment)
        if version == 0:
            if not record.traffic:
                raise FailedPrecondition(f"deployment {deployment!r} serves no version; give one")
            version = max(record.traffic, key=lambda vw: (vw[1], vw[0]))[0]
        profile = self._store.get_version(tenant, record.model, version).reference_profile
        if profile is None or not profile.features:
            raise FailedPrecondition(
                f"version {version} of model {record.model!r} has no reference profile: register it "
                "with reference data to get drift reports"
            )
        end_ms = end_ms or self._clock() // 1000 + 1
        start_ms = max(0, end_ms - (window_s or DEFAULT_DRIFT_WINDOW_S) * 1000)
        intervals = self._store.query_intervals(tenant, deployment, version, start_ms, end_ms)
        reference = profile_counts(profile)
        report = drift.drift_report(
            reference, interval_counts(reference, intervals), method=method or "auto", thresholds=limits
        )
        return DriftResult(deployment, record.model, version, start_ms, end_ms, len(intervals), report)

    def alerts(
        self, caller: Principal, deployment: str, page_token: str, page_size: int
    ) -> Page[AlertRecord]:
        tenant = caller.own_tenant()
        if deployment:
            validation.deployment_name(deployment)
        return self._store.list_alerts(tenant, deployment or None, page_token, page_size)


class _Totals:
    """What status and metric series need of a group of intervals, added up one interval at a time:
    request, error and invalid counts and the merged latency histogram (of the served intervals
    only, with `served_only`: a series leaves shadow traffic out), the largest anomaly score, and
    the sum and count of one resource or score (`metric`) over all of them."""

    __slots__ = (
        "_max_anomaly",
        "_metric",
        "_n",
        "_served_only",
        "_sum",
        "errors",
        "invalid",
        "latency",
        "requests",
    )

    def __init__(self, metric: str = "", *, served_only: bool = False) -> None:
        self.requests = self.errors = self.invalid = 0
        self.latency = LatencyHistogram()
        self._max_anomaly = -math.inf
        self._metric = metric
        self._served_only = served_only
        self._sum = 0.0
        self._n = 0

    @property
    def max_anomaly(self) -> float:
        return self._max_anomaly if self._max_anomaly > -math.inf else 0.0

    def add(self, row: IntervalRecord) -> None:
        self._max_anomaly = max(self._max_anomaly, row.scores.get("anomaly", 0.0))
        if self._metric:
            for found in (row.resources.get(self._metric), row.scores.get(self._metric)):
                if found is not None:
                    self._sum += found
                    self._n += 1
        if row.shadow and self._served_only:
            return
        self.requests += row.requests
        self.errors += row.errors
        self.invalid += row.invalid
        self.latency.merge(_histogram(row.latency))

    def value(self, metric: str) -> float:
        """The step's value of a metric series: a sum for counts, a merged quantile for latency, the
        mean of the intervals that report it for resources and scores (0 where none do)."""
        if metric in ("requests", "errors", "invalid"):
            return float(getattr(self, metric))
        if metric in ("latency_p50_ms", "latency_p99_ms"):
            q = 0.5 if metric == "latency_p50_ms" else 0.99
            return self.latency.quantile(q) if self.latency.count else 0.0
        return self._sum / self._n if self._n else 0.0
