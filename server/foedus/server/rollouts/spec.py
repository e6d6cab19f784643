"""What a rollout asks for, normalised with its defaults, and the stages every strategy runs.

Every strategy is a list of `Stage`s: the candidate's share of live traffic, which version (if any)
receives a mirrored copy of the traffic, and how long and on how many candidate requests the stage
must hold without regression. The controller runs stages in order; what happens after the last one
depends on the strategy (`final_traffic`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from foedus.server.errors import InvalidArgument
from foedus.server.rollouts.analysis import AnalysisConfig
from foedus.server.store.records import Strategy

DEFAULT_STEPS = ((10.0, 60, 100), (25.0, 60, 100), (50.0, 60, 100), (100.0, 60, 100))
AB_METRICS = ("error_rate", "latency_p50", "latency_p99")
MAX_STEPS = 20
MAX_DURATION_S = 7 * 86_400


@dataclass(frozen=True, slots=True)
class CanaryStep:
    weight: float
    min_duration_s: int = 60
    min_requests: int = 100


@dataclass(frozen=True, slots=True)
class AnalysisSettings:
    alpha: float = 0.01
    error_rate_margin_points: float = 0.0
    error_rate_margin_ratio: float = 0.0
    latency_p50_margin: float = 0.15
    latency_p99_margin: float = 0.15
    drift_psi_margin: float = 0.1
    step_deadline_s: int = 600
    rollback_on_inconclusive: bool = False
    slo_error_rate: float = 0.0
    slo_latency_p99_ms: float = 0.0
    forecast_horizon_s: int = 300
    breach_probability: float = 0.95

    def config(self) -> AnalysisConfig:
        return AnalysisConfig(
            alpha=self.alpha,
            error_rate_ratio_margin=self.error_rate_margin_ratio,
            error_rate_points_margin=self.error_rate_margin_points,
            latency_p50_margin=self.latency_p50_margin,
            latency_p99_margin=self.latency_p99_margin,
            drift_psi_margin=self.drift_psi_margin,
        )


@dataclass(frozen=True, slots=True)
class GateSpec:
    onnx_valid: bool = False
    latency_budget_ms: float = 0.0
    quality_dataset: str = ""
    quality_metric: str = ""
    quality_tolerance: float = 0.0
    lower_is_better: bool = False


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    deployment: str
    version: int
    strategy: Strategy = Strategy.CANARY
    steps: tuple[CanaryStep, ...] = ()
    preview_s: int = 60
    post_switch_s: int = 0
    ab_weight: float = 50.0
    duration_s: int = 600
    ab_metric: str = "error_rate"
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    gates: GateSpec = field(default_factory=GateSpec)
    start_at_us: int = 0
    in_window: bool = False
    max_cpu_utilisation: float = 0.8
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["strategy"] = int(self.strategy)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RolloutSpec:
        values = dict(data)
        values["strategy"] = Strategy(int(values["strategy"]))
        values["steps"] = tuple(CanaryStep(**s) for s in values.get("steps", ()))
        values["analysis"] = AnalysisSettings(**values.get("analysis", {}))
        values["gates"] = GateSpec(**values.get("gates", {}))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a rollout: the candidate's share of live traffic (percent) and the mirrored version."""

    weight: float
    mirror: str
    """"candidate", "stable" or "" (no mirror)."""
    min_duration_s: int
    min_requests: int
    name: str


