"""`client.rollouts`: start, watch and steer progressive rollouts; deployment windows; DORA metrics."""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from foedus.client_sdk.errors import InvalidArgument, from_rpc_error
from foedus.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc

if TYPE_CHECKING:
    from foedus.client_sdk.client import _Rpc

STRATEGIES = {
    "canary": rollout_pb2.ROLLOUT_STRATEGY_CANARY,
    "blue-green": rollout_pb2.ROLLOUT_STRATEGY_BLUE_GREEN,
    "ab": rollout_pb2.ROLLOUT_STRATEGY_AB_TEST,
    "shadow": rollout_pb2.ROLLOUT_STRATEGY_SHADOW,
}
STRATEGY_NAMES = {v: k for k, v in STRATEGIES.items()}
PHASE_NAMES = {
    rollout_pb2.ROLLOUT_PHASE_SCHEDULED: "scheduled",
    rollout_pb2.ROLLOUT_PHASE_PROGRESSING: "progressing",
    rollout_pb2.ROLLOUT_PHASE_PAUSED: "paused",
    rollout_pb2.ROLLOUT_PHASE_SUCCEEDED: "succeeded",
    rollout_pb2.ROLLOUT_PHASE_ROLLED_BACK: "rolled_back",
    rollout_pb2.ROLLOUT_PHASE_ABORTED: "aborted",
}
TERMINAL = frozenset(
    {
        rollout_pb2.ROLLOUT_PHASE_SUCCEEDED,
        rollout_pb2.ROLLOUT_PHASE_ROLLED_BACK,
        rollout_pb2.ROLLOUT_PHASE_ABORTED,
    }
)
ANALYSIS_FIELDS = frozenset(rollout_pb2.AnalysisSettings.DESCRIPTOR.fields_by_name)
GATE_FIELDS = frozenset(rollout_pb2.GateSpec.DESCRIPTOR.fields_by_name)

Step = tuple[float, int, int] | tuple[float, int] | tuple[float] | float


def phase_name(phase: int) -> str:
    return PHASE_NAMES.get(phase, "unknown")  # type: ignore[call-overload, no-any-return]


def strategy_name(strategy: int) -> str:
    return STRATEGY_NAMES.get(strategy, "unknown")  # type: ignore[call-overload, no-any-return]


def canary_steps(steps: Sequence[Step]) -> list[rollout_pb2.CanaryStep]:
    out = []
    for step in steps:
        parts = (step,) if isinstance(step, int | float) else tuple(step)
        weight = float(parts[0])
        duration = int(parts[1]) if len(parts) > 1 else 0
        requests = int(parts[2]) if len(parts) > 2 else 0
        out.append(rollout_pb2.CanaryStep(weight=weight, min_duration_s=duration, min_requests=requests))
    return out


