"""RolloutService, and the conversion of rollouts between protobuf and the service's types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from foedus.server.deployments.feed import ChangeFeed
from foedus.server.errors import InvalidArgument
from foedus.server.interceptors import current_call, current_principal
from foedus.server.rollouts import spec as rspec
from foedus.server.rollouts.dora import DoraFigures
from foedus.server.rollouts.forecast import Window
from foedus.server.rollouts.service import RolloutService
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.server.store.records import RolloutEventRecord, RolloutRecord, Strategy
from foedus.v1 import rollout_pb2, rollout_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def feed_key(rollout_id: int) -> str:
    """The ChangeFeed key a rollout's watchers wait on (deployment names never contain '/')."""
    return f"rollout/{rollout_id}"


def _optional(msg: rollout_pb2.AnalysisSettings, name: str, default: float) -> float:
    return float(getattr(msg, name)) if msg.HasField(name) else default  # type: ignore[arg-type]


def spec_from_proto(msg: rollout_pb2.RolloutSpec) -> rspec.RolloutSpec:
    if msg.strategy == rollout_pb2.ROLLOUT_STRATEGY_UNSPECIFIED:
        strategy = Strategy.CANARY
    elif msg.strategy in Strategy._value2member_map_:
        strategy = Strategy(msg.strategy)
    else:
        raise InvalidArgument(f"unknown rollout strategy {msg.strategy}")
    steps = tuple(
        rspec.CanaryStep(s.weight, s.min_duration_s or 60, s.min_requests or 100) for s in msg.steps
    ) or tuple(rspec.CanaryStep(w, d, n) for w, d, n in rspec.DEFAULT_STEPS)
    a = msg.analysis
    d = rspec.AnalysisSettings()
    analysis = rspec.AnalysisSettings(
        alpha=_optional(a, "alpha", d.alpha),
        error_rate_margin_points=_optional(a, "error_rate_margin_points", d.error_rate_margin_points),
        error_rate_margin_ratio=_optional(a, "error_rate_margin_ratio", d.error_rate_margin_ratio),
        latency_p50_margin=_optional(a, "latency_p50_margin", d.latency_p50_margin),
        latency_p99_margin=_optional(a, "latency_p99_margin", d.latency_p99_margin),
        drift_psi_margin=_optional(a, "drift_psi_margin", d.drift_psi_margin),
        step_deadline_s=int(_optional(a, "step_deadline_s", d.step_deadline_s)),
        rollback_on_inconclusive=a.rollback_on_inconclusive,
        slo_error_rate=a.slo_error_rate,
        slo_latency_p99_ms=a.slo_latency_p99_ms,
        forecast_horizon_s=int(_optional(a, "forecast_horizon_s", d.forecast_horizon_s)),
        breach_probability=_optional(a, "breach_probability", d.breach_probability),
    )
    g = msg.gates
    gates = rspec.GateSpec(
        onnx_valid=g.onnx_valid,
        latency_budget_ms=g.latency_budget_ms,
        quality_dataset=g.quality_dataset,
        quality_metric=g.quality_metric,
        quality_tolerance=g.quality_tolerance,
        lower_is_better=g.lower_is_better,
    )
    start_at = (
        msg.start_at.seconds * 1_000_000 + msg.start_at.nanos // 1000 if msg.HasField("start_at") else 0
    )
    return rspec.RolloutSpec(
        deployment=msg.deployment,
        version=msg.version,
        strategy=strategy,
        steps=steps if strategy == Strategy.CANARY else (),
        preview_s=msg.preview_s or 60,
        post_switch_s=msg.post_switch_s,
        ab_weight=msg.ab_weight or 50.0,
        duration_s=msg.duration_s or 600,
        ab_metric=msg.ab_metric or "error_rate",
        analysis=analysis,
        gates=gates,
        start_at_us=start_at,
        in_window=msg.in_window,
        max_cpu_utilisation=msg.max_cpu_utilisation or 0.8,
        description=msg.description,
    )


