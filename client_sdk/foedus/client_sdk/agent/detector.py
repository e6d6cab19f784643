"""Statistical anomaly detector the agent runs on interval metric vectors before any learned model.

Per metric it keeps an EWMA forecast (the level) and a robust scale of the forecast residuals, and
scores each new interval by robust z-scores:

* residual ``r = x - level`` (the level before this interval is learned);
* scale: an exponentially weighted mean of ``|r|``, each ``|r|`` first clipped at
  ``clip_z * sigma`` so one outlier cannot inflate it; the mean absolute deviation of a normal
  residual is ``sigma * sqrt(2/pi)``, so ``sigma = mean|r| * sqrt(pi/2)``;
* ``z = r / max(sigma, min_sigma)``; the interval's score is ``max |z|`` over the metrics (the
  metric furthest from its forecast decides, and `top` names it);
* the level then moves toward ``x`` by ``level_alpha`` times the residual clipped at
  ``clip_z * sigma``, so an outlier barely drags the forecast while a lasting level shift is
  followed within a few dozen intervals.

A metric only counts toward the score after `warmup` observations of it (until then it only
learns; the first ones use running means so the initial value does not linger). A missing metric
(NaN or inf) leaves its state untouched and gets ``z = NaN``. An interval is an anomaly when its
score reaches `threshold` (default `DEFAULT_THRESHOLD` = 4.0: |z| >= 4 has a chance of about 1 in
16,000 per metric for a normal residual; real metrics are heavier-tailed, and on the NAB machine
temperature series 0.8% of the intervals outside the labelled failure windows are flagged).

`state_dict()` is plain JSON-serialisable data and `AnomalyDetector.from_state` restores it, so an
agent restart keeps what the detector learned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_THRESHOLD = 4.0
DETECTOR_NAME = "ewma-robust-z"
"""How alerts raised by this detector name it (`AgentAlert.detector`)."""
_SIGMA_PER_MEAN_ABS_DEVIATION = math.sqrt(math.pi / 2.0)
_STATE_VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """How the detector forecasts, scales and decides; saved with its state."""

    threshold: float = DEFAULT_THRESHOLD
    """An interval is an anomaly when max |z| over its metrics reaches this."""
    level_alpha: float = 0.1
    """EWMA weight of a new residual in the level (forecast); higher follows faster."""
    scale_beta: float = 0.02
    """EW weight of a new |residual| in the scale; lower remembers longer."""
    clip_z: float = 3.0
    """Residuals are clipped at this many sigmas before they update the level and the scale."""
    warmup: int = 30
    """Observations of a metric before it is scored; until then it only learns."""
    min_sigma: float = 1e-9
    """Floor on sigma so a constant metric does not divide by zero (its z stays 0 while constant)."""
    top_k: int = 3
    """How many metrics `DetectorResult.top` lists."""

    def __post_init__(self) -> None:
        if not 0.0 < self.level_alpha <= 1.0 or not 0.0 < self.scale_beta <= 1.0:
            raise ValueError("level_alpha and scale_beta must be within (0, 1]")
        if self.threshold <= 0.0 or self.clip_z <= 0.0 or self.min_sigma <= 0.0:
            raise ValueError("threshold, clip_z and min_sigma must be positive")
        if self.warmup < 1 or self.top_k < 0:
            raise ValueError("warmup must be at least 1 and top_k not negative")


@dataclass(frozen=True)
class DetectorResult:
    """The detector's verdict on one interval."""

    score: float
    """max |z| over the scored metrics (0.0 when none is scored yet)."""
    z: npt.NDArray[np.float64]
    """Robust z-score per metric; NaN where the metric is missing or still warming up."""
    is_anomaly: bool
    top: list[tuple[str | int, float]] = field(default_factory=list)
    """Up to `top_k` (metric name, or index without names; z) pairs, largest |z| first."""