class RolloutsAPI:
    """Progressive rollouts of the caller's tenant's deployments."""

    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._stub = rollout_pb2_grpc.RolloutServiceStub(rpc.channel)

    def start(
        self,
        deployment: str,
        version: int,
        *,
        strategy: str = "canary",
        steps: Sequence[Step] = (),
        preview_s: int = 0,
        post_switch_s: int = 0,
        ab_weight: float = 0.0,
        duration_s: int = 0,
        ab_metric: str = "",
        analysis: Mapping[str, Any] | None = None,
        gates: Mapping[str, Any] | None = None,
        start_at: dt.datetime | None = None,
        in_window: bool = False,
        max_cpu_utilisation: float = 0.0,
        description: str = "",
    ) -> rollout_pb2.Rollout:
        """Starts (or schedules) a rollout of `version` on `deployment` and returns it.

        `strategy`: canary (default), blue-green, ab or shadow. Canary `steps` are weights in
        percent, or (weight, min_duration_s[, min_requests]) tuples; the last must be 100 (default:
        10, 25, 50, 100 with 60 s and 100 requests each). `analysis` sets AnalysisSettings fields
        (alpha, error_rate_margin_points, latency_p99_margin, slo_error_rate, ...); `gates` sets
        GateSpec fields (onnx_valid, latency_budget_ms, quality_dataset, quality_metric, ...).
        `in_window` starts it in the next low-load window forecast from the request history.
        A failing gate raises FailedPrecondition with the reasons.
        """
        if strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        unknown = sorted(set(analysis or {}) - ANALYSIS_FIELDS) + sorted(set(gates or {}) - GATE_FIELDS)
        if unknown:
            raise InvalidArgument(f"unknown analysis or gate setting(s): {', '.join(unknown)}")
        spec = rollout_pb2.RolloutSpec(
            deployment=deployment,
            version=version,
            strategy=STRATEGIES[strategy],
            steps=canary_steps(steps),
            preview_s=preview_s,
            post_switch_s=post_switch_s,
            ab_weight=ab_weight,
            duration_s=duration_s,
            ab_metric=ab_metric,
            analysis=rollout_pb2.AnalysisSettings(**dict(analysis or {})),
            gates=rollout_pb2.GateSpec(**dict(gates or {})),
            in_window=in_window,
            max_cpu_utilisation=max_cpu_utilisation,
            description=description,
        )
        if start_at is not None:
            if start_at.tzinfo is None:
                raise InvalidArgument("start_at needs a time zone (e.g. datetime.now(timezone.utc))")
            spec.start_at.FromDatetime(start_at.astimezone(dt.UTC))
        return self._rpc(self._stub.StartRollout, rollout_pb2.StartRolloutRequest(spec=spec)).rollout

    def get(self, rollout_id: int = 0, *, deployment: str = "") -> rollout_pb2.Rollout:
        """A rollout by id, or the newest rollout of `deployment`."""
        req = rollout_pb2.GetRolloutRequest(id=rollout_id, deployment=deployment)
        return self._rpc(self._stub.GetRollout, req).rollout

    def list(
        self, *, deployment: str = "", active_only: bool = False, limit: int | None = 100
    ) -> builtins.list[rollout_pb2.Rollout]:
        """Rollouts, newest first."""
        out: builtins.list[rollout_pb2.Rollout] = []
        token = ""
        while True:
            req = rollout_pb2.ListRolloutsRequest(
                deployment=deployment, active_only=active_only, page=common_pb2.PageRequest(page_token=token)
            )
            resp = self._rpc(self._stub.ListRollouts, req)
            out.extend(resp.rollouts)
            token = resp.next_page_token
            if not token or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    def events(self, rollout_id: int, *, after_seq: int = 0) -> builtins.list[rollout_pb2.RolloutEvent]:
        """Every event of the rollout after `after_seq`, oldest first."""
        out: builtins.list[rollout_pb2.RolloutEvent] = []
        while True:
            req = rollout_pb2.ListRolloutEventsRequest(id=rollout_id, after_seq=after_seq)
            events = self._rpc(self._stub.ListRolloutEvents, req).events
            if not events:
                return out
            out.extend(events)
            after_seq = events[-1].seq

    def watch(
        self, rollout_id: int, *, after_seq: int = 0, timeout: float | None = None
    ) -> Iterator[rollout_pb2.WatchRolloutResponse]:
        """Yields the rollout's events as they happen, each with the rollout's state; ends after the
        event that finished it. `timeout` bounds the whole watch (None: until it finishes)."""
        req = rollout_pb2.WatchRolloutRequest(id=rollout_id, after_seq=after_seq)
        stream = self._stub.WatchRollout(req, metadata=self._rpc.metadata, timeout=timeout)
        try:
            yield from stream
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]

    def wait(
        self,
        rollout_id: int,
        *,
        timeout: float | None = None,
        on_event: Callable[[rollout_pb2.RolloutEvent], None] | None = None,
    ) -> rollout_pb2.Rollout:
        """Blocks until the rollout finishes and returns it; `on_event` sees each event."""
        last = None
        for message in self.watch(rollout_id, timeout=timeout):
            if on_event is not None:
                on_event(message.event)
            last = message.rollout
        return last if last is not None and last.phase in TERMINAL else self.get(rollout_id)

    def pause(self, rollout_id: int, *, reason: str = "") -> rollout_pb2.Rollout:
        req = rollout_pb2.PauseRolloutRequest(id=rollout_id, reason=reason)
        return self._rpc(self._stub.PauseRollout, req).rollout

    def resume(self, rollout_id: int) -> rollout_pb2.Rollout:
        return self._rpc(self._stub.ResumeRollout, rollout_pb2.ResumeRolloutRequest(id=rollout_id)).rollout

    def promote(self, rollout_id: int, *, reason: str = "") -> rollout_pb2.Rollout:
        """Skips the remaining steps: the candidate takes all traffic now."""
        req = rollout_pb2.PromoteRolloutRequest(id=rollout_id, reason=reason)
        return self._rpc(self._stub.PromoteRollout, req).rollout

    def abort(self, rollout_id: int, *, reason: str = "") -> rollout_pb2.Rollout:
        """Restores the stable version now."""
        req = rollout_pb2.AbortRolloutRequest(id=rollout_id, reason=reason)
        return self._rpc(self._stub.AbortRollout, req).rollout

    def windows(
        self, deployment: str, *, duration_s: int = 3600, count: int = 3, days: float = 7.0
    ) -> rollout_pb2.SuggestWindowsResponse:
        """The lowest-load windows of the coming `days`, forecast from the request history."""
        req = rollout_pb2.SuggestWindowsRequest(
            deployment=deployment, duration_s=duration_s, count=count, days=days
        )
        return self._rpc(self._stub.SuggestWindows, req)

    def dora(self, *, model: str = "", days: int = 30) -> rollout_pb2.GetDoraReportResponse:
        """DORA metrics per model over the last `days` (with the tenant's total as model "")."""
        return self._rpc(self._stub.GetDoraReport, rollout_pb2.GetDoraReportRequest(model=model, days=days))
