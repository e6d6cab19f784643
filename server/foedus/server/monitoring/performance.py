"""Delayed labels and model performance: rules for logging labels, agents' counts, and the report.

Labels are stored per deployment with a sequence number; agents pull them and join them with the
predictions they keep on their own disk, and send back additive counts (see
`foedus.client_sdk.performance`). The report merges the counts of every agent per version and
window and computes the metrics from the sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from foedus.client_sdk.performance import (
    CLASSIFICATION,
    REGRESSION,
    Cell,
    ClassificationResult,
    FairnessResult,
    PerformanceTotals,
    classification_metrics,
    fairness,
    label_key,
    overall_roc_auc,
)
from foedus.server import validation
from foedus.server.errors import InvalidArgument
from foedus.server.store.base import Store
from foedus.server.store.records import LabelRecord, PerformanceRecord
from foedus.server.tenancy.limits import RateLimiter, take_ingest
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

MAX_LABELS = 10_000
"""Labels per LogLabels call."""
DELETE_BATCH = 1_000
"""Labels the retention sweep deletes per transaction."""
MAX_ID = 256
MAX_PULL = 5_000
MAX_COUNTS = 10_000
WINDOW_MS = 60_000
DEFAULT_RANGE_MS = 7 * 86_400_000


@dataclass(frozen=True, slots=True)
class AgentCounts:
    """One PerformanceCounts message of an agent, decoded."""

    version: int
    window_start_ms: int
    segment: str
    totals: PerformanceTotals


@dataclass(frozen=True, slots=True)
class Estimate:
    predictions: int
    metrics: ClassificationResult


@dataclass(frozen=True, slots=True)
class WindowReport:
    version: int
    start_ms: int
    end_ms: int
    totals: PerformanceTotals
    metrics: ClassificationResult | None
    roc_auc: float
    estimate: Estimate | None
    fairness: FairnessResult | None
    sensitive_feature: str

    @property
    def mae(self) -> float:
        n = self.totals.labelled
        return self.totals.sum_abs_error / n if n and self.totals.task == REGRESSION else math.nan

    @property
    def rmse(self) -> float:
        n = self.totals.labelled
        return (
            math.sqrt(self.totals.sum_squared_error / n) if n and self.totals.task == REGRESSION else math.nan
        )

    @property
    def bias(self) -> float:
        n = self.totals.labelled
        return self.totals.sum_error / n if n and self.totals.task == REGRESSION else math.nan


def totals_to_json(t: PerformanceTotals) -> dict[str, object]:
    return {
        "task": t.task,
        "predictions": t.predictions,
        "labelled": t.labelled,
        "confusion": [[a, b, w] for (a, b), w in sorted(t.confusion.items())],
        "expected": [[a, b, w] for (a, b), w in sorted(t.expected.items())],
        "scores": {c: [[s, p, n] for s, (p, n) in sorted(by.items())] for c, by in sorted(t.scores.items())},
        "sum_abs_error": t.sum_abs_error,
        "sum_squared_error": t.sum_squared_error,
        "sum_error": t.sum_error,
    }


def totals_from_json(data: dict[str, object]) -> PerformanceTotals:
    def num(key: str) -> float:
        value = data.get(key, 0)
        return float(value) if isinstance(value, int | float) else 0.0

    t = PerformanceTotals(
        task=str(data.get("task", "")),
        predictions=int(num("predictions")),
        labelled=int(num("labelled")),
        sum_abs_error=num("sum_abs_error"),
        sum_squared_error=num("sum_squared_error"),
        sum_error=num("sum_error"),
    )
    for key, target in (("confusion", t.confusion), ("expected", t.expected)):
        cells = data.get(key, [])
        if isinstance(cells, list):
            t.add_cells(target, ((str(a), str(b), float(w)) for a, b, w in cells))
    scores = data.get("scores", {})
    if isinstance(scores, dict):
        for label, rows in scores.items():
            t.add_scores(str(label), [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    return t


@dataclass
class _Group:
    totals: PerformanceTotals = field(default_factory=PerformanceTotals)
    segments: dict[str, dict[Cell, float]] = field(default_factory=dict)
    sensitive_feature: str = ""


class PerformanceService:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], int] = now_us,
        retention_s: float = 0.0,
        ingest_limiter: RateLimiter | None = None,
    ) -> None:
        """`retention_s`: how long labels are kept (0: for ever); `ingest_limiter`: the tenants'
        ingest limit, which every label counts against as one point."""
        self._store = store
        self._clock = clock
        self._retention_us = round(retention_s * 1_000_000)
        self._ingest_limiter = ingest_limiter

    def log_labels(
        self, caller: Principal, deployment: str, request_ids: Sequence[str], labels: Sequence[str]
    ) -> tuple[int, int, int]:
        """Stores labels for the deployment's requests; returns (count, first, last sequence)."""
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        if len(request_ids) != len(labels):
            raise InvalidArgument(
                f"request_ids and labels must have the same length ({len(request_ids)} != {len(labels)})"
            )
        if not request_ids:
            raise InvalidArgument("no labels given: pass at least one request id and its label")
        if len(request_ids) > MAX_LABELS:
            raise InvalidArgument(f"at most {MAX_LABELS} labels per call ({len(request_ids)} given)")
        for i, (rid, label) in enumerate(zip(request_ids, labels, strict=True)):
            if not 0 < len(rid) <= MAX_ID:
                raise InvalidArgument(f"request id #{i} is empty or longer than {MAX_ID} characters")
            if not 0 < len(label) <= MAX_ID:
                raise InvalidArgument(
                    f"label #{i} (request {rid!r}) is empty or longer than {MAX_ID} characters"
                )
            try:
                number = float(label)
            except ValueError:
                continue
            if not math.isfinite(number):
                raise InvalidArgument(f"label #{i} (request {rid!r}) is {label!r}: labels must be finite")
        take_ingest(self._ingest_limiter, tenant, len(labels), f"the call of {len(labels)} labels")
        first, last = self._store.add_labels(tenant, deployment, request_ids, labels, self._clock())
        return len(request_ids), first, last

    def expire_labels(self) -> int:
        """Deletes the labels logged longer than the retention ago, in batches of DELETE_BATCH
        (one transaction each); returns how many. Agents' cursors stay valid: a cursor before
        the oldest kept label pulls from there on."""
        if not self._retention_us:
            return 0
        before = self._clock() - self._retention_us
        removed = 0
        while True:
            n = self._store.delete_labels_before(before, DELETE_BATCH)
            removed += n
            if n < DELETE_BATCH:
                return removed

    def pull_labels(
        self, caller: Principal, deployment: str, after: int, page_size: int
    ) -> list[LabelRecord]:
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        if after < 0 or page_size < 0:
            raise InvalidArgument("after_sequence and page_size must not be negative")
        return self._store.labels_after(tenant, deployment, after, min(page_size or MAX_PULL, MAX_PULL))

    def report(
        self,
        caller: Principal,
        deployment: str,
        agent: str,
        batch_id: str,
        sensitive_feature: str,
        counts: Sequence[AgentCounts],
    ) -> bool:
        """Stores an agent's counts once; True for a batch committed before."""
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        validation.agent_name(agent)
        if not 0 < len(batch_id) <= 128:
            raise InvalidArgument("batch_id is required (1-128 characters): it makes retries safe")
        if len(counts) > MAX_COUNTS or len(sensitive_feature) > 128:
            raise InvalidArgument(f"a report holds at most {MAX_COUNTS} counts; feature names 128 characters")
        for c in counts:
            t = c.totals
            if c.version <= 0 or c.window_start_ms < 0 or len(c.segment) > MAX_ID:
                raise InvalidArgument(
                    "counts need a version >= 1, a window start >= 0 and a segment of 256 characters at most"
                )
            if t.task not in (CLASSIFICATION, REGRESSION) or t.predictions < 0 or t.labelled < 0:
                raise InvalidArgument(f"counts of v{c.version}: unknown task {t.task!r} or negative counts")
            sums = (
                t.sum_abs_error,
                t.sum_squared_error,
                t.sum_error,
                *t.confusion.values(),
                *t.expected.values(),
            )
            if not all(math.isfinite(v) for v in sums) or any(w < 0 for w in t.confusion.values()):
                raise InvalidArgument(
                    f"counts of v{c.version}: sums must be finite, confusion counts not negative"
                )
            for by_score in t.scores.values():
                if any(not math.isfinite(s) or min(pn) < 0 for s, pn in by_score.items()):
                    raise InvalidArgument(f"counts of v{c.version}: scores must be finite with counts >= 0")
        rows = [
            PerformanceRecord(
                agent, c.version, c.window_start_ms, c.segment, sensitive_feature, totals_to_json(c.totals)
            )
            for c in counts
        ]
        return self._store.ingest_performance(tenant, deployment, batch_id, rows, self._clock())

    def performance(
        self,
        caller: Principal,
        deployment: str,
        version: int,
        window_s: int,
        start_ms: int,
        end_ms: int,
        positive_class: str,
    ) -> list[WindowReport]:
        """Per version and window: metrics of the labelled predictions, the CBPE estimate of the
        unlabelled ones, and fairness across the segments of the sensitive feature."""
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        if version < 0 or window_s < 0 or window_s % 60 or start_ms < 0 or end_ms < 0:
            raise InvalidArgument("version, start and end must not be negative; window_s is a multiple of 60")
        end = end_ms or self._clock() // 1000 + 1
        start = start_ms or max(0, end - DEFAULT_RANGE_MS)
        if start >= end:
            raise InvalidArgument("start_unix_ms must be before end_unix_ms")
        # Counts are per minute of prediction time: windows start on a whole minute.
        start -= start % WINDOW_MS
        width = window_s * 1000 or (end - start)
        rows = self._store.query_performance(tenant, deployment, version or None, start, end)
        groups: dict[tuple[int, int], _Group] = {}
        for row in rows:
            index = (row.window_start_ms - start) // width
            group = groups.setdefault((row.version, index), _Group())
            totals = totals_from_json(row.counts)
            group.totals.merge(totals)
            if row.segment:
                group.sensitive_feature = group.sensitive_feature or row.sensitive_feature
                cells = group.segments.setdefault(row.segment, {})
                totals.add_cells(cells, ((a, b, w) for (a, b), w in totals.confusion.items()))
        out = []
        for (v, index), group in sorted(groups.items()):
            out.append(
                self._window(
                    v, start + index * width, min(end, start + (index + 1) * width), group, positive_class
                )
            )
        return out

    @staticmethod
    def _window(version: int, start: int, end: int, group: _Group, positive_class: str) -> WindowReport:
        t = group.totals
        metrics = estimate = fair = None
        auc = math.nan
        if t.task == CLASSIFICATION:
            if t.labelled:
                metrics = classification_metrics(t.confusion, t.scores)
                auc = overall_roc_auc(metrics.classes)
            unlabelled = t.predictions - t.labelled
            if unlabelled > 0 and t.expected:
                estimate = Estimate(unlabelled, classification_metrics(t.expected))
            if group.segments:
                labels = {a for a, _ in t.confusion} | {b for _, b in t.confusion}
                positive = positive_class or (max(labels, key=label_key) if labels else "")
                fair = fairness(group.segments, positive)
        return WindowReport(version, start, end, t, metrics, auc, estimate, fair, group.sensitive_feature)