def spec_to_proto(spec: rspec.RolloutSpec) -> rollout_pb2.RolloutSpec:
    a = spec.analysis
    g = spec.gates
    return rollout_pb2.RolloutSpec(
        deployment=spec.deployment,
        version=spec.version,
        strategy=int(spec.strategy),  # type: ignore[arg-type]
        steps=[
            rollout_pb2.CanaryStep(
                weight=s.weight, min_duration_s=s.min_duration_s, min_requests=s.min_requests
            )
            for s in spec.steps
        ],
        preview_s=spec.preview_s,
        post_switch_s=spec.post_switch_s,
        ab_weight=spec.ab_weight,
        duration_s=spec.duration_s,
        ab_metric=spec.ab_metric,
        analysis=rollout_pb2.AnalysisSettings(
            alpha=a.alpha,
            error_rate_margin_points=a.error_rate_margin_points,
            error_rate_margin_ratio=a.error_rate_margin_ratio,
            latency_p50_margin=a.latency_p50_margin,
            latency_p99_margin=a.latency_p99_margin,
            drift_psi_margin=a.drift_psi_margin,
            step_deadline_s=a.step_deadline_s,
            rollback_on_inconclusive=a.rollback_on_inconclusive,
            slo_error_rate=a.slo_error_rate,
            slo_latency_p99_ms=a.slo_latency_p99_ms,
            forecast_horizon_s=a.forecast_horizon_s,
            breach_probability=a.breach_probability,
        ),
        gates=rollout_pb2.GateSpec(
            onnx_valid=g.onnx_valid,
            latency_budget_ms=g.latency_budget_ms,
            quality_dataset=g.quality_dataset,
            quality_metric=g.quality_metric,
            quality_tolerance=g.quality_tolerance,
            lower_is_better=g.lower_is_better,
        ),
        start_at=convert.ts(spec.start_at_us) if spec.start_at_us else None,
        in_window=spec.in_window,
        max_cpu_utilisation=spec.max_cpu_utilisation,
        description=spec.description,
    )


def rollout(rec: RolloutRecord) -> rollout_pb2.Rollout:
    spec = rspec.RolloutSpec.from_json(rec.spec)
    return rollout_pb2.Rollout(
        id=rec.id,
        deployment=rec.deployment,
        model=rec.model,
        stable_version=rec.stable_version,
        candidate_version=rec.candidate_version,
        strategy=int(rec.strategy),  # type: ignore[arg-type]
        phase=int(rec.phase),  # type: ignore[arg-type]
        step=rec.step,
        step_count=len(rspec.stages(spec)),
        candidate_weight=rec.candidate_weight,
        reason=rec.reason,
        spec=spec_to_proto(spec),
        scheduled_for=convert.ts(rec.scheduled_for_us) if rec.scheduled_for_us else None,
        started_at=convert.ts(rec.started_at_us) if rec.started_at_us else None,
        finished_at=convert.ts(rec.finished_at_us) if rec.finished_at_us else None,
        analysis=rec.analysis,
        winner_version=rec.winner_version,
        meta=convert.meta(rec.created_at_us, rec.created_by, rec.updated_at_us),
    )


def event(rec: RolloutEventRecord) -> rollout_pb2.RolloutEvent:
    return rollout_pb2.RolloutEvent(
        seq=rec.seq,
        time=convert.ts(rec.time_us),
        kind=rec.kind,
        message=rec.message,
        step=rec.step,
        weight=rec.weight,
        evidence=rec.evidence,
    )


def window(w: Window) -> rollout_pb2.Window:
    return rollout_pb2.Window(
        start=convert.ts(w.start_ms * 1000),
        end=convert.ts(w.end_ms * 1000),
        mean_rps=w.mean_rps,
        relative_to_mean=w.relative_to_mean,
        relative_to_peak=w.relative_to_peak,
    )


def dora_metrics(f: DoraFigures) -> rollout_pb2.DoraMetrics:
    return rollout_pb2.DoraMetrics(
        model=f.model,
        deployments=f.deployments,
        deployment_frequency_per_day=f.deployment_frequency_per_day,
        lead_time_median_h=f.lead_time_median_h,
        code_lead_time_median_h=f.code_lead_time_median_h,
        change_failure_rate=f.change_failure_rate,
        failures=f.failures,
        recovery_time_median_min=f.recovery_time_median_min,
    )