class AnomalyDetector:
    """Robust EWMA z-score detector over a fixed-length interval metric vector."""

    def __init__(
        self,
        num_metrics: int,
        *,
        metric_names: Sequence[str] | None = None,
        config: DetectorConfig | None = None,
    ) -> None:
        if num_metrics < 1:
            raise ValueError("num_metrics must be at least 1")
        if metric_names is not None and len(metric_names) != num_metrics:
            raise ValueError(f"{len(metric_names)} metric names for {num_metrics} metrics")
        self.num_metrics = num_metrics
        self.metric_names = list(metric_names) if metric_names is not None else None
        self.config = config or DetectorConfig()
        self._level = np.zeros(num_metrics)
        self._mean_abs_residual = np.zeros(num_metrics)
        self._observations = np.zeros(num_metrics, dtype=np.int64)
        self.intervals = 0
        """Intervals seen (each `update` call)."""

    @property
    def sigma(self) -> npt.NDArray[np.float64]:
        """Current robust scale of each metric's residuals (in the metric's unit)."""
        return np.maximum(self._mean_abs_residual * _SIGMA_PER_MEAN_ABS_DEVIATION, self.config.min_sigma)

    @property
    def forecast(self) -> npt.NDArray[np.float64]:
        """Forecast of each metric for the next interval (NaN for a metric never seen)."""
        return np.where(self._observations > 0, self._level, np.nan)

    def update(self, vector: npt.ArrayLike) -> DetectorResult:
        """Scores one interval's metric vector, then learns from it."""
        x = np.asarray(vector, dtype=np.float64).ravel()
        if x.size != self.num_metrics:
            raise ValueError(f"expected {self.num_metrics} metrics, got {x.size}")
        cfg = self.config
        self.intervals += 1
        present = np.isfinite(x)
        first = present & (self._observations == 0)
        learning = present & ~first

        sigma = self.sigma
        residual = np.where(learning, x - self._level, 0.0)
        z = np.full(self.num_metrics, np.nan)
        scored = learning & (self._observations >= cfg.warmup)
        z[scored] = residual[scored] / sigma[scored]

        # Until a metric has been seen 1/weight times, running means replace the EW means, so the
        # scale does not start from 0 and the level does not remember the first value for long.
        n = self._observations.astype(np.float64)
        alpha = np.maximum(cfg.level_alpha, 1.0 / (n + 1.0))
        beta = np.maximum(cfg.scale_beta, 1.0 / np.maximum(n, 1.0))
        # A scale of (near) zero has nothing to clip against yet; clip only once it is informative.
        informative = self._mean_abs_residual > 0.0
        limit = np.where(informative, cfg.clip_z * sigma, np.inf)
        clipped = np.clip(residual, -limit, limit)
        self._mean_abs_residual = np.where(
            learning,
            self._mean_abs_residual + beta * (np.abs(clipped) - self._mean_abs_residual),
            self._mean_abs_residual,
        )
        self._level = np.where(learning, self._level + alpha * clipped, self._level)
        self._level[first] = x[first]
        self._observations += present

        score = float(np.max(np.abs(z[scored]))) if scored.any() else 0.0
        return DetectorResult(
            score=score,
            z=z,
            is_anomaly=score >= cfg.threshold,
            top=self._top(z),
        )

    def _top(self, z: npt.NDArray[np.float64]) -> list[tuple[str | int, float]]:
        finite = np.flatnonzero(np.isfinite(z))
        order = finite[np.argsort(-np.abs(z[finite]), kind="stable")][: self.config.top_k]
        names = self.metric_names
        return [(names[i] if names is not None else int(i), float(z[i])) for i in order]

    def state_dict(self) -> dict[str, Any]:
        """Everything learned plus the configuration, as JSON-serialisable data."""
        return {
            "version": _STATE_VERSION,
            "config": asdict(self.config),
            "metric_names": self.metric_names,
            "num_metrics": self.num_metrics,
            "intervals": self.intervals,
            "level": self._level.tolist(),
            "mean_abs_residual": self._mean_abs_residual.tolist(),
            "observations": self._observations.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AnomalyDetector:
        """Restores a detector saved with `state_dict`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported detector state version {state.get('version')!r}")
        detector = cls(
            int(state["num_metrics"]),
            metric_names=state["metric_names"],
            config=DetectorConfig(**state["config"]),
        )
        detector.intervals = int(state["intervals"])
        detector._level = np.asarray(state["level"], dtype=np.float64)
        detector._mean_abs_residual = np.asarray(state["mean_abs_residual"], dtype=np.float64)
        detector._observations = np.asarray(state["observations"], dtype=np.int64)
        shapes = {detector._level.shape, detector._mean_abs_residual.shape, detector._observations.shape}
        if shapes != {(detector.num_metrics,)}:
            raise ValueError("detector state arrays do not match num_metrics")
        return detector
