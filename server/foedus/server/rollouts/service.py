"""Rollout rules: starting (gates, scheduling), the state machine the controller ticks, the
operations people run on a rollout, deployment windows and DORA metrics.

The state machine lives in the store. Every transition is one `Store.update_rollout` call that
writes the rollout's new state, its events and (when traffic changes) the deployment's traffic in
one transaction, guarded by the rollout's revision. A process killed at any point therefore leaves
either the state before a transition or the state after it, never half of one; the controller that
picks the rollout up again continues from what is stored, so no step is repeated or skipped and a
rollback happens once.

Each tick reads the telemetry intervals stored since the previous tick (a cursor of interval ids is
part of the stored state), feeds the candidate's and the stable version's counts to the sequential
analysis (`foedus.server.rollouts.analysis`), and then decides: roll back on a significant
regression or a forecast SLO breach, advance when the step held its minimum duration and sample
size (and the next step fits the capacity), finish after the last step, pause (or roll back) when a
step stays short of its sample size past its deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from foedus.client_sdk import drift
from foedus.client_sdk.agent.histogram import NUM_BUCKETS, LatencyHistogram
from foedus.server import validation
from foedus.server.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from foedus.server.monitoring.service import profile_counts
from foedus.server.rollouts import dora
from foedus.server.rollouts.analysis import CanaryAnalysis, Verdict, VersionWindow
from foedus.server.rollouts.forecast import (
    LoadForecast,
    NotEnoughHistory,
    Window,
    breach_probability,
    forecast_load,
    lowest_load_windows,
)
from foedus.server.rollouts.spec import RolloutSpec, Stage, stages, traffic_for, validate
from foedus.server.store.base import Store
from foedus.server.store.records import (
    AlertRecord,
    Evaluation,
    IntervalRecord,
    Page,
    RolloutEventRecord,
    RolloutPhase,
    RolloutRecord,
    Strategy,
    TrafficChange,
    VersionRecord,
    VersionState,
)
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

log = logging.getLogger(__name__)

MAX_INTERVALS_PER_TICK = 20_000
TREND_POINTS = 60
HOUR_MS = 3_600_000
HISTORY_WEEKS = 8
ANOMALY_SCORE = "anomaly"
CONTROLLER_AGENT = "foedus-controller"
MAX_EVENTS = 1000
ALERT_FIGURES = (
    "candidate_error_rate",
    "stable_error_rate",
    "candidate_p99_ms",
    "stable_p99_ms",
    "candidate_requests",
    "stage_requests",
    "psi",
)


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _event(
    time_us: int, kind: str, message: str, step: int, weight: float, evidence: dict[str, float] | None = None
) -> RolloutEventRecord:
    clean = {k: float(v) for k, v in (evidence or {}).items() if math.isfinite(float(v))}
    return RolloutEventRecord(0, time_us, kind, message, step, weight, clean)


@dataclass(slots=True)
class Tally:
    """Cumulative counts of one version over the rollout (for A/B winners and evidence)."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = dataclasses.field(default_factory=lambda: [0] * NUM_BUCKETS)
    latency_sum_ms: float = 0.0

    def add(self, window: VersionWindow, latency_sum_ms: float) -> None:
        self.requests += window.requests
        self.errors += window.errors
        self.latency = (np.asarray(self.latency, dtype=np.int64) + window.latency).tolist()
        self.latency_sum_ms += latency_sum_ms

    def metric(self, name: str) -> float:
        if name == "error_rate":
            return self.errors / self.requests if self.requests else math.nan
        counts = np.asarray(self.latency, dtype=np.int64)
        if counts.sum() == 0:
            return math.nan
        hist = LatencyHistogram.from_sparse(
            np.nonzero(counts)[0], counts[counts > 0], sum_ms=self.latency_sum_ms
        )
        return hist.quantile(0.5 if name == "latency_p50" else 0.99)

    def mean_ms(self) -> float | None:
        n = int(np.sum(self.latency))
        return self.latency_sum_ms / n if n else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Tally:
        return cls(**data) if data else cls()


@dataclass(slots=True)
class Tick:
    """What one tick read: each version's window, latency sums, agents' CPU, anomaly scores."""

    candidate: VersionWindow
    stable: VersionWindow
    candidate_sum_ms: float = 0.0
    stable_sum_ms: float = 0.0
    cpu_percent: dict[str, float] = dataclasses.field(default_factory=dict)
    live_requests: int = 0


@dataclass(frozen=True, slots=True)
class Capacity:
    fits: bool
    reason: str
    evidence: dict[str, float]


def _window(
    records: Sequence[IntervalRecord], anomaly_threshold: float
) -> tuple[VersionWindow, float, dict[str, int] | None]:
    """One version's window of a tick, its summed latency (ms) and its prediction counts by label."""
    w = VersionWindow()
    latency = np.zeros(NUM_BUCKETS, dtype=np.int64)
    labels: dict[str, int] | None = None
    sum_ms = 0.0
    for r in records:
        w.requests += r.requests
        w.errors += r.errors
        buckets = np.asarray(r.latency.get("buckets", []), dtype=np.int64)
        counts = np.asarray(r.latency.get("counts", []), dtype=np.int64)
        if len(buckets) and len(buckets) == len(counts):
            np.add.at(latency, np.clip(buckets, 0, NUM_BUCKETS - 1), counts)
        total = r.latency.get("sum", 0.0)
        sum_ms += float(total) if isinstance(total, int | float) else 0.0
        if not r.shadow:
            w.intervals += 1
            score = r.scores.get(ANOMALY_SCORE)
            if score is not None and score >= anomaly_threshold:
                w.anomalous_intervals += 1
        if r.predictions is not None:
            categories = r.predictions.get("categories")
            values = r.predictions.get("counts")
            if isinstance(categories, list) and isinstance(values, list):
                labels = labels if labels is not None else {}
                for label, n in zip(categories, values, strict=False):
                    labels[str(label)] = labels.get(str(label), 0) + int(n)
    w.latency = latency
    return w, sum_ms, labels


