"""Anytime-valid canary analysis: sequential tests that a candidate version is no worse than the stable one.

A rollout controller calls `CanaryAnalysis.update` once per tick with what the agents reported for
the candidate and for the stable version since the previous tick (`VersionWindow`). Every metric
keeps an e-process: a nonnegative supermartingale under its null hypothesis "the candidate is no
worse than the stable version, up to the configured margin". A regression is declared as soon as a
metric's e-value reaches ``1 / alpha_metric``. By Ville's inequality the probability that this ever
happens to a candidate for which every null hypothesis holds is at most ``alpha_metric``, however
many ticks are looked at and whenever the rollout is stopped; the metrics share ``alpha`` by a
weighted Bonferroni split, so the overall false-rollback rate is at most `AnalysisConfig.alpha`.

The engine: a conditional mixture sequential test of two event rates
-------------------------------------------------------------------
In one tick the candidate has ``n_c`` trials with ``X_c`` events and the stable version ``n_s``
trials with ``X_s`` events; the null hypothesis is ``rate_c <= (1 + rho) * rate_s``. Given the
tick's total ``E = X_c + X_s``, at the null boundary ``X_c`` follows Binomial(E, theta0) with
``theta0 = n_c (1 + rho) / (n_c (1 + rho) + n_s)`` (the trial counts are ancillary, so theta0 may
change from tick to tick). An alternative multiplies the odds of theta0 by ``psi > 1``; its
likelihood ratio for the tick is ``psi**X_c / (1 - theta0 + psi * theta0)**E``. For every psi of a
fixed log-spaced grid the analysis keeps the running product of these ratios (as a sum of logs), and
the e-value is their prior-weighted mean (log-sum-exp). Why this is a test supermartingale:

* for ``rho = 0`` and binomial trials with equal rates, ``X_c`` given ``E`` is hypergeometric, which
  is dominated in convex order by Binomial(E, theta0) (Hoeffding, 1963), and each likelihood ratio is
  convex in ``X_c``, so its conditional mean is at most 1; a candidate rate below the stable one
  makes ``X_c`` stochastically smaller and, the ratio being increasing in ``X_c``, the mean smaller
  still;
* for ``rho > 0`` the argument is exact for Poisson event counts and holds approximately for rare
  binomial events (the odds ratio of two error rates exceeds their ratio by a factor
  ``(1 - p_s) / (1 - p_c)``, 1.0002 for 1% against 1.02%);
* a mixture of test supermartingales with fixed weights is one, and ticks without events or without
  trials on one side change nothing.

The prior (`AnalysisConfig.prior_center`, `AnalysisConfig.prior_log_sd`) is a normal on log psi,
centred on an odds ratio of 2.5 with a standard deviation of 1, restricted to the grid (32 points
from 1.1 to 30): 70% of its mass lies on odds ratios between 1.5 and 7 (an error rate going from 1%
to 1.5% ... 7%), the kind of regression that should stop a rollout within a minute or two; 12% lies
below 1.5 and 10% above 10. Much larger effects are caught within a tick or two whatever their prior
weight, and small ones take long whatever the prior; mass spent there would only raise the price,
in evidence, of detecting the effects that matter. In simulations like bench/canary.py's (1% -> 3%
at 20 candidate and 180 stable requests/s, 5 s ticks), the share of regressions caught within 30 s
is 57% with this prior and 52% with a flat one on the same grid.

The metrics
-----------
``error_rate``
    Events are errors, trials requests, ``rho = error_rate_ratio_margin``: H0 ``p_c <= (1 + rho) p_s``.
    With ``error_rate_points_margin = d > 0`` the null becomes ``p_c <= (1 + rho) p_s + d`` and the
    test is one-sample: the candidate's errors are tested against the predictable null rate
    ``p0_t = (1 + rho) U_t + d``, where ``U_t`` is the upper end of an anytime-valid confidence
    sequence for the stable error rate (a beta-binomial mixture, running minimum) computed from data
    before the tick. The error metric's alpha is split between the confidence sequence
    (`AnalysisConfig.stable_bound_share`) and the test: a union bound.
``latency_p99``, ``latency_p50``
    Events are "slow" requests. The threshold is the stable version's q-quantile bucket estimated from
    its histogram accumulated before the tick (predictable). The stable's events are its requests at
    or above that bucket's lower edge ``T``; the candidate's are its requests at or above the first
    bucket edge ``>= (1 + margin) T``. H0: ``P(L_c >= (1 + margin) t) <= P(L_s >= t)`` at the
    threshold, i.e. the candidate's tail is no heavier than the stable's stretched by the margin;
    then ``rho = 0``. Everything works on the shared bucket edges, without interpolation; rounding
    the candidate's edge up keeps the test conservative: with 8 buckets per doubling the margin
    actually tested is ``2**(ceil(8 log2(1 + margin)) / 8) - 1`` (29.7% for a 20% margin, reported
    in the evidence). No latency test runs before the stable version has a histogram.
``anomaly``
    Events are intervals the agents flagged anomalous, trials intervals, ``rho = 0``.
``prediction_drift``
    Only on ticks where both versions report prediction counts on the same bins. H0: both versions
    draw predictions from the same distribution. Given the tick's bin totals, the candidate's counts
    are multivariate hypergeometric, which the analysis factorises bin by bin: given the earlier
    bins, bin b's candidate count is hypergeometric with the candidate's remaining share ``theta_b``
    of the predictions left. Each bin keeps a two-sided mixture (psi and 1/psi, half the prior weight
    each) of the binomial likelihood ratios against ``theta_b``; the product over bins of these
    mixtures is a test supermartingale (each factor is log-convex, hence convex, in its count). The
    overall traffic share in every bin would not carry that guarantee: given the totals the bins are
    negatively dependent, and a bet on more candidate predictions in one bin and fewer in another
    can have a conditional mean above 1 (one prediction in each of two bins, one of them the
    candidate's: odds ratios K and 1/K pay 2 (K^2 + 1) / (K + 1)^2 on average, above 1 for K != 1).
    A drift is declared only when the e-value crosses AND the cumulative population stability index
    between the candidate's and the stable's predictions is at least `AnalysisConfig.drift_psi_margin`
    (an extra condition can only lower the false-rollback rate).

A caveat that comes with any e-process: under a healthy candidate the evidence drifts below 1, so a
regression that starts late in a long rollout needs a little more data than one present from the
start. Canary analyses last minutes, where this is small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Final

import numpy as np
import numpy.typing as npt

from foedus.client_sdk import drift
from foedus.client_sdk.agent.histogram import (
    BUCKET_EDGES_MS,
    BUCKET_GROWTH,
    BUCKETS_PER_DOUBLING,
    MIN_LATENCY_MS,
    NUM_BUCKETS,
    OVERFLOW_BUCKET,
    UNDERFLOW_BUCKET,
)
from foedus.client_sdk.drift import population_stability_index

__all__ = [
    "METRICS",
    "AnalysisConfig",
    "CanaryAnalysis",
    "Verdict",
    "VersionWindow",
    "jensen_shannon_distance",
    "population_stability_index",
]

ERROR_RATE: Final = "error_rate"
LATENCY_P99: Final = "latency_p99"
LATENCY_P50: Final = "latency_p50"
ANOMALY: Final = "anomaly"
PREDICTION_DRIFT: Final = "prediction_drift"
METRICS: Final[tuple[str, ...]] = (ERROR_RATE, LATENCY_P99, LATENCY_P50, ANOMALY, PREDICTION_DRIFT)
"""The metrics, in the order used to name one when several cross at the same tick."""

_LATENCY_QUANTILES: Final = {LATENCY_P99: 0.99, LATENCY_P50: 0.5}
_STATE_FORMAT: Final = 1

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Hypotheses, error budget and mixture of a canary analysis; `validate` checks the values."""

    alpha: float = 0.01
    """Overall false-rollback rate: the probability that a candidate no worse than the stable version
    (within the margins) is ever declared a regression, however often the analysis is looked at."""
    error_rate_ratio_margin: float = 0.0
    """m in H0 ``p_c <= (1 + m) p_s``: the relative error-rate increase tolerated."""
    error_rate_points_margin: float = 0.0
    """d in H0 ``p_c <= (1 + m) p_s + d``, as a fraction (0.005 = 0.5 points); > 0 switches the error
    test to the one-sample form against an upper confidence bound of the stable error rate."""
    latency_p50_margin: float = 0.15
    """Relative slowdown tolerated at the median (0.15: 15% slower), rounded up to the latency buckets'
    edges (a factor of 2^(k/8)): 0.15 is tested as +18.9%, 0.2 as +29.7%."""
    latency_p99_margin: float = 0.15
    """Relative slowdown tolerated at the 99th percentile."""
    drift_psi_margin: float = 0.1
    """A prediction drift counts only with a PSI (candidate vs stable) at least this large."""
    error_rate_weight: float = 0.5
    """Share of alpha given to the error-rate test (weights are normalised; 0 turns a test off)."""
    latency_p99_weight: float = 0.25
    """Share of alpha for the p99 latency test."""
    latency_p50_weight: float = 0.125
    """Share of alpha for the median latency test."""
    anomaly_weight: float = 0.0625
    """Share of alpha for the anomalous-interval test."""
    drift_weight: float = 0.0625
    """Share of alpha for the prediction-drift test."""
    odds_ratio_min: float = 1.1
    """Smallest odds ratio of the alternatives' grid."""
    odds_ratio_max: float = 30.0
    """Largest odds ratio of the alternatives' grid."""
    odds_ratio_grid_size: int = 32
    """Number of log-spaced alternatives between odds_ratio_min and odds_ratio_max."""
    prior_center: float = 2.5
    """Odds ratio at which the prior (normal on log psi) is centred."""
    prior_log_sd: float = 1.0
    """Standard deviation of the prior on log psi."""
    stable_bound_share: float = 0.25
    """With a points margin: the share of the error test's alpha spent on the confidence sequence of
    the stable error rate (the rest goes to the test itself)."""

    def validate(self) -> None:
        """Raises ValueError naming the first setting that cannot be used."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be within (0, 1), got {self.alpha}")
        for name in (
            "error_rate_ratio_margin",
            "error_rate_points_margin",
            "latency_p50_margin",
            "latency_p99_margin",
            "drift_psi_margin",
        ):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.error_rate_points_margin >= 1.0:
            raise ValueError(
                f"error_rate_points_margin is a fraction (0.005 = 0.5 points) below 1, got {self.error_rate_points_margin}"
            )
        weights = self.metric_weights()
        if any(w < 0.0 for w in weights.values()):
            raise ValueError(f"metric weights must not be negative, got {weights}")
        if sum(weights.values()) <= 0.0:
            raise ValueError("at least one metric weight must be positive")
        if not 1.0 < self.odds_ratio_min < self.odds_ratio_max:
            raise ValueError(
                f"need 1 < odds_ratio_min < odds_ratio_max, got odds_ratio_min={self.odds_ratio_min}, odds_ratio_max={self.odds_ratio_max}"
            )
        if not isinstance(self.odds_ratio_grid_size, int) or not 2 <= self.odds_ratio_grid_size <= 256:
            raise ValueError(
                f"odds_ratio_grid_size must be an integer within [2, 256], got {self.odds_ratio_grid_size}"
            )
        if self.prior_center <= 1.0:
            raise ValueError(f"prior_center must be above 1, got {self.prior_center}")
        if self.prior_log_sd <= 0.0:
            raise ValueError(f"prior_log_sd must be positive, got {self.prior_log_sd}")
        if not 0.0 < self.stable_bound_share < 1.0:
            raise ValueError(f"stable_bound_share must be within (0, 1), got {self.stable_bound_share}")

    def metric_weights(self) -> dict[str, float]:
        """The raw (not normalised) alpha weights by metric."""
        return {
            ERROR_RATE: self.error_rate_weight,
            LATENCY_P99: self.latency_p99_weight,
            LATENCY_P50: self.latency_p50_weight,
            ANOMALY: self.anomaly_weight,
            PREDICTION_DRIFT: self.drift_weight,
        }

    def metric_alphas(self) -> dict[str, float]:
        """The false-rollback budget of each enabled metric; they add up to alpha."""
        weights = self.metric_weights()
        total = sum(weights.values())
        return {m: self.alpha * w / total for m, w in weights.items() if w > 0.0}

    def effective_latency_margin(self, metric: str) -> float:
        """The margin the bucket layout lets the latency test check: the configured one rounded up."""
        margin = self.latency_p99_margin if metric == LATENCY_P99 else self.latency_p50_margin
        return float(2.0 ** (_bucket_shift(margin) / BUCKETS_PER_DOUBLING) - 1.0)


def _bucket_shift(margin: float) -> int:
    """Buckets between an edge T and the first edge at or above (1 + margin) T (edges grow by 2^(1/8))."""
    shift = 0
    while 2.0 ** (shift / BUCKETS_PER_DOUBLING) < 1.0 + margin:
        shift += 1
    return shift


def _zero_latency() -> IntArray:
    return np.zeros(NUM_BUCKETS, dtype=np.int64)


@dataclass(slots=True)
class VersionWindow:
    """What the agents reported for one version during one tick, summed over agents and intervals."""

    requests: int = 0
    """Requests served."""
    errors: int = 0
    """Requests that failed (at most `requests`)."""
    latency: IntArray = field(default_factory=_zero_latency)
    """Latency counts on the shared buckets (`foedus.client_sdk.agent.histogram`), NUM_BUCKETS long."""
    predictions: IntArray | None = None
    """Prediction counts on the bins of the reference profile (the same bins for both versions)."""
    intervals: int = 0
    """Agent intervals reported."""
    anomalous_intervals: int = 0
    """Intervals whose anomaly score was above the threshold (at most `intervals`)."""
    cpu_s_per_request: float | None = None
    """Process CPU seconds per request, when known; evidence only."""

    def validated(self, side: str) -> tuple[IntArray, IntArray | None]:
        """Raises ValueError if the window is inconsistent (`side` names it in the message); returns its
        latency and prediction counts as int64 arrays."""
        for name in ("requests", "errors", "intervals", "anomalous_intervals"):
            if getattr(self, name) < 0:
                raise ValueError(f"{side}: {name} must not be negative, got {getattr(self, name)}")
        if self.errors > self.requests:
            raise ValueError(f"{side}: {self.errors} errors for {self.requests} requests")
        if self.anomalous_intervals > self.intervals:
            raise ValueError(f"{side}: {self.anomalous_intervals} anomalous intervals of {self.intervals}")
        cpu = self.cpu_s_per_request
        if cpu is not None and not (math.isfinite(cpu) and cpu >= 0.0):
            raise ValueError(f"{side}: cpu_s_per_request must be a finite, non-negative number, got {cpu}")
        latency = np.asarray(self.latency, dtype=np.int64)
        if latency.shape != (NUM_BUCKETS,):
            raise ValueError(
                f"{side}: latency must hold {NUM_BUCKETS} bucket counts, got shape {latency.shape}"
            )
        if latency.min() < 0:
            raise ValueError(f"{side}: latency counts must not be negative")
        predictions = None
        if self.predictions is not None:
            predictions = np.asarray(self.predictions, dtype=np.int64).ravel()
            if predictions.size == 0 or predictions.min() < 0:
                raise ValueError(f"{side}: predictions must be non-empty, non-negative counts")
        return latency, predictions


@dataclass(frozen=True, slots=True)
class Verdict:
    """The analysis after a tick: whether a regression was declared, and the evidence so far."""

    regression: bool
    """A metric crossed its boundary at this tick or before (sticky)."""
    metric: str
    """The metric that crossed first ("" if none): one of `METRICS`."""
    log_e: dict[str, float]
    """Current log e-value of each enabled metric."""
    log_threshold: dict[str, float]
    """log(1 / alpha_metric) of each enabled metric: the boundary of log_e."""
    evidence: dict[str, float]
    """Cumulative observed figures: requests, error rates, p50/p99 (ms), PSI, ..."""
    candidate_requests: int
    """Candidate requests analysed so far."""
    stable_requests: int
    """Stable requests analysed so far."""


@dataclass(slots=True)
class _Totals:
    """Cumulative counts of one version."""

    requests: int = 0
    errors: int = 0
    latency: IntArray = field(default_factory=_zero_latency)
    predictions: IntArray | None = None
    intervals: int = 0
    anomalous_intervals: int = 0
    cpu_seconds: float = 0.0
    cpu_requests: int = 0

    def to_json(self) -> dict[str, object]:
        nonzero = np.flatnonzero(self.latency)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency": [nonzero.tolist(), self.latency[nonzero].tolist()],
            "predictions": None if self.predictions is None else self.predictions.tolist(),
            "intervals": self.intervals,
            "anomalous_intervals": self.anomalous_intervals,
            "cpu_seconds": self.cpu_seconds,
            "cpu_requests": self.cpu_requests,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> _Totals:
        indices, counts = _as_list(data["latency"])
        latency = _zero_latency()
        latency[np.asarray(indices, dtype=np.int64)] = np.asarray(counts, dtype=np.int64)
        predictions = data.get("predictions")
        return cls(
            requests=_as_int(data["requests"]),
            errors=_as_int(data["errors"]),
            latency=latency,
            predictions=None if predictions is None else np.asarray(predictions, dtype=np.int64),
            intervals=_as_int(data["intervals"]),
            anomalous_intervals=_as_int(data["anomalous_intervals"]),
            cpu_seconds=_as_float(data["cpu_seconds"]),
            cpu_requests=_as_int(data["cpu_requests"]),
        )


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"analysis state: expected an integer, got {value!r}")
    return value


def _as_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"analysis state: expected a number, got {value!r}")
    return float(value)


def _as_list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"analysis state: expected a list, got {type(value).__name__}")
    return value


def _logsumexp(values: FloatArray) -> float:
    top = float(values.max())
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.exp(values - top).sum()))


def _binomial_upper_bound(successes: int, trials: int, alpha: float) -> float:
    """Upper end of the beta-binomial mixture confidence sequence (Beta(1/2, 1/2) prior) for a rate.

    The set {p : M_n(p) < 1/alpha}, M_n(p) = B(S + 1/2, n - S + 1/2) / B(1/2, 1/2) / (p^S (1-p)^(n-S)),
    contains the true rate at every n simultaneously with probability at least 1 - alpha.
    """
    if trials <= 0:
        return 1.0
    failures = trials - successes
    log_beta_prior = 2.0 * math.lgamma(0.5) - math.lgamma(1.0)
    log_beta_post = math.lgamma(successes + 0.5) + math.lgamma(failures + 0.5) - math.lgamma(trials + 1.0)
    # p leaves the set once -log likelihood(p) reaches `target`; it grows with p above S/n
    target = math.log(1.0 / alpha) - log_beta_post + log_beta_prior
    low, high = successes / trials, 1.0
    if failures == 0:
        return 1.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        nll = -(successes * math.log(mid) if successes else 0.0) - failures * math.log1p(-mid)
        if nll < target:
            low = mid
        else:
            high = mid
    return high


def jensen_shannon_distance(p_counts: npt.ArrayLike, q_counts: npt.ArrayLike) -> float:
    """Jensen-Shannon distance, base 2 (within [0, 1]), of two count arrays; NaN if either is empty."""
    return drift.jensen_shannon_distance(p_counts, q_counts, base=2.0)


def _quantiles_ms(latency: IntArray, qs: tuple[float, ...]) -> list[float]:
    """`LatencyHistogram.quantile` of the counts at each q, without building histograms (hot path)."""
    cumulative = np.cumsum(latency)
    n = int(cumulative[-1])
    if n == 0:
        return [math.nan] * len(qs)
    out = []
    for q in qs:
        rank = q * (n - 1)
        bucket = int(np.searchsorted(cumulative, rank, side="right"))
        in_bucket = int(latency[bucket])
        fraction = min(1.0, (rank - (int(cumulative[bucket]) - in_bucket) + 0.5) / in_bucket)
        if bucket == UNDERFLOW_BUCKET:
            out.append(fraction * MIN_LATENCY_MS)
        elif bucket == OVERFLOW_BUCKET:
            out.append(float(BUCKET_EDGES_MS[-1]))
        else:
            out.append(float(BUCKET_EDGES_MS[bucket - 1] * BUCKET_GROWTH**fraction))
    return out


def _lower_edge_ms(bucket: int) -> float:
    """Lower edge (ms) of a bucket: 0 for the underflow bucket, inf past the overflow bucket."""
    if bucket <= 0:
        return 0.0
    return float(BUCKET_EDGES_MS[bucket - 1]) if bucket < NUM_BUCKETS else math.inf


class CanaryAnalysis:
    """Sequential, anytime-valid comparison of a candidate version with the stable one.

    Null hypotheses, one per metric (see the module docstring for the tests):

    * error_rate: ``p_c <= (1 + error_rate_ratio_margin) p_s + error_rate_points_margin``;
    * latency_p99 / latency_p50: the candidate's tail beyond the stable's q-quantile is no heavier
      than the stable's stretched by ``1 + margin`` (the margin rounded up to the bucket layout);
    * anomaly: the candidate's intervals are flagged anomalous no more often than the stable's;
    * prediction_drift: both versions predict from the same distribution (declared only with
      ``PSI >= drift_psi_margin`` as well).

    Guarantee: if all the null hypotheses hold, the probability that `update` ever returns a
    regression is at most ``config.alpha`` (each metric at most its share of it), whenever and
    however often the verdict is read. A declared regression stays declared.

    The analysis is cheap (a few vectorised operations on the odds-ratio grid per metric and tick) and its
    `state` is a JSON-serialisable dict from which ``CanaryAnalysis(config, state)`` continues exactly.
    """

    __slots__ = (
        "_candidate",
        "_config",
        "_declared",
        "_drift_log_lr",
        "_log_lr",
        "_log_psi",
        "_log_psi2",
        "_log_thresholds",
        "_log_weights",
        "_log_weights2",
        "_psi2_minus_1",
        "_psi_minus_1",
        "_shifts",
        "_stable",
        "_stable_bound_alpha",
        "_stable_upper_bound",
        "_ticks",
        "_verdict",
    )

    def __init__(self, config: AnalysisConfig, state: Mapping[str, object] | None = None) -> None:
        config.validate()
        self._config = config
        psi = np.geomspace(config.odds_ratio_min, config.odds_ratio_max, config.odds_ratio_grid_size)
        self._log_psi: FloatArray = np.log(psi)
        self._psi_minus_1: FloatArray = psi - 1.0
        log_prior = -0.5 * ((self._log_psi - math.log(config.prior_center)) / config.prior_log_sd) ** 2
        self._log_weights: FloatArray = log_prior - _logsumexp(log_prior)
        self._log_psi2: FloatArray = np.concatenate([self._log_psi, -self._log_psi])
        self._log_weights2: FloatArray = np.concatenate([self._log_weights, self._log_weights]) - math.log(
            2.0
        )
        self._psi2_minus_1: FloatArray = np.exp(self._log_psi2) - 1.0
        alphas = config.metric_alphas()
        self._stable_bound_alpha = 0.0
        if ERROR_RATE in alphas and config.error_rate_points_margin > 0.0:
            self._stable_bound_alpha = alphas[ERROR_RATE] * config.stable_bound_share
            alphas[ERROR_RATE] -= self._stable_bound_alpha
        self._log_thresholds = {m: math.log(1.0 / a) for m, a in alphas.items()}
        self._shifts = {
            LATENCY_P99: _bucket_shift(config.latency_p99_margin),
            LATENCY_P50: _bucket_shift(config.latency_p50_margin),
        }
        self._log_lr: dict[str, FloatArray] = {
            m: np.zeros(config.odds_ratio_grid_size) for m in self._log_thresholds if m != PREDICTION_DRIFT
        }
        self._drift_log_lr: FloatArray | None = None
        self._candidate = _Totals()
        self._stable = _Totals()
        self._stable_upper_bound = 1.0
        self._ticks = 0
        self._declared = ""
        if state is not None:
            self._restore(state)
        self._verdict = self._make_verdict()

    @property
    def config(self) -> AnalysisConfig:
        return self._config

    @property
    def ticks(self) -> int:
        """Ticks analysed so far."""
        return self._ticks

    def verdict(self) -> Verdict:
        """The verdict after the last tick, without new data."""
        return self._verdict

    def update(self, candidate: VersionWindow, stable: VersionWindow) -> Verdict:
        """Adds one tick of both versions' reports and returns the verdict."""
        c_latency, c_pred = candidate.validated("candidate")
        s_latency, s_pred = stable.validated("stable")
        if c_pred is not None and s_pred is not None and c_pred.size != s_pred.size:
            raise ValueError(
                f"candidate and stable predictions are on different bins ({c_pred.size} and {s_pred.size})"
            )
        for side, pred, totals in (("candidate", c_pred, self._candidate), ("stable", s_pred, self._stable)):
            if pred is not None and totals.predictions is not None and pred.size != totals.predictions.size:
                raise ValueError(
                    f"{side}: {pred.size} prediction bins, earlier ticks had {totals.predictions.size}"
                )

        log_lr = self._log_lr
        if ERROR_RATE in log_lr:
            if self._config.error_rate_points_margin > 0.0:
                self._update_error_points(candidate)
            else:
                self._rate_step(
                    log_lr[ERROR_RATE],
                    candidate.requests,
                    candidate.errors,
                    stable.requests,
                    stable.errors,
                    1.0 + self._config.error_rate_ratio_margin,
                )
        if LATENCY_P99 in log_lr or LATENCY_P50 in log_lr:
            self._update_latency(c_latency, s_latency)
        if ANOMALY in log_lr:
            self._rate_step(
                log_lr[ANOMALY],
                candidate.intervals,
                candidate.anomalous_intervals,
                stable.intervals,
                stable.anomalous_intervals,
                1.0,
            )
        if PREDICTION_DRIFT in self._log_thresholds and c_pred is not None and s_pred is not None:
            self._update_drift(c_pred, s_pred)

        self._accumulate(self._candidate, candidate, c_latency, c_pred)
        self._accumulate(self._stable, stable, s_latency, s_pred)
        if self._config.error_rate_points_margin > 0.0 and ERROR_RATE in log_lr:
            bound = _binomial_upper_bound(
                self._stable.errors, self._stable.requests, self._stable_bound_alpha
            )
            self._stable_upper_bound = min(self._stable_upper_bound, bound)
        self._ticks += 1
        self._verdict = self._make_verdict()
        return self._verdict

    def state(self) -> dict[str, object]:
        """Everything needed to continue: plain JSON types only (``json.dumps`` works)."""
        return {
            "format": _STATE_FORMAT,
            "grid": [
                self._config.odds_ratio_min,
                self._config.odds_ratio_max,
                self._config.odds_ratio_grid_size,
            ],
            "ticks": self._ticks,
            "declared": self._declared,
            "log_lr": {m: v.tolist() for m, v in self._log_lr.items()},
            "drift_log_lr": None if self._drift_log_lr is None else self._drift_log_lr.tolist(),
            "stable_upper_bound": self._stable_upper_bound,
            "candidate": self._candidate.to_json(),
            "stable": self._stable.to_json(),
        }

    # -- the tests ------------------------------------------------------------------------------

    def _rate_step(self, log_lr: FloatArray, n_c: int, x_c: int, n_s: int, x_s: int, ratio: float) -> None:
        """One tick of the two-rate conditional mixture test; H0 rate_c <= ratio * rate_s."""
        events = x_c + x_s
        if events == 0 or n_c <= 0 or n_s <= 0:
            return
        theta0 = n_c * ratio / (n_c * ratio + n_s)
        log_lr += x_c * self._log_psi - events * np.log1p(theta0 * self._psi_minus_1)

    def _update_error_points(self, candidate: VersionWindow) -> None:
        """One-sample test of the candidate's errors against (1 + m) U + d, U from earlier ticks."""
        config = self._config
        p0 = (
            1.0 + config.error_rate_ratio_margin
        ) * self._stable_upper_bound + config.error_rate_points_margin
        if candidate.requests <= 0 or p0 >= 1.0:
            return
        self._log_lr[ERROR_RATE] += candidate.errors * self._log_psi - candidate.requests * np.log1p(
            p0 * self._psi_minus_1
        )

    def _update_latency(self, c_latency: IntArray, s_latency: IntArray) -> None:
        history = self._stable.latency
        history_cum = np.cumsum(history)
        total = int(history_cum[-1])
        n_c = int(c_latency.sum())
        n_s = int(s_latency.sum())
        if total == 0 or n_c == 0 or n_s == 0:
            return
        c_tail = np.cumsum(c_latency[::-1])[::-1]
        s_tail = np.cumsum(s_latency[::-1])[::-1]
        for metric, q in _LATENCY_QUANTILES.items():
            log_lr = self._log_lr.get(metric)
            if log_lr is None:
                continue
            bucket = int(np.searchsorted(history_cum, q * (total - 1), side="right"))
            if bucket == 0:  # the threshold is 0 ms: every request is "slow", nothing to compare
                continue
            c_bucket = bucket + self._shifts[metric]
            x_s = int(s_tail[bucket])
            x_c = int(c_tail[c_bucket]) if c_bucket < NUM_BUCKETS else 0
            self._rate_step(log_lr, n_c, x_c, n_s, x_s, 1.0)

    def _update_drift(self, c_pred: IntArray, s_pred: IntArray) -> None:
        if self._drift_log_lr is None:
            self._drift_log_lr = np.zeros((c_pred.size, self._log_psi2.size))
        bins = c_pred + s_pred
        n_total = int(bins.sum())
        n_c = int(c_pred.sum())
        if n_total == 0 or n_c == 0 or n_c == n_total:
            return
        # the candidate's share of what is left before each bin: the chain of conditional
        # hypergeometric laws that makes the product over bins valid
        c_left = n_c - (np.cumsum(c_pred) - c_pred)
        all_left = n_total - (np.cumsum(bins) - bins)
        theta = np.divide(c_left, all_left, out=np.zeros(bins.size), where=all_left > 0)
        self._drift_log_lr += c_pred[:, None] * self._log_psi2[None, :] - bins[:, None] * np.log1p(
            theta[:, None] * self._psi2_minus_1[None, :]
        )

    @staticmethod
    def _accumulate(totals: _Totals, window: VersionWindow, latency: IntArray, pred: IntArray | None) -> None:
        # int() and float(): callers may pass numpy scalars, the state must stay plain JSON
        requests = int(window.requests)
        totals.requests += requests
        totals.errors += int(window.errors)
        totals.latency = totals.latency + latency
        totals.intervals += int(window.intervals)
        totals.anomalous_intervals += int(window.anomalous_intervals)
        if pred is not None:
            totals.predictions = pred.copy() if totals.predictions is None else totals.predictions + pred
        if window.cpu_s_per_request is not None and requests > 0:
            totals.cpu_seconds += float(window.cpu_s_per_request) * requests
            totals.cpu_requests += requests

    # -- the verdict ----------------------------------------------------------------------------

    def _make_verdict(self) -> Verdict:
        log_e: dict[str, float] = {}
        for metric in self._log_thresholds:
            if metric == PREDICTION_DRIFT:
                if self._drift_log_lr is None:
                    log_e[metric] = 0.0
                else:
                    lr = self._drift_log_lr + self._log_weights2[None, :]
                    top = lr.max(axis=1)
                    log_e[metric] = float(np.sum(top + np.log(np.exp(lr - top[:, None]).sum(axis=1))))
            else:
                log_e[metric] = _logsumexp(self._log_lr[metric] + self._log_weights)
        evidence = self._evidence()
        if not self._declared:
            for metric in METRICS:
                if metric not in log_e or log_e[metric] < self._log_thresholds[metric]:
                    continue
                if (
                    metric == PREDICTION_DRIFT
                    and not evidence.get("psi", 0.0) >= self._config.drift_psi_margin
                ):
                    continue
                self._declared = metric
                break
        return Verdict(
            regression=bool(self._declared),
            metric=self._declared,
            log_e=log_e,
            log_threshold=dict(self._log_thresholds),
            evidence=evidence,
            candidate_requests=self._candidate.requests,
            stable_requests=self._stable.requests,
        )

    def _evidence(self) -> dict[str, float]:
        c, s = self._candidate, self._stable
        out: dict[str, float] = {
            "ticks": float(self._ticks),
            "candidate_requests": float(c.requests),
            "stable_requests": float(s.requests),
            "candidate_errors": float(c.errors),
            "stable_errors": float(s.errors),
        }
        for prefix, totals in (("candidate", c), ("stable", s)):
            if totals.requests > 0:
                out[f"{prefix}_error_rate"] = totals.errors / totals.requests
            if totals.latency.any():
                out[f"{prefix}_p50_ms"], out[f"{prefix}_p99_ms"] = _quantiles_ms(totals.latency, (0.5, 0.99))
            if totals.intervals > 0:
                out[f"{prefix}_intervals"] = float(totals.intervals)
                out[f"{prefix}_anomalous_fraction"] = totals.anomalous_intervals / totals.intervals
            if totals.cpu_requests > 0:
                out[f"{prefix}_cpu_s_per_request"] = totals.cpu_seconds / totals.cpu_requests
        if self._config.error_rate_points_margin > 0.0:
            out["stable_error_rate_upper_bound"] = self._stable_upper_bound
        history_cum = np.cumsum(s.latency)
        total = int(history_cum[-1])
        for metric, q in _LATENCY_QUANTILES.items():
            if metric not in self._log_thresholds:
                continue
            out[f"{metric}_effective_margin"] = self._config.effective_latency_margin(metric)
            if total > 0:
                bucket = int(np.searchsorted(history_cum, q * (total - 1), side="right"))
                out[f"{metric}_threshold_ms"] = _lower_edge_ms(bucket)
                c_edge = _lower_edge_ms(bucket + self._shifts[metric])
                if math.isfinite(c_edge):
                    out[f"{metric}_candidate_threshold_ms"] = c_edge
        if (
            c.predictions is not None
            and s.predictions is not None
            and c.predictions.size == s.predictions.size
        ):
            psi = population_stability_index(s.predictions, c.predictions)
            js = jensen_shannon_distance(s.predictions, c.predictions)
            if math.isfinite(psi):
                out["psi"] = psi
                out["js_distance"] = js
        return out

    # -- state ----------------------------------------------------------------------------------

    def _restore(self, state: Mapping[str, object]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"analysis state: unknown format {state.get('format')!r}")
        config = self._config
        grid = _as_list(state["grid"])
        if grid != [config.odds_ratio_min, config.odds_ratio_max, config.odds_ratio_grid_size]:
            raise ValueError(
                f"analysis state was made with another odds-ratio grid ({grid}); use the same config"
            )
        log_lr = state["log_lr"]
        if not isinstance(log_lr, Mapping) or set(log_lr) != set(self._log_lr):
            raise ValueError("analysis state was made with other enabled metrics; use the same config")
        for metric in self._log_lr:
            values = np.asarray(_as_list(log_lr[metric]), dtype=np.float64)
            if values.shape != (config.odds_ratio_grid_size,):
                raise ValueError(f"analysis state: {metric} has {values.size} grid values")
            self._log_lr[metric] = values
        drift = state.get("drift_log_lr")
        if drift is not None:
            self._drift_log_lr = np.asarray(_as_list(drift), dtype=np.float64).reshape(
                -1, self._log_psi2.size
            )
        self._ticks = _as_int(state["ticks"])
        declared = state["declared"]
        if not isinstance(declared, str) or (declared and declared not in METRICS):
            raise ValueError(f"analysis state: unknown declared metric {declared!r}")
        self._declared = declared
        self._stable_upper_bound = _as_float(state["stable_upper_bound"])
        for key in ("candidate", "stable"):
            data = state[key]
            if not isinstance(data, Mapping):
                raise ValueError(f"analysis state: {key} must be an object")
            totals = _Totals.from_json(data)
            if key == "candidate":
                self._candidate = totals
            else:
                self._stable = totals