def _finite(value: float, what: str, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be between {low:g} and {high:g}, not {value:g}")
    return float(value)


def _seconds(value: int, what: str, low: int = 1) -> int:
    if not low <= value <= MAX_DURATION_S:
        raise InvalidArgument(f"{what} must be between {low} and {MAX_DURATION_S} seconds, not {value}")
    return int(value)


def validate(spec: RolloutSpec) -> RolloutSpec:
    """Checks a spec whose defaults are filled in; InvalidArgument says what is wrong."""
    if spec.version <= 0:
        raise InvalidArgument("the candidate version must be a positive version number")
    if spec.strategy == Strategy.CANARY:
        if not spec.steps:
            raise InvalidArgument("a canary rollout needs at least one step")
        if len(spec.steps) > MAX_STEPS:
            raise InvalidArgument(f"a canary rollout has at most {MAX_STEPS} steps")
        previous = 0.0
        for i, step in enumerate(spec.steps):
            _finite(step.weight, f"the weight of step {i + 1}", 0.0, 100.0)
            if step.weight <= previous:
                raise InvalidArgument("canary step weights must increase from step to step and be above 0")
            previous = step.weight
            _seconds(step.min_duration_s, f"min_duration_s of step {i + 1}", 0)
            if step.min_requests < 0:
                raise InvalidArgument(f"min_requests of step {i + 1} must not be negative")
        if spec.steps[-1].weight != 100.0:
            raise InvalidArgument("the last canary step must send 100% of the traffic to the candidate")
    elif spec.strategy == Strategy.BLUE_GREEN:
        _seconds(spec.preview_s, "preview_s")
        if spec.post_switch_s:
            _seconds(spec.post_switch_s, "post_switch_s")
    elif spec.strategy == Strategy.AB_TEST:
        _finite(spec.ab_weight, "ab_weight", 0.0, 100.0)
        if not 0 < spec.ab_weight < 100:
            raise InvalidArgument("ab_weight must be above 0 and below 100 percent")
        _seconds(spec.duration_s, "duration_s")
        if spec.ab_metric not in AB_METRICS:
            raise InvalidArgument(f"ab_metric must be one of {', '.join(AB_METRICS)}, not {spec.ab_metric!r}")
    elif spec.strategy == Strategy.SHADOW:
        _seconds(spec.duration_s, "duration_s")
    a = spec.analysis
    try:
        a.config().validate()
    except ValueError as exc:
        raise InvalidArgument(f"analysis: {exc}") from exc
    _seconds(a.step_deadline_s, "step_deadline_s")
    _finite(a.slo_error_rate, "slo_error_rate", 0.0, 1.0)
    _finite(a.slo_latency_p99_ms, "slo_latency_p99_ms", 0.0, 1e9)
    _seconds(a.forecast_horizon_s, "forecast_horizon_s")
    _finite(a.breach_probability, "breach_probability", 0.5, 1.0)
    g = spec.gates
    _finite(g.latency_budget_ms, "gates.latency_budget_ms", 0.0, 1e9)
    _finite(g.quality_tolerance, "gates.quality_tolerance", 0.0, 1e12)
    if bool(g.quality_dataset) != bool(g.quality_metric):
        raise InvalidArgument("a quality gate needs both quality_dataset and quality_metric")
    _finite(spec.max_cpu_utilisation, "max_cpu_utilisation", 0.01, 1.0)
    if len(spec.description) > 2000:
        raise InvalidArgument("the description is at most 2000 characters")
    if spec.start_at_us < 0:
        raise InvalidArgument("start_at must not be before 1970")
    return spec


def stages(spec: RolloutSpec) -> list[Stage]:
    """The stages the strategy runs, in order."""
    if spec.strategy == Strategy.CANARY:
        return [
            Stage(s.weight, "", s.min_duration_s, s.min_requests, f"canary {s.weight:g}%") for s in spec.steps
        ]
    if spec.strategy == Strategy.BLUE_GREEN:
        out = [Stage(0.0, "candidate", spec.preview_s, 1, "preview")]
        if spec.post_switch_s:
            out.append(Stage(100.0, "stable", spec.post_switch_s, 1, "switched, stable mirrored"))
        return out
    if spec.strategy == Strategy.AB_TEST:
        return [
            Stage(spec.ab_weight, "", spec.duration_s, 1, f"A/B {100 - spec.ab_weight:g}/{spec.ab_weight:g}")
        ]
    return [Stage(0.0, "candidate", spec.duration_s, 1, "shadow")]


def traffic_for(stage: Stage, stable: int, candidate: int) -> tuple[tuple[tuple[int, float], ...], int]:
    """(live traffic split, mirrored version) of a stage."""
    if stage.weight >= 100.0:
        live: tuple[tuple[int, float], ...] = ((candidate, 100.0),)
    elif stage.weight <= 0.0:
        live = ((stable, 100.0),)
    else:
        live = ((stable, 100.0 - stage.weight), (candidate, stage.weight))
    mirror = {"candidate": candidate, "stable": stable}.get(stage.mirror, 0)
    return live, mirror