class RolloutServicer(ServicerBase, rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, rollouts: RolloutService, feed: ChangeFeed, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._rollouts = rollouts
        self._feed = feed

    async def StartRollout(
        self, request: rollout_pb2.StartRolloutRequest, context: Ctx
    ) -> rollout_pb2.StartRolloutResponse:
        current_call().resource = f"deployments/{request.spec.deployment}"
        current_call().detail = f"version {request.spec.version}"
        record = await self.run(self._rollouts.start, current_principal(), spec_from_proto(request.spec))
        current_call().resource = f"rollouts/{record.id}"
        return rollout_pb2.StartRolloutResponse(rollout=rollout(record))

    async def GetRollout(
        self, request: rollout_pb2.GetRolloutRequest, context: Ctx
    ) -> rollout_pb2.GetRolloutResponse:
        record = await self.read(self._rollouts.get, current_principal(), request.id, request.deployment)
        return rollout_pb2.GetRolloutResponse(rollout=rollout(record))

    async def ListRollouts(
        self, request: rollout_pb2.ListRolloutsRequest, context: Ctx
    ) -> rollout_pb2.ListRolloutsResponse:
        page = await self.read(
            self._rollouts.list_page,
            current_principal(),
            request.deployment,
            request.active_only,
            request.page.page_token,
            request.page.page_size,
        )
        return rollout_pb2.ListRolloutsResponse(
            rollouts=[rollout(r) for r in page.items], next_page_token=page.next_token
        )

    async def ListRolloutEvents(
        self, request: rollout_pb2.ListRolloutEventsRequest, context: Ctx
    ) -> rollout_pb2.ListRolloutEventsResponse:
        events, record = await self.read(
            self._rollouts.events, current_principal(), request.id, request.after_seq, request.limit
        )
        return rollout_pb2.ListRolloutEventsResponse(
            events=[event(e) for e in events], rollout=rollout(record)
        )

    async def WatchRollout(
        self, request: rollout_pb2.WatchRolloutRequest, context: Ctx
    ) -> AsyncIterator[rollout_pb2.WatchRolloutResponse]:
        principal = current_principal()
        after = request.after_seq
        while True:
            events, record = await self.read(self._rollouts.events, principal, request.id, after, 0)
            current = rollout(record)
            for e in events:
                after = e.seq
                yield rollout_pb2.WatchRolloutResponse(event=event(e), rollout=current)
            if not record.phase.active and not events:
                return
            if not record.phase.active:
                continue  # read once more: the terminal event may have been on the next page
            await self._feed.wait(record.tenant, feed_key(record.id))

    async def _operate(
        self, rollout_id: int, fn: Callable[..., RolloutRecord], *args: Any
    ) -> rollout_pb2.Rollout:
        current_call().resource = f"rollouts/{rollout_id}"
        record = await self.run(fn, current_principal(), rollout_id, *args)
        self._feed.notify(record.tenant, feed_key(record.id))
        return rollout(record)

    async def PauseRollout(
        self, request: rollout_pb2.PauseRolloutRequest, context: Ctx
    ) -> rollout_pb2.PauseRolloutResponse:
        r = await self._operate(request.id, self._rollouts.pause, request.reason)
        return rollout_pb2.PauseRolloutResponse(rollout=r)

    async def ResumeRollout(
        self, request: rollout_pb2.ResumeRolloutRequest, context: Ctx
    ) -> rollout_pb2.ResumeRolloutResponse:
        return rollout_pb2.ResumeRolloutResponse(
            rollout=await self._operate(request.id, self._rollouts.resume)
        )

    async def PromoteRollout(
        self, request: rollout_pb2.PromoteRolloutRequest, context: Ctx
    ) -> rollout_pb2.PromoteRolloutResponse:
        r = await self._operate(request.id, self._rollouts.promote, request.reason)
        return rollout_pb2.PromoteRolloutResponse(rollout=r)

    async def AbortRollout(
        self, request: rollout_pb2.AbortRolloutRequest, context: Ctx
    ) -> rollout_pb2.AbortRolloutResponse:
        r = await self._operate(request.id, self._rollouts.abort, request.reason)
        return rollout_pb2.AbortRolloutResponse(rollout=r)

    async def SuggestWindows(
        self, request: rollout_pb2.SuggestWindowsRequest, context: Ctx
    ) -> rollout_pb2.SuggestWindowsResponse:
        forecast, windows = await self.run(
            self._rollouts.suggest_windows,
            current_principal(),
            request.deployment,
            request.duration_s,
            request.count,
            request.days,
        )
        return rollout_pb2.SuggestWindowsResponse(
            windows=[window(w) for w in windows],
            model=forecast.model,
            model_mae=forecast.model_mae,
            baseline_mae=forecast.baseline_mae,
            history_hours=forecast.history_hours,
        )

    async def GetDoraReport(
        self, request: rollout_pb2.GetDoraReportRequest, context: Ctx
    ) -> rollout_pb2.GetDoraReportResponse:
        figures, start, end = await self.read(
            self._rollouts.dora, current_principal(), request.model, request.days
        )
        return rollout_pb2.GetDoraReportResponse(
            metrics=[dora_metrics(f) for f in figures], start=convert.ts(start), end=convert.ts(end)
        )