def _feature_row(f: dict[str, object]) -> list[int] | None:
    """An agent's counts of one feature on the reference bins as [underflow, overflow, other, bins...]."""
    counts = f.get("counts")
    if not isinstance(counts, list) or "categories" in f:  # no counts, or labels rather than bins
        return None
    extra = [f.get(k, 0) for k in ("underflow", "overflow", "other")]
    return [int(x) if isinstance(x, int | float) else 0 for x in (*extra, *counts)]


def _num(state: dict[str, object], key: str, default: float) -> float:
    value = state.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _dict(state: dict[str, object], key: str) -> dict[str, Any] | None:
    value = state.get(key)
    return value if isinstance(value, dict) else None


class RolloutService:
    def __init__(
        self,
        store: Store,
        *,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], int] = now_us,
        anomaly_threshold: float = 4.0,
    ) -> None:
        """`on_change(tenant, deployment)` is called after every committed change of traffic."""
        self._store = store
        self._on_change = on_change
        self._clock = clock
        self._anomaly_threshold = anomaly_threshold

    # --- starting ------------------------------------------------------------------------------
    def start(self, caller: Principal, spec: RolloutSpec) -> RolloutRecord:
        tenant = caller.own_tenant()
        validation.deployment_name(spec.deployment)
        validate(spec)
        deployment = self._store.get_deployment(tenant, spec.deployment)
        active = self._store.list_rollouts(tenant, spec.deployment, True, "", 1).items
        if active:
            raise FailedPrecondition(
                f"deployment {spec.deployment!r} already has an active rollout ({active[0].id}, "
                f"{active[0].phase.name.lower()}); wait for it to finish, or abort or promote it first"
            )
        live = [v for v, w in deployment.traffic if w > 0]
        if not live:
            raise FailedPrecondition(
                f"deployment {spec.deployment!r} serves no version yet; give it its stable version first "
                "(foedus deployment set)"
            )
        if len(live) > 1:
            raise FailedPrecondition(
                f"deployment {spec.deployment!r} splits its traffic between versions "
                f"{', '.join(map(str, live))}; a rollout starts from one stable version"
            )
        stable = live[0]
        if spec.version == stable:
            raise InvalidArgument(f"version {stable} already serves all of {spec.deployment!r}'s traffic")
        candidate = self._store.get_version(tenant, deployment.model, spec.version)
        if candidate.state != VersionState.READY:
            raise FailedPrecondition(f"version {spec.version} of model {deployment.model!r} is archived")
        now = self._clock()
        events = []
        gate_evidence = self._gates(tenant, deployment.model, spec, candidate, stable)
        if gate_evidence is not None:
            events.append(_event(now, "gate", "every gate passed", 0, 0.0, gate_evidence))
        scheduled = max(spec.start_at_us, now)
        if spec.in_window:
            window = self._next_window(tenant, spec.deployment, scheduled // 1000)
            scheduled = max(scheduled, window.start_ms * 1000)
        record = RolloutRecord(
            id=0,
            tenant=tenant,
            deployment=spec.deployment,
            model=deployment.model,
            stable_version=stable,
            candidate_version=spec.version,
            strategy=spec.strategy,
            phase=RolloutPhase.SCHEDULED,
            step=0,
            candidate_weight=0.0,
            reason="",
            spec=spec.to_json(),
            state={},
            analysis={},
            winner_version=0,
            revision=0,
            scheduled_for_us=scheduled,
            started_at_us=0,
            finished_at_us=0,
            created_at_us=now,
            created_by=caller.key_id,
            updated_at_us=now,
        )
        if scheduled > now:
            why = "the next low-load window" if spec.in_window else "the requested start time"
            events.append(_event(now, "scheduled", f"starts at {_iso(scheduled)} ({why})", 0, 0.0))
            record = dataclasses.replace(record, reason=f"scheduled for {_iso(scheduled)}")
            return self._store.create_rollout(record, events, None)
        record, more, traffic = self._begin(record, now)
        created = self._store.create_rollout(record, events + more, traffic)
        self._changed(tenant, spec.deployment)
        return created

    def _begin(
        self, record: RolloutRecord, now: int
    ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange]:
        spec = RolloutSpec.from_json(record.spec)
        first = stages(spec)[0]
        live, mirror = traffic_for(first, record.stable_version, record.candidate_version)
        state: dict[str, object] = {
            "cursor": self._store.last_interval_id(record.tenant, record.deployment),
            "step_started_us": now,
            "stage_requests": 0,
        }
        started = dataclasses.replace(
            record,
            phase=RolloutPhase.PROGRESSING,
            step=0,
            candidate_weight=first.weight,
            reason=first.name,
            state=state,
            started_at_us=now,
            updated_at_us=now,
        )
        message = (
            f"{spec.strategy.name.lower().replace('_', '-')} rollout of version {record.candidate_version} "
            f"(stable {record.stable_version}) started: {first.name}"
        )
        return started, [_event(now, "started", message, 0, first.weight)], TrafficChange(live, mirror)

    # --- gates ---------------------------------------------------------------------------------
    def _gates(
        self, tenant: str, model: str, spec: RolloutSpec, candidate: VersionRecord, stable: int
    ) -> dict[str, float] | None:
        g = spec.gates
        if not (g.onnx_valid or g.latency_budget_ms or g.quality_dataset):
            return None
        failures: list[str] = []
        evidence: dict[str, float] = {}
        if g.onnx_valid:
            if candidate.framework != "onnx" or candidate.onnx_opset <= 0:
                failures.append(
                    f"onnx_valid: version {candidate.version} is not a checked ONNX model "
                    f"(framework {candidate.framework!r})"
                )
            else:
                evidence["onnx_opset"] = candidate.onnx_opset
        if g.latency_budget_ms:
            if candidate.latency is None:
                failures.append(
                    f"latency budget: version {candidate.version} has no registered latency profile"
                )
            else:
                evidence["latency_p99_ms"] = candidate.latency.p99_ms
                evidence["latency_budget_ms"] = g.latency_budget_ms
                if candidate.latency.p99_ms > g.latency_budget_ms:
                    failures.append(
                        f"latency budget: p99 {candidate.latency.p99_ms:.3g} ms on CPU exceeds "
                        f"{g.latency_budget_ms:g} ms"
                    )
        if g.quality_dataset:
            failures += self._quality_gate(tenant, model, spec, candidate, stable, evidence)
        if failures:
            raise FailedPrecondition("gates failed: " + "; ".join(failures))
        return evidence

    def _quality_gate(
        self,
        tenant: str,
        model: str,
        spec: RolloutSpec,
        candidate: VersionRecord,
        stable: int,
        evidence: dict[str, float],
    ) -> list[str]:
        g = spec.gates
        metric = g.quality_metric
        mine = _latest_evaluation(candidate.lineage.evaluations, g.quality_dataset)
        if mine is None or metric not in mine.metrics:
            return [
                f"quality: no evaluation of version {candidate.version} by {metric!r} on dataset "
                f"{g.quality_dataset!r} in its lineage (record one with client.models.evaluate)"
            ]
        value = mine.metrics[metric]
        if mine.baseline_version == stable and metric in mine.baseline_metrics:
            baseline = mine.baseline_metrics[metric]
        else:
            theirs = _latest_evaluation(
                self._store.get_version(tenant, model, stable).lineage.evaluations, g.quality_dataset
            )
            if theirs is None or metric not in theirs.metrics:
                return [
                    f"quality: no evaluation of the stable version {stable} by {metric!r} on dataset "
                    f"{g.quality_dataset!r} to compare with"
                ]
            baseline = theirs.metrics[metric]
        evidence.update(
            quality_candidate=value, quality_stable=baseline, quality_tolerance=g.quality_tolerance
        )
        worse = value - baseline if g.lower_is_better else baseline - value
        if worse > g.quality_tolerance:
            return [
                f"quality: {metric} {value:.4g} of version {candidate.version} is worse than the stable "
                f"version's {baseline:.4g} by more than {g.quality_tolerance:g} on {g.quality_dataset!r}"
            ]
        return []

    # --- reading -------------------------------------------------------------------------------
    def get(self, caller: Principal, rollout_id: int, deployment: str) -> RolloutRecord:
        tenant = caller.own_tenant()
        if rollout_id < 0:
            raise InvalidArgument("the rollout id must not be negative")
        if rollout_id:
            return self._store.get_rollout(tenant, rollout_id)
        if not deployment:
            raise InvalidArgument("name a rollout by its id, or a deployment for its newest rollout")
        return self._store.latest_rollout(tenant, validation.deployment_name(deployment))

    def list_page(
        self, caller: Principal, deployment: str, active_only: bool, page_token: str, page_size: int
    ) -> Page[RolloutRecord]:
        tenant = caller.own_tenant()
        name = validation.deployment_name(deployment) if deployment else None
        return self._store.list_rollouts(tenant, name, active_only, page_token, page_size)

    def events(
        self, caller: Principal, rollout_id: int, after_seq: int, limit: int
    ) -> tuple[list[RolloutEventRecord], RolloutRecord]:
        tenant = caller.own_tenant()
        if rollout_id <= 0:
            raise InvalidArgument("the rollout id must be a positive number")
        if after_seq < 0 or limit < 0:
            raise InvalidArgument("after_seq and limit must not be negative")
        rollout = self._store.get_rollout(tenant, rollout_id)
        events = self._store.list_rollout_events(
            tenant, rollout_id, after_seq, min(limit or MAX_EVENTS, MAX_EVENTS)
        )
        return events, rollout

    # --- operations ----------------------------------------------------------------------------
    def pause(self, caller: Principal, rollout_id: int, reason: str) -> RolloutRecord:
        def change(
            r: RolloutRecord, now: int
        ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
            if r.phase == RolloutPhase.PAUSED:
                raise FailedPrecondition(f"rollout {r.id} is already paused")
            if r.phase != RolloutPhase.PROGRESSING:
                raise FailedPrecondition(
                    f"rollout {r.id} is {r.phase.name.lower()}; only a progressing one pauses"
                )
            why = reason or f"paused by {caller.key_id}"
            return (
                dataclasses.replace(r, phase=RolloutPhase.PAUSED, reason=why, updated_at_us=now),
                [_event(now, "paused", why, r.step, r.candidate_weight)],
                None,
            )

        return self._operate(caller, rollout_id, reason, change)

    def resume(self, caller: Principal, rollout_id: int) -> RolloutRecord:
        def change(
            r: RolloutRecord, now: int
        ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
            if r.phase != RolloutPhase.PAUSED:
                raise FailedPrecondition(f"rollout {r.id} is {r.phase.name.lower()}, not paused")
            state = dict(r.state)
            state["step_started_us"] = now  # the step holds its full minimum duration again
            message = f"resumed by {caller.key_id}; the step's minimum duration starts again"
            return (
                dataclasses.replace(
                    r, phase=RolloutPhase.PROGRESSING, reason="", state=state, updated_at_us=now
                ),
                [_event(now, "resumed", message, r.step, r.candidate_weight)],
                None,
            )

        return self._operate(caller, rollout_id, "", change)

    def promote(self, caller: Principal, rollout_id: int, reason: str) -> RolloutRecord:
        def change(
            r: RolloutRecord, now: int
        ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
            self._require_active(r)
            why = reason or f"promoted by {caller.key_id}, skipping the remaining steps"
            return self._final(r, now, RolloutPhase.SUCCEEDED, "promoted", why, winner=r.candidate_version)

        return self._operate(caller, rollout_id, reason, change)

    def abort(self, caller: Principal, rollout_id: int, reason: str) -> RolloutRecord:
        def change(
            r: RolloutRecord, now: int
        ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
            self._require_active(r)
            why = reason or f"aborted by {caller.key_id}"
            return self._final(r, now, RolloutPhase.ABORTED, "aborted", why, winner=r.stable_version)

        return self._operate(caller, rollout_id, reason, change)

    @staticmethod
    def _require_active(r: RolloutRecord) -> None:
        if not r.phase.active:
            raise FailedPrecondition(f"rollout {r.id} has already finished ({r.phase.name.lower()})")

    def _operate(
        self,
        caller: Principal,
        rollout_id: int,
        reason: str,
        change: Callable[
            [RolloutRecord, int], tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]
        ],
    ) -> RolloutRecord:
        tenant = caller.own_tenant()
        if rollout_id <= 0:
            raise InvalidArgument("the rollout id must be a positive number")
        if len(reason) > 2000:
            raise InvalidArgument("the reason is at most 2000 characters")
        for _ in range(10):
            current = self._store.get_rollout(tenant, rollout_id)
            record, events, traffic = change(current, self._clock())
            try:
                saved = self._store.update_rollout(record, events, traffic)
            except Aborted:
                continue  # the controller moved it on meanwhile: decide again on the new state
            if traffic is not None:
                self._changed(tenant, saved.deployment)
            return saved
        raise Aborted(f"rollout {rollout_id} keeps changing; try again")

    def _final(
        self, r: RolloutRecord, now: int, phase: RolloutPhase, kind: str, why: str, *, winner: int
    ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
        """Ends a rollout with `winner` serving all live traffic and nothing mirrored."""
        started = r.phase != RolloutPhase.SCHEDULED
        weight = 100.0 if winner == r.candidate_version else 0.0
        record = dataclasses.replace(
            r,
            phase=phase,
            candidate_weight=weight,
            reason=why,
            finished_at_us=now,
            updated_at_us=now,
            started_at_us=r.started_at_us or now,
            winner_version=winner
            if r.strategy == Strategy.AB_TEST or kind == "promoted"
            else r.winner_version,
        )
        traffic = TrafficChange(((winner, 100.0),), 0) if started or winner == r.candidate_version else None
        return record, [_event(now, kind, why, r.step, weight, r.analysis)], traffic

    # --- the controller's tick -----------------------------------------------------------------
    def tick(self, rollout: RolloutRecord) -> RolloutRecord | None:
        """Moves one active rollout on; returns the stored record, or None when nothing changed."""
        now = self._clock()
        if rollout.phase == RolloutPhase.SCHEDULED:
            if now < rollout.scheduled_for_us:
                return None
            return self._commit(*self._begin(rollout, now))
        spec = RolloutSpec.from_json(rollout.spec)
        plan = stages(spec)
        stage = plan[min(rollout.step, len(plan) - 1)]
        state = dict(rollout.state)
        numbered = self._store.intervals_after(
            rollout.tenant,
            rollout.deployment,
            int(_num(state, "cursor", 0)),
            MAX_INTERVALS_PER_TICK,
        )
        step_started = int(_num(state, "step_started_us", now))
        if not numbered and rollout.phase == RolloutPhase.PAUSED:
            return None
        events: list[RolloutEventRecord] = []
        analysis = CanaryAnalysis(spec.analysis.config(), _dict(state, "analysis"))
        verdict = analysis.verdict()
        if numbered:
            state["cursor"] = numbered[-1].id
            tick = self._read_tick([n.interval for n in numbered], rollout, state)
            if (
                tick.candidate.requests
                or tick.stable.requests
                or tick.candidate.intervals
                or tick.stable.intervals
            ):
                verdict = analysis.update(tick.candidate, tick.stable)
                state["analysis"] = analysis.state()
            self._account(state, tick, now)
        figures = {**_figures(verdict, state), **self._input_drift(rollout, state)}
        record = dataclasses.replace(rollout, state=state, analysis=figures, updated_at_us=now)
        # 1. a significant regression rolls back at once, paused or not
        if verdict.regression:
            why = _regression_reason(verdict)
            return self._commit(*self._rollback(record, now, "analysis", why, figures))
        # 2. predictive rollback: the candidate's trend breaches an SLO within the horizon
        breach = self._breach(spec, state)
        if breach is not None:
            why, evidence = breach
            return self._commit(*self._rollback(record, now, "forecast", why, {**figures, **evidence}))
        if rollout.phase == RolloutPhase.PAUSED:
            return self._commit(record, events, None) if numbered else None
        # 3. progress
        elapsed_s = (now - step_started) / 1e6
        stage_requests = int(_num(state, "stage_requests", 0))
        if elapsed_s >= stage.min_duration_s and stage_requests >= stage.min_requests:
            if rollout.step + 1 < len(plan):
                nxt = plan[rollout.step + 1]
                capacity = self._capacity(record, spec, stage, nxt, state)
                if capacity is not None and not capacity.fits:
                    if state.get("waiting") != capacity.reason:
                        state["waiting"] = capacity.reason
                        events.append(
                            _event(
                                now,
                                "waiting",
                                capacity.reason,
                                rollout.step,
                                rollout.candidate_weight,
                                capacity.evidence,
                            )
                        )
                    record = dataclasses.replace(record, reason=capacity.reason)
                    return self._commit(record, events, None)
                return self._commit(
                    *self._advance(record, now, nxt, stage_requests, elapsed_s, figures, capacity)
                )
            return self._commit(*self._succeed(record, now, spec, figures))
        deadline_s = stage.min_duration_s + spec.analysis.step_deadline_s
        if elapsed_s >= deadline_s:
            why = (
                f"inconclusive: after {elapsed_s:.0f} s the step has {stage_requests} of the "
                f"{stage.min_requests} candidate requests it needs"
            )
            if spec.analysis.rollback_on_inconclusive:
                return self._commit(*self._rollback(record, now, "inconclusive", why, figures))
            self._raise_alert(
                record, now, "rollout_inconclusive", {**figures, "stage_requests": stage_requests}
            )
            paused = dataclasses.replace(record, phase=RolloutPhase.PAUSED, reason=why)
            return self._commit(
                paused, [_event(now, "paused", why, rollout.step, rollout.candidate_weight, figures)], None
            )
        if numbered:
            if _num(state, "analysis_logged_us", 0) + 60_000_000 <= now:
                state["analysis_logged_us"] = now
                events.append(
                    _event(
                        now,
                        "analysis",
                        "no regression so far",
                        rollout.step,
                        rollout.candidate_weight,
                        figures,
                    )
                )
            return self._commit(record, events, None)
        return None

    def _read_tick(
        self, records: list[IntervalRecord], rollout: RolloutRecord, state: dict[str, object]
    ) -> Tick:
        cand = [r for r in records if r.version == rollout.candidate_version]
        stab = [r for r in records if r.version == rollout.stable_version]
        cw, csum, clabels = _window(cand, self._anomaly_threshold)
        sw, ssum, slabels = _window(stab, self._anomaly_threshold)
        if clabels is not None and slabels is not None:
            # Prediction counts by label, on one label list that only grows (kept in the state).
            stored = state.get("labels")
            known = [str(x) for x in stored] if isinstance(stored, list) else []
            for label in sorted(set(clabels) | set(slabels)):
                if label not in known:
                    known.append(label)
            state["labels"] = known
            cw.predictions = np.asarray([clabels.get(x, 0) for x in known], dtype=np.int64)
            sw.predictions = np.asarray([slabels.get(x, 0) for x in known], dtype=np.int64)
        cpu: dict[str, float] = {}
        for r in records:
            if not r.shadow:
                predicted = r.scores.get("cpu_p90_next")
                measured = r.resources.get("process_cpu_percent", 0.0)
                cpu[r.agent] = float(predicted if predicted is not None else measured)
        live = sum(r.requests for r in records if not r.shadow)
        features = _dict(state, "features") or {}
        for r in cand:
            for f in r.features:
                name = str(f.get("name", ""))
                row = _feature_row(f)
                if name and row is not None:
                    old = features.get(name)
                    features[name] = (
                        row
                        if not isinstance(old, list) or len(old) != len(row)
                        else [a + b for a, b in zip(old, row, strict=True)]
                    )
        if features:
            state["features"] = features
        return Tick(cw, sw, csum, ssum, cpu, live)

    @staticmethod
    def _account(state: dict[str, object], tick: Tick, now: int) -> None:
        state["stage_requests"] = int(_num(state, "stage_requests", 0)) + tick.candidate.requests
        cand = Tally.from_json(_dict(state, "candidate"))
        stab = Tally.from_json(_dict(state, "stable"))
        cand.add(tick.candidate, tick.candidate_sum_ms)
        stab.add(tick.stable, tick.stable_sum_ms)
        state["candidate"] = cand.to_json()
        state["stable"] = stab.to_json()
        if tick.cpu_percent:
            state["cpu_percent"] = tick.cpu_percent
        load = _dict(state, "load") or {}
        state["load"] = {
            "requests": int(load.get("requests", 0)) + tick.live_requests,
            "since_us": int(load.get("since_us", now)),
        }
        if tick.candidate.requests:
            trend = _dict(state, "trend") or {"t": [], "err": [], "p99": [], "n": []}
            hist = tick.candidate.latency
            p99 = math.nan
            if hist.sum():
                h = LatencyHistogram.from_sparse(
                    np.nonzero(hist)[0], hist[hist > 0], sum_ms=tick.candidate_sum_ms
                )
                p99 = h.quantile(0.99)
            for key, value in (
                ("t", now / 1e6),
                ("err", tick.candidate.errors / tick.candidate.requests),
                ("p99", p99),
                ("n", float(tick.candidate.requests)),
            ):
                trend[key] = [*list(trend[key]), value][-TREND_POINTS:]
            state["trend"] = trend

    def _input_drift(self, rollout: RolloutRecord, state: dict[str, object]) -> dict[str, float]:
        """Evidence: drift of the candidate's input features (as served) against its reference profile.

        Reported, not tested: candidate and stable see the same inputs, so input drift says whether
        the candidate serves data like what it was trained on, not which version is better. The
        figures are those of the drift report (`foedus.client_sdk.drift`, default method and
        thresholds): the largest PSI and its feature, and how many features drifted."""
        features = _dict(state, "features")
        if not features:
            return {}
        profile = self._store.get_version(
            rollout.tenant, rollout.model, rollout.candidate_version
        ).reference_profile
        if profile is None:
            return {}
        out: dict[str, float] = {}
        drifted = 0
        for i, ref in enumerate(profile_counts(profile)):
            row = features.get(ref.name)
            numeric = ref.edges is not None
            if not isinstance(row, list) or len(row) != ref.counts.size + (1 if numeric else 2):
                continue
            under, over, other, *bins = row
            served = [under, *bins, over] if numeric else [*bins, other]
            if sum(served) <= 0:
                continue
            verdict = drift.feature_drift(
                ref, drift.FeatureCounts(ref.name, ref.edges, np.asarray(served, dtype=np.int64))
            )
            drifted += verdict.drifted
            if math.isfinite(verdict.psi) and verdict.psi > out.get("input_psi_max", -1.0):
                out.update(input_psi_max=verdict.psi, input_psi_max_feature=float(i))
        if out:
            out["input_drifted_features"] = float(drifted)
        return out

    def _breach(self, spec: RolloutSpec, state: dict[str, object]) -> tuple[str, dict[str, float]] | None:
        a = spec.analysis
        trend = state.get("trend")
        if not isinstance(trend, dict) or not (a.slo_error_rate or a.slo_latency_p99_ms):
            return None
        for key, slo, what in (
            ("err", a.slo_error_rate, "error rate"),
            ("p99", a.slo_latency_p99_ms, "p99 latency (ms)"),
        ):
            if not slo:
                continue
            pairs = [
                (t, v, n)
                for t, v, n in zip(trend["t"], trend[key], trend["n"], strict=True)
                if math.isfinite(v)
            ]
            if not pairs:
                continue
            ts, vs, ns = zip(*pairs, strict=True)
            forecast = breach_probability(
                list(ts), list(vs), slo=slo, horizon_s=a.forecast_horizon_s, weights=list(ns)
            )
            if forecast is not None and forecast.probability >= a.breach_probability:
                why = (
                    f"forecast: the candidate's {what} reaches {forecast.predicted:.4g} within "
                    f"{a.forecast_horizon_s} s, over its SLO {slo:g}, with probability {forecast.probability:.3f}"
                )
                return why, {
                    f"forecast_{key}": forecast.predicted,
                    f"forecast_{key}_probability": forecast.probability,
                    f"slo_{key}": slo,
                }
        return None

    def _capacity(
        self, record: RolloutRecord, spec: RolloutSpec, stage: Stage, nxt: Stage, state: dict[str, object]
    ) -> Capacity | None:
        """Whether the next stage's CPU need at the forecast load fits the agents' cores.

        Cost per request is the mean serving time measured by the agents (CPU-bound inference), or
        the registry's CPU latency profile when the agents have not served the version yet.
        """
        agents = self._store.list_agents(record.tenant, record.deployment)
        cores = sum(_num(a.info, "cpu_count", 0.0) for a in agents)
        if cores <= 0:
            return None
        cost_c = self._cost_ms(record, state, "candidate", record.candidate_version)
        cost_s = self._cost_ms(record, state, "stable", record.stable_version)
        load = state.get("load")
        if cost_c is None or cost_s is None or not isinstance(load, dict):
            return None
        elapsed_s = max(1e-3, (self._clock() - int(load["since_us"])) / 1e6)
        rps_now = int(load["requests"]) / elapsed_s
        rps = rps_now
        forecast_rps = math.nan
        try:
            forecast = self._forecast(record.tenant, record.deployment, days=1.0)
            forecast_rps = forecast.at(self._clock() // 1000 + nxt.min_duration_s * 1000)
            rps = max(rps_now, forecast_rps)
        except (NotEnoughHistory, ValueError):
            pass

        def cores_for(s: Stage) -> float:
            w = s.weight / 100.0
            mirror = {"candidate": cost_c, "stable": cost_s}.get(s.mirror, 0.0)
            return rps * (w * cost_c + (1 - w) * cost_s + mirror) / 1000.0

        cpu = state.get("cpu_percent")
        used = sum(float(v) for v in cpu.values()) / 100.0 if isinstance(cpu, dict) else 0.0
        scaled = used * (rps / rps_now) if rps_now > 0 else used
        projected = scaled + cores_for(nxt) - cores_for(stage)
        budget = cores * spec.max_cpu_utilisation
        evidence = {
            "projected_cores": projected,
            "budget_cores": budget,
            "agent_cores": cores,
            "load_rps": rps,
            "forecast_rps": forecast_rps,
            "cost_ms_candidate": cost_c,
            "cost_ms_stable": cost_s,
        }
        if projected <= budget:
            return Capacity(True, "", evidence)
        reason = (
            f"waiting for capacity: {nxt.name} needs about {projected:.2f} cores at {rps:.1f} req/s "
            f"(candidate {cost_c:.3g} ms, stable {cost_s:.3g} ms per request); the agents have "
            f"{cores:g} cores x {spec.max_cpu_utilisation:g} = {budget:.2f}"
        )
        return Capacity(False, reason, evidence)

    def _cost_ms(
        self, record: RolloutRecord, state: dict[str, object], key: str, version: int
    ) -> float | None:
        tally = Tally.from_json(_dict(state, key))
        if tally.mean_ms() is not None and sum(tally.latency) >= 20:
            return tally.mean_ms()
        v = self._store.get_version(record.tenant, record.model, version)
        return v.latency.p50_ms if v.latency is not None else None

    def _advance(
        self,
        record: RolloutRecord,
        now: int,
        nxt: Stage,
        stage_requests: int,
        elapsed_s: float,
        figures: dict[str, float],
        capacity: Capacity | None,
    ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
        state = dict(record.state)
        state.update(step_started_us=now, stage_requests=0)
        state.pop("waiting", None)
        live, mirror = traffic_for(nxt, record.stable_version, record.candidate_version)
        step = record.step + 1
        message = (
            f"step {record.step + 1} held {elapsed_s:.0f} s and {stage_requests} candidate requests "
            f"without regression; now {nxt.name}"
        )
        evidence = {**figures, **(capacity.evidence if capacity else {})}
        advanced = dataclasses.replace(
            record, step=step, candidate_weight=nxt.weight, reason=nxt.name, state=state
        )
        return (
            advanced,
            [_event(now, "step", message, step, nxt.weight, evidence)],
            TrafficChange(live, mirror),
        )

    def _succeed(
        self, record: RolloutRecord, now: int, spec: RolloutSpec, figures: dict[str, float]
    ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
        if spec.strategy == Strategy.SHADOW:
            why = "shadow test passed: no regression of the mirrored candidate"
            record, events, _ = self._final(
                record, now, RolloutPhase.SUCCEEDED, "succeeded", why, winner=record.stable_version
            )
            return record, events, TrafficChange(((record.stable_version, 100.0),), 0)
        if spec.strategy == Strategy.AB_TEST:
            cand = Tally.from_json(_dict(record.state, "candidate")).metric(spec.ab_metric)
            stab = Tally.from_json(_dict(record.state, "stable")).metric(spec.ab_metric)
            won = math.isfinite(cand) and (not math.isfinite(stab) or cand < stab)
            winner = record.candidate_version if won else record.stable_version
            why = (
                f"version {winner} won the A/B test on {spec.ab_metric}: candidate {cand:.4g}, "
                f"stable {stab:.4g} (lower is better)"
            )
            figures = {**figures, "ab_candidate": cand, "ab_stable": stab}
            record = dataclasses.replace(record, analysis=figures)
            return self._final(record, now, RolloutPhase.SUCCEEDED, "succeeded", why, winner=winner)
        why = f"promoted: every step held without regression ({len(stages(spec))} steps)"
        return self._final(
            record, now, RolloutPhase.SUCCEEDED, "succeeded", why, winner=record.candidate_version
        )

    def _rollback(
        self, record: RolloutRecord, now: int, cause: str, why: str, evidence: dict[str, float]
    ) -> tuple[RolloutRecord, list[RolloutEventRecord], TrafficChange | None]:
        record = dataclasses.replace(record, analysis=evidence)
        done, events, traffic = self._final(
            record, now, RolloutPhase.ROLLED_BACK, "rolled_back", why, winner=record.stable_version
        )
        self._raise_alert(done, now, f"rollout_rolled_back_{cause}", evidence)
        return done, events, traffic

    def _raise_alert(self, record: RolloutRecord, now: int, kind: str, evidence: dict[str, float]) -> None:
        """An alert on the deployment (shown by `foedus alerts`), written once per rollout, kind and
        step; its top contributions are the key figures of the decision (the rollout's events say why)."""
        keys = [k for k in ALERT_FIGURES if k in evidence] or sorted(evidence)[:6]
        alert = AlertRecord(
            agent=CONTROLLER_AGENT,
            alert_id=f"rollout-{record.id}-{kind}-{record.step}",
            time_ms=now // 1000,
            version=record.candidate_version,
            kind=kind,
            score=1.0,
            threshold=1.0,
            detector=f"rollout-controller (rollout {record.id})",
            top=[{"metric": k, "value": float(evidence[k]), "attribution": 0.0} for k in keys],
        )
        try:
            self._store.ingest_telemetry(
                record.tenant, record.deployment, CONTROLLER_AGENT, alert.alert_id, [], [alert], [], now
            )
        except Exception:  # an alert must never stop a rollback
            log.exception("recording the alert of rollout %s failed", record.id)

    def _commit(
        self, record: RolloutRecord, events: list[RolloutEventRecord], traffic: TrafficChange | None
    ) -> RolloutRecord | None:
        try:
            saved = self._store.update_rollout(record, events, traffic)
        except Aborted:
            return None  # changed by a person meanwhile; the next tick sees the new state
        if traffic is not None:
            self._changed(saved.tenant, saved.deployment)
        return saved

    # --- windows -------------------------------------------------------------------------------
    def _forecast(self, tenant: str, deployment: str, *, days: float) -> LoadForecast:
        now_ms = self._clock() // 1000
        end = now_ms // HOUR_MS * HOUR_MS  # whole hours only: the current one is still filling
        history = self._store.request_rate_history(
            tenant, deployment, end - HISTORY_WEEKS * 7 * 24 * HOUR_MS, end, HOUR_MS
        )
        times = [t for t, _, _ in history]
        rps = [n / 3600.0 for _, n, _ in history]
        return forecast_load(times, rps, now_ms=now_ms, days=days)

    def _next_window(self, tenant: str, deployment: str, not_before_ms: int) -> Window:
        try:
            forecast = self._forecast(tenant, deployment, days=7.0)
        except NotEnoughHistory as exc:
            raise FailedPrecondition(f"cannot pick a low-load window for {deployment!r}: {exc}") from exc
        windows = lowest_load_windows(forecast, duration_s=3600.0, count=1, not_before_ms=not_before_ms)
        if not windows:
            raise FailedPrecondition(f"no low-load window for {deployment!r} in the coming week")
        return windows[0]

    def suggest_windows(
        self, caller: Principal, deployment: str, duration_s: int, count: int, days: float
    ) -> tuple[LoadForecast, list[Window]]:
        tenant = caller.own_tenant()
        validation.deployment_name(deployment)
        duration_s = duration_s or 3600
        count = count or 3
        days = days or 7.0
        if not 60 <= duration_s <= 86_400:
            raise InvalidArgument("duration_s must be between 60 and 86400 seconds")
        if not 1 <= count <= 50:
            raise InvalidArgument("count must be between 1 and 50")
        if not math.isfinite(days) or not 1 / 24 <= days <= 28:
            raise InvalidArgument("days must be between 1/24 and 28")
        self._store.get_deployment(tenant, deployment)
        try:
            forecast = self._forecast(tenant, deployment, days=days)
        except NotEnoughHistory as exc:
            raise FailedPrecondition(f"deployment {deployment!r}: {exc}") from exc
        windows = lowest_load_windows(
            forecast, duration_s=float(duration_s), count=count, not_before_ms=self._clock() // 1000
        )
        return forecast, windows

    # --- DORA ----------------------------------------------------------------------------------
    def dora(self, caller: Principal, model: str, days: int) -> tuple[list[dora.DoraFigures], int, int]:
        tenant = caller.own_tenant()
        if model:
            validation.model_name(model)
            self._store.get_model(tenant, model)
        days = days or 30
        if not 1 <= days <= 3650:
            raise InvalidArgument("days must be between 1 and 3650")
        end = self._clock()
        start = end - days * dora.DAY_US
        finished = self._store.finished_rollouts(tenant, model or None, start)
        # When each deployment's later rollouts started: an alert after that belongs to them.
        starts: dict[str, list[int]] = {}
        for d in {r.deployment for r in finished}:
            page = self._store.list_rollouts(tenant, d, False, "", 1000).items
            starts[d] = sorted(r.started_at_us or r.created_at_us for r in page)
        versions: dict[tuple[str, int], VersionRecord | None] = {}
        outcomes = []
        for i, r in enumerate(finished):
            key = (r.model, r.candidate_version)
            if key not in versions:
                try:
                    versions[key] = self._store.get_version(tenant, r.model, r.candidate_version)
                except NotFound:
                    versions[key] = None
            v = versions[key]
            first_alert = None
            later = [o for o in finished[i + 1 :] if o.deployment == r.deployment]
            if r.phase == RolloutPhase.SUCCEEDED:
                until = r.finished_at_us + dora.INCIDENT_WINDOW_US
                until = min([until, *(t for t in starts[r.deployment] if t > r.finished_at_us)])
                alert_ms = self._store.first_alert_ms(
                    tenant, r.deployment, r.candidate_version, r.finished_at_us // 1000, until // 1000
                )
                ongoing = self._store.first_alert_ms(
                    tenant,
                    r.deployment,
                    None,
                    (r.finished_at_us - dora.ONGOING_US) // 1000,
                    r.finished_at_us // 1000,
                )
                if ongoing is not None:
                    alert_ms = None  # an alert episode that began before the change is not its incident
                first_alert = alert_ms * 1000 if alert_ms is not None else None
            outcomes.append(
                dora.Outcome(
                    rollout=r,
                    version_created_us=v.created_at_us if v else r.created_at_us,
                    code_revision_time_us=v.lineage.code_revision_time_us if v else 0,
                    first_alert_us=first_alert,
                    next_finish_us=later[0].finished_at_us if later else None,
                )
            )
        out = []
        models = [model] if model else sorted({o.rollout.model for o in outcomes})
        for name in models:
            out.append(dora.figures(name, [o for o in outcomes if o.rollout.model == name], end - start))
        if not model:
            out.append(dora.figures("", outcomes, end - start))
        return out, start, end

    def _changed(self, tenant: str, deployment: str) -> None:
        if self._on_change is not None:
            self._on_change(tenant, deployment)


def _latest_evaluation(evaluations: Sequence[Evaluation], dataset: str) -> Evaluation | None:
    found = [e for e in evaluations if e.dataset == dataset]
    return found[-1] if found else None


def _figures(verdict: Verdict, state: dict[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in verdict.evidence.items():
        out[key] = float(value)
    for metric, value in verdict.log_e.items():
        out[f"log_e_{metric}"] = float(value)
        out[f"log_threshold_{metric}"] = float(verdict.log_threshold.get(metric, math.inf))
    out["candidate_requests"] = float(verdict.candidate_requests)
    out["stable_requests"] = float(verdict.stable_requests)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _regression_reason(verdict: Verdict) -> str:
    e = verdict.evidence
    metric = verdict.metric
    detail = ""
    if metric == "error_rate":
        detail = (
            f": candidate {100 * e.get('candidate_error_rate', math.nan):.2f}% vs stable "
            f"{100 * e.get('stable_error_rate', math.nan):.2f}%"
        )
    elif metric in ("latency_p50", "latency_p99"):
        q = metric.removeprefix("latency_")
        detail = (
            f": candidate {q} {e.get(f'candidate_{q}_ms', math.nan):.4g} ms vs stable "
            f"{e.get(f'stable_{q}_ms', math.nan):.4g} ms"
        )
    log_e = verdict.log_e.get(metric, math.nan)
    threshold = verdict.log_threshold.get(metric, math.nan)
    return (
        f"{metric.replace('_', ' ')} regression{detail} (e-value e^{log_e:.1f} passed 1/alpha = e^{threshold:.1f}; "
        f"{verdict.candidate_requests} candidate requests)"
    )
