"""Resource model: quantiles of next-window CPU and memory, and requests/limits recommendations.

What it predicts
    At every sample ``t`` of a workload's usage history, the model predicts the *peak* usage of
    the next window of ``horizon`` samples, ``peak_t = max(u[t+1], ..., u[t+horizon])``, for CPU and
    memory, as two quantiles each: p50 and p90. With 5-min samples the default horizon of 12 is
    the next hour. The peak, not the next sample, is what a recommendation must cover: a request
    or limit set now stays in force until the next update, and a workload is starved (CPU) or
    killed (memory) by its highest usage in that time, not by its average.

Units
    CPU and memory are percentages of what the workload is provisioned (CPU usage as % of its
    provisioned CPU capacity, memory usage as % of its provisioned memory), so one model serves
    workloads of every size (the model is pooled: one global model over all workloads' rows).
    Load proxies (disk and network throughput, request rates) may be in any non-negative unit;
    the model takes ``log1p`` of them. Standardised features are clipped to +-20 so inputs far
    outside the training range cannot drive the network to arbitrary outputs.

Features (`FeatureSpec`, `build_features`), per sample ``t``, from data up to ``t`` only
    per resource: the last ``lags`` values; mean and max of the last ``horizon`` samples; mean,
    max and standard deviation of the last day (``day`` samples); the peak of the same window one
    day earlier (``max u[t+1-day .. t+horizon-day]``, daily seasonality); per load proxy: the
    current value and the mean of the last ``horizon`` samples. The exported ONNX graph takes
    these raw values and does the ``log1p`` of the load columns and the per-feature
    standardisation (training mean and standard deviation) itself.

Method
    An MLP (ReLU) maps the standardised features to, per resource, a median ``m`` and a gap
    ``g``: ``p50 = s * (loc + scale * m)`` and ``p90 = p50 + s * scale * softplus(g)``, so
    p90 >= p50 always (``loc``/``scale``: mean and standard deviation of the training targets
    divided by ``s``; ``s`` is 1 for an absolute network, see *relative* below). It is trained with
    the pinball (quantile) loss ``L_q(y, p) = max(q (y - p), (q - 1)(y - p))`` averaged over both
    quantiles and resources (each resource's loss divided by its ``scale``), with Adam, mini
    batches, early stopping on the validation loss, all seeded. A *relative* network is
    scale-equivariant: features and quantiles of a resource are divided / multiplied by the
    resource's mean over the last day, which joins the inputs as a log (`_QuantileNet`); an
    absolute one works on percentages throughout. Hyperparameters (lags, width, learning rate,
    relative or absolute) are picked by validation pinball loss over a small random search
    (`DEFAULT_SEARCH_SPACE`, scikit-learn `ParameterSampler`) on a subsample of the training
    rows; the winner is then trained on all training rows. The validation rows are the last
    ``validation_fraction`` of every series (chronological, no shuffling across time).

Recommendations (`ResourceModel.recommend`)
    ``request = p50`` (a typical hour's peak: what the scheduler should reserve) and
    ``limit = p90 * (1 + margin)``, a safety margin per resource. The margin is calibrated on the
    validation rows (`ResourceModel.calibrate`) as the smallest multiplier whose share of
    under-provisioned windows (peak above the limit) is at most a target rate (default 10%, the
    p90's nominal rate; the Bitbrains evaluation targets the VPA baseline's validation rate).
    Online, the margin is then recalibrated from the windows that have closed (`adaptive_limits`,
    adaptive conformal inference), so a drifting workload keeps its target rate.

VPA-style baseline (`DecayingHistogram`, `vpa_recommendations`)
    The Kubernetes Vertical Pod Autoscaler's recommender keeps, per resource, a histogram of
    usage samples on exponentially growing buckets (first bucket ``first_bucket`` wide, each next
    one ``ratio`` times wider), where a sample's weight halves every ``half_life_s`` of age
    (24 h). Its target is the histogram's P90 plus a 15% safety margin; here it is updated at
    every sample. The percentile is the *upper edge* of the bucket where the cumulative weight
    first reaches ``p * total`` (VPA's convention; the last, open bucket returns its lower edge).
    Simplifications against VPA: every sample weighs 1 (VPA weighs CPU samples by the request)
    and memory uses the same per-sample histogram as CPU (VPA feeds memory with per-day peaks and
    bumps it after OOM kills); no minimum recommendation.

Serving
    `ResourceModel.export_onnx` writes the network with raw feature rows in: its
    ``foedus.features`` metadata names the engineered features above, which are not the agent's
    interval metrics, so agents refuse it; it serves callers that compute `build_features`
    themselves. `ResourceModel.export_agent_onnx` writes the graph agents run (see
    `foedus.client_sdk.agent.ops_models`): its one input ``metrics`` float32 ``[N, W, F]`` is a
    window of the last ``W`` interval metric vectors, oldest first, of the ``F`` agent metrics
    (`foedus.client_sdk.agent.history.HISTORY_METRICS`) that the model's inputs are mapped to
    (``columns``: each resource and each load proxy to one agent metric), named in agent order
    in ``foedus.features``. ``W = max(day, lags)`` (``foedus.window``, at most
    `MAX_AGENT_WINDOW`). The graph computes the features of the window's newest row exactly as
    `build_features` does (in float64, then float32 as `ResourceModel.predict_features` does),
    then runs the network; its outputs are `OUTPUT_NAMES` ``[N]``, each a score of the interval
    on the agent. The window must be full and finite (agents pad it with its first row until
    ``W`` intervals exist); the graph has no NaN handling.

Training on an agent's history (`train_from_matrix`)
    Given a matrix whose columns are agent metrics (``process_cpu_percent`` and
    ``process_memory_bytes``, and ``requests`` as the load proxy when present), the model predicts
    in the agent's units (memory in bytes) with ``horizon = AGENT_HORIZON = 6`` intervals and
    ``day = min(AGENT_DAY = 360, max(horizon + 1, rows // 4))``: at the agent's default 10-s
    interval, the peak of the next minute from the last hour, whose mean, peak and spread stand in
    for the day's (a real day, 8,640 intervals, is far past the longest window an agent feeds,
    1,024). A quarter of the rows keeps two "days" plus training and validation rows in short
    histories. It writes the agent-servable export. Other matrices (Bitbrains-style CPU and memory
    usage columns, the other columns but timestamps and CPU or memory capacities as load proxies)
    keep 5-minute defaults and the raw-feature export.

Evaluation figures (`recommendation_metrics`)
    For recommendations ``r_t`` and actual next-window peaks ``y_t`` (same units):
    slack = mean over windows of ``max(r_t - y_t, 0)`` (capacity reserved but not used, zero when
    under-provisioned), under-provision rate = share of windows with ``y_t > r_t``.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from foedus.client_sdk.agent.history import HISTORY_METRICS

FloatArray = npt.NDArray[np.float64]
Progress = Callable[[str], None]

RESOURCES: tuple[str, ...] = ("cpu", "memory")
"""The predicted resources, in output order."""
QUANTILES: tuple[float, ...] = (0.5, 0.9)
"""The predicted quantiles of the next window's peak, in output order per resource."""
OUTPUT_NAMES: tuple[str, ...] = tuple(f"{r}_p{round(q * 100)}_next" for r in RESOURCES for q in QUANTILES)
"""ONNX output names: cpu_p50_next, cpu_p90_next, memory_p50_next, memory_p90_next."""
INPUT_NAME = "features"
AGENT_INPUT_NAME = "metrics"
"""Input of the agent-servable export: float32 [N, W, F] windows of agent interval metrics."""
MAX_AGENT_WINDOW = 1024
"""Longest window of intervals an agent feeds an ops model (`foedus.client_sdk.agent.ops_models.MAX_WINDOW`)."""
AGENT_HORIZON = 6
"""`train_from_matrix` on agent metrics: intervals in the predicted window (a minute at 10 s)."""
AGENT_DAY = 360
"""`train_from_matrix` on agent metrics: longest "day" window, intervals (an hour at 10 s)."""
DEFAULT_LOAD_NAMES: tuple[str, ...] = ("disk_read_kbps", "disk_write_kbps", "net_rx_kbps", "net_tx_kbps")
DEFAULT_SEARCH_SPACE: dict[str, list[Any]] = {
    "lags": [3, 12],
    "hidden": [32, 64],
    "lr": [1e-3, 3e-3],
    "relative": [True, False],
}
"""Hyperparameter grid of `ResourceModel.fit`: 16 combinations, of which `DEFAULT_SEARCH_ITER` are tried."""
DEFAULT_SEARCH_ITER = 10
DEFAULT_GAMMA = 0.005
"""Step of the online recalibration of the limits (`adaptive_limits`), in log-margin per window."""
VPA_HALF_LIFE_S = 86_400.0
VPA_PERCENTILE = 0.9
VPA_SAFETY_MARGIN = 0.15
_FORMAT_VERSION = 1
_MIN_STD = 1e-2
"""Floor on a feature's training standard deviation (a near-constant feature is not blown up)."""
_MIN_TARGET_SCALE = 0.1
"""Floor on a target's training standard deviation, percentage points."""
_MIN_LEVEL = 0.1
"""Floor on a resource's level (its mean over the last day, percentage points) in the relative net."""
_Z_CLIP = 20.0
"""Standardised features are clipped to +-20: far outside training, the net does not extrapolate."""


# --------------------------------------------------------------------------------------------
# Data and features
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageSeries:
    """One workload's usage history at a fixed sample period; NaN marks a missing sample."""

    cpu: FloatArray
    """CPU usage, % of the provisioned CPU capacity."""
    memory: FloatArray
    """Memory usage, % of the provisioned memory."""
    load: FloatArray
    """(T, L) non-negative load proxies (e.g. disk and network throughput)."""
    times_s: FloatArray
    """Sample times, seconds (used by the VPA baseline's decay)."""
    name: str = ""

    def __post_init__(self) -> None:
        n = len(self.cpu)
        if self.memory.shape != (n,) or self.times_s.shape != (n,) or self.cpu.ndim != 1:
            raise ValueError("cpu, memory and times_s must be 1-D arrays of one length")
        if self.load.ndim != 2 or self.load.shape[0] != n:
            raise ValueError("load must be a (T, L) array with one row per sample")

    def __len__(self) -> int:
        return len(self.cpu)

    def resource(self, name: str) -> FloatArray:
        """The usage series of `name` (one of `RESOURCES`)."""
        if name == "cpu":
            return self.cpu
        if name == "memory":
            return self.memory
        raise KeyError(name)

    def slice(self, start: int, end: int) -> UsageSeries:
        """Samples ``[start, end)``."""
        return UsageSeries(
            self.cpu[start:end],
            self.memory[start:end],
            self.load[start:end],
            self.times_s[start:end],
            self.name,
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Which features `build_features` computes (see the module docstring)."""

    lags: int = 6
    horizon: int = 12
    """Samples in the predicted window (12 five-minute samples: the next hour)."""
    day: int = 288
    """Samples in a day (288 five-minute samples)."""
    load_names: tuple[str, ...] = DEFAULT_LOAD_NAMES

    def __post_init__(self) -> None:
        if self.lags < 1 or self.horizon < 1 or self.day <= self.horizon:
            raise ValueError("need lags >= 1, horizon >= 1 and day > horizon")

    @property
    def warmup(self) -> int:
        """Index of the first sample with a full feature row (a day of history)."""
        return self.day - 1

    @property
    def window(self) -> int:
        """Samples a feature row is computed from: the last ``max(day, lags)`` up to and including t."""
        return max(self.day, self.lags)

    def inputs(self) -> tuple[str, ...]:
        """The series the features come from, in order: the resources, then the load proxies."""
        return (*RESOURCES, *self.load_names)

    def names(self) -> list[str]:
        """Feature names, in column order."""
        out: list[str] = []
        for r in RESOURCES:
            out += [f"{r}_lag{k}" for k in range(self.lags)]
            out += [f"{r}_mean_window", f"{r}_max_window", f"{r}_mean_day", f"{r}_max_day", f"{r}_std_day"]
            out.append(f"{r}_peak_day_ago")
        for name in self.load_names:
            out += [name, f"{name}_mean_window"]
        return out

    def log_columns(self) -> list[bool]:
        """Which columns the model takes ``log1p`` of (the load proxies)."""
        n_resource = len(RESOURCES) * (self.lags + 6)
        return [False] * n_resource + [True] * (2 * len(self.load_names))


def _trailing(x: FloatArray, window: int, reducer: Callable[..., FloatArray]) -> FloatArray:
    """``reducer`` over ``x[t-window+1 .. t]`` at every t (NaN before a full window; NaN propagates)."""
    out = np.full(x.shape, np.nan)
    if len(x) >= window:
        out[window - 1 :] = reducer(sliding_window_view(x, window, axis=0), axis=-1)
    return out


def _shift(x: FloatArray, k: int) -> FloatArray:
    """``out[t] = x[t - k]`` (k may be negative: a look-ahead), NaN where out of range."""
    out = np.full(x.shape, np.nan)
    if k >= 0:
        if k < len(x):
            out[k:] = x[: len(x) - k]
    elif -k < len(x):
        out[:k] = x[-k:]
    return out


def build_features(series: UsageSeries, spec: FeatureSpec) -> FloatArray:
    """(T, D) raw feature rows, row t from samples up to t; NaN where history is insufficient."""
    if series.load.shape[1] != len(spec.load_names):
        raise ValueError(f"series has {series.load.shape[1]} load columns, spec {len(spec.load_names)}")
    cols: list[FloatArray] = []
    h, d = spec.horizon, spec.day
    for r in RESOURCES:
        x = np.asarray(series.resource(r), dtype=np.float64)
        cols += [_shift(x, k) for k in range(spec.lags)]
        max_window = _trailing(x, h, np.max)
        cols += [_trailing(x, h, np.mean), max_window]
        cols += [_trailing(x, d, np.mean), _trailing(x, d, np.max), _trailing(x, d, np.std)]
        # peak of [t+1-d, t+h-d]: the trailing max at t+h-d
        cols.append(_shift(max_window, d - h))
    for j in range(len(spec.load_names)):
        x = np.asarray(series.load[:, j], dtype=np.float64)
        cols += [x, _trailing(x, h, np.mean)]
    return np.stack(cols, axis=1)


def next_window_peaks(series: UsageSeries, horizon: int) -> FloatArray:
    """(T, 2) targets: per resource, ``max(u[t+1 .. t+horizon])`` (NaN near the end or if missing)."""
    return np.stack(
        [_shift(_trailing(np.asarray(series.resource(r)), horizon, np.max), -horizon) for r in RESOURCES],
        axis=1,
    )


def recommendation_metrics(recommended: npt.ArrayLike, actual: npt.ArrayLike) -> tuple[float, float]:
    """(slack, under-provision rate) over the windows where both values are finite.

    slack = mean of ``max(recommended - actual, 0)``; under-provision rate = share of windows
    with ``actual > recommended``. NaN for both when no window is finite.
    """
    r = np.asarray(recommended, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(y)
    if not ok.any():
        return math.nan, math.nan
    r, y = r[ok], y[ok]
    return float(np.maximum(r - y, 0.0).mean()), float((y > r).mean())


def calibrate_margin(
    recommended: npt.ArrayLike,
    actual: npt.ArrayLike,
    target_under_rate: float,
    *,
    floor: float = 1e-2,
    bounds: tuple[float, float] = (-0.5, 10.0),
) -> float:
    """The smallest margin m with ``mean(actual > recommended * (1 + m)) <= target_under_rate``.

    ``actual > r (1 + m)`` iff ``actual / r > 1 + m``, so ``1 + m`` is an order statistic of the
    ratios ``actual / r``: with them sorted, the ``ceil(n (1 - target))``-th smallest. Recommended
    values are floored at `floor` (0.01 percentage points) first; the margin is clipped to `bounds`.
    """
    if not 0.0 <= target_under_rate < 1.0:
        raise ValueError("target_under_rate must be within [0, 1)")
    r = np.maximum(np.asarray(recommended, dtype=np.float64), floor)
    y = np.asarray(actual, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(y)
    ratio = np.sort(y[ok] / r[ok])
    if len(ratio) == 0:
        return 0.0
    k = min(max(math.ceil(len(ratio) * (1.0 - target_under_rate)) - 1, 0), len(ratio) - 1)
    return float(np.clip(ratio[k] - 1.0, *bounds))


def adaptive_limits(
    recommended: npt.ArrayLike,
    peaks: npt.ArrayLike,
    *,
    margin: float,
    target_under_rate: float,
    gamma: float = DEFAULT_GAMMA,
    horizon: int = 12,
    start: int = 0,
    floor: float = 1e-2,
) -> FloatArray:
    """Limits ``max(r_t, floor) * exp(theta_t)`` with ``theta`` recalibrated online from closed windows.

    Adaptive conformal inference (Gibbs and Candes, NeurIPS 2021): ``theta`` starts at
    ``log(1 + margin)``; when sample ``t`` arrives, the window that began at ``k = t - horizon``
    has just closed, its peak ``peaks[k]`` is known, and ``theta += gamma * (miss_k - target)``
    with ``miss_k = peaks[k] > limit[k]``. Each miss raises the limits by a factor
    ``exp(gamma (1 - target))``, each covered window lowers them by ``exp(-gamma target)``, so the
    long-run share of misses tends to `target_under_rate` whatever the drift. Only ``peaks[k]``
    with ``k <= t - horizon`` are used at ``t`` (nothing from the future). Before `start` the
    limits are static (``theta`` from `margin`); NaN recommendations stay NaN.
    """
    r = np.asarray(recommended, dtype=np.float64)
    y = np.asarray(peaks, dtype=np.float64)
    if r.shape != y.shape or r.ndim != 1:
        raise ValueError("recommended and peaks must be 1-D arrays of one length")
    base = np.maximum(r, floor)
    theta = math.log1p(margin)
    limits = base * (1.0 + margin)
    for t in range(max(start, 0), len(r)):
        k = t - horizon
        if k >= start and math.isfinite(limits[k]) and math.isfinite(y[k]):
            theta += gamma * (float(y[k] > limits[k]) - target_under_rate)
        limits[t] = base[t] * math.exp(theta)
    return limits


# --------------------------------------------------------------------------------------------
# VPA-style baseline
# --------------------------------------------------------------------------------------------


def vpa_bucket_edges(
    first_bucket: float = 0.01, ratio: float = 1.05, max_value: float = 1000.0
) -> FloatArray:
    """Lower edges of VPA-style exponential buckets: bucket i starts at ``first * (ratio^i - 1) / (ratio - 1)``.

    Bucket 0 is ``[0, first)``, each next bucket ``ratio`` times wider than the one before; the
    last bucket (the first one starting at or above `max_value`) is open-ended.
    """
    if first_bucket <= 0.0 or ratio <= 1.0 or max_value <= first_bucket:
        raise ValueError("need first_bucket > 0, ratio > 1 and max_value > first_bucket")
    n = math.ceil(math.log(max_value * (ratio - 1.0) / first_bucket + 1.0) / math.log(ratio)) + 1
    i = np.arange(n, dtype=np.float64)
    return first_bucket * (ratio**i - 1.0) / (ratio - 1.0)


class DecayingHistogram:
    """VPA-style histogram of samples whose weight halves every `half_life_s` of age.

    A sample added at time ``t`` with weight ``w`` counts ``w * 2 ** ((t - t_ref) / half_life)``
    against a reference time; only ratios of weights matter, so this is the same as decaying all
    older samples, without touching them. The reference moves forward (rescaling the stored
    weights) before the factors grow large.
    """

    def __init__(
        self,
        *,
        first_bucket: float = 0.01,
        ratio: float = 1.05,
        max_value: float = 1000.0,
        half_life_s: float = VPA_HALF_LIFE_S,
    ) -> None:
        if half_life_s <= 0.0:
            raise ValueError("half_life_s must be positive")
        self.edges = vpa_bucket_edges(first_bucket, ratio, max_value)
        self.half_life_s = half_life_s
        self.weights = np.zeros(len(self.edges))
        self.reference_s: float | None = None

    def bucket(self, value: float) -> int:
        """Index of the bucket holding `value` (negative values go to bucket 0)."""
        return max(int(np.searchsorted(self.edges, value, side="right")) - 1, 0)

    def add(self, value: float, time_s: float, weight: float = 1.0) -> None:
        """Adds one sample; NaN values are ignored."""
        if not math.isfinite(value):
            return
        if self.reference_s is None:
            self.reference_s = time_s
        exponent = (time_s - self.reference_s) / self.half_life_s
        if exponent > 64.0:
            self.weights *= 2.0 ** (-exponent)
            self.reference_s, exponent = time_s, 0.0
        self.weights[self.bucket(value)] += weight * 2.0**exponent

    @property
    def total_weight(self) -> float:
        return float(self.weights.sum())

    def percentile(self, p: float) -> float:
        """Upper edge of the first bucket whose cumulative weight reaches ``p * total`` (0 if empty)."""
        total = self.total_weight
        if total <= 0.0:
            return 0.0
        index = int(np.argmax(np.cumsum(self.weights) >= p * total * (1.0 - 1e-12)))
        return float(self.edges[index + 1] if index + 1 < len(self.edges) else self.edges[index])


def vpa_recommendations(
    values: npt.ArrayLike,
    times_s: npt.ArrayLike,
    *,
    half_life_s: float = VPA_HALF_LIFE_S,
    percentile: float = VPA_PERCENTILE,
    margin: float = VPA_SAFETY_MARGIN,
    first_bucket: float = 0.01,
    ratio: float = 1.05,
    max_value: float = 1000.0,
    block: int = 512,
) -> FloatArray:
    """VPA-style target at every sample: ``(1 + margin) * P(percentile)`` of the decaying histogram.

    The target at ``t`` includes sample ``t`` (the recommender updates on each sample); NaN
    samples are skipped (the previous target stands), and the target is NaN before the first
    sample. Same math as feeding `DecayingHistogram` sample by sample, vectorised per block.
    """
    x = np.asarray(values, dtype=np.float64)
    t = np.asarray(times_s, dtype=np.float64)
    edges = vpa_bucket_edges(first_bucket, ratio, max_value)
    nb = len(edges)
    out = np.full(len(x), np.nan)
    state = np.zeros(nb)
    valid = np.isfinite(x)
    if not valid.any():
        return out
    reference = float(t[np.argmax(valid)])
    bucket = np.clip(np.searchsorted(edges, np.where(valid, x, 0.0), side="right") - 1, 0, nb - 1)
    upper = np.append(edges[1:], edges[-1])
    for start in range(0, len(x), block):
        sl = slice(start, min(start + block, len(x)))
        new_reference = float(t[sl][0])
        state = state * 2.0 ** ((reference - new_reference) / half_life_s)
        reference = new_reference
        w = np.where(valid[sl], 2.0 ** ((t[sl] - reference) / half_life_s), 0.0)
        onehot = np.zeros((len(w), nb))
        onehot[np.arange(len(w)), bucket[sl]] = w
        cum = state + np.cumsum(onehot, axis=0)
        state = cum[-1].copy()
        total = cum.sum(axis=1)
        reached = np.cumsum(cum, axis=1) >= (percentile * total * (1.0 - 1e-12))[:, None]
        target = upper[np.argmax(reached, axis=1)] * (1.0 + margin)
        out[sl] = np.where(total > 0.0, target, np.nan)
    return out


# --------------------------------------------------------------------------------------------
# The quantile network
# --------------------------------------------------------------------------------------------


class _QuantileNet(nn.Module):
    """Raw features in; relative scaling, log1p of load columns, standardisation, MLP, monotone heads.

    With ``relative`` the network is scale-equivariant per resource: with ``s_r`` = the resource's
    mean over the last day (floored at `_MIN_LEVEL`), every feature of resource r is divided by
    ``s_r``, ``log s_r`` joins the inputs, and the quantiles come out as ``s_r`` times the
    network's relative quantiles; a workload twice as large gets (nearly) twice the prediction.
    """

    log_mask: torch.Tensor
    scale_index: torch.Tensor
    scale_matrix: torch.Tensor
    x_mean: torch.Tensor
    x_std: torch.Tensor
    level_mean: torch.Tensor
    level_std: torch.Tensor
    y_loc: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self, spec: FeatureSpec, hidden: int, depth: int, *, relative: bool) -> None:
        super().__init__()
        names = spec.names()
        n_in, n_res = len(names), len(RESOURCES)
        self.relative = relative
        self.register_buffer("log_mask", torch.tensor([float(c) for c in spec.log_columns()]))
        self.register_buffer(
            "scale_index", torch.tensor([names.index(f"{r}_mean_day") for r in RESOURCES], dtype=torch.long)
        )
        matrix = torch.zeros(n_res, n_in)
        for i, r in enumerate(RESOURCES):
            for j, name in enumerate(names):
                if name.startswith(f"{r}_"):
                    matrix[i, j] = 1.0
        self.register_buffer("scale_matrix", matrix)
        self.register_buffer("x_mean", torch.zeros(n_in))
        self.register_buffer("x_std", torch.ones(n_in))
        self.register_buffer("level_mean", torch.zeros(n_res))
        self.register_buffer("level_std", torch.ones(n_res))
        self.register_buffer("y_loc", torch.zeros(n_res))
        self.register_buffer("y_scale", torch.ones(n_res))
        layers: list[nn.Module] = []
        width = n_in + (n_res if relative else 0)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2 * n_res)

    def level(self, x: torch.Tensor) -> torch.Tensor:
        """(N, R) per-resource scale ``s_r`` (ones unless relative)."""
        if not self.relative:
            return torch.ones(x.shape[0], len(RESOURCES), dtype=x.dtype)
        return torch.clamp(torch.index_select(x, 1, self.scale_index), min=_MIN_LEVEL)

    def prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative features (divided by their resource's level) with log1p of the load columns, and log level."""
        s = self.level(x)
        if self.relative:
            divisor = s @ self.scale_matrix + (1.0 - self.scale_matrix.sum(dim=0))
            x = x / divisor
        mask = self.log_mask
        x = x * (1.0 - mask) + torch.log(1.0 + torch.relu(x)) * mask
        return x, torch.log(s)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """`prepare`, then standardisation with the training statistics (clipped to +-`_Z_CLIP`)."""
        prepared, log_level = self.prepare(x)
        z = torch.clamp((prepared - self.x_mean) / self.x_std, -_Z_CLIP, _Z_CLIP)
        if self.relative:
            z = torch.cat([z, (log_level - self.level_mean) / self.level_std], dim=1)
        return z

    def quantiles(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 4) predictions in `OUTPUT_NAMES` order, in the targets' units."""
        out = self.head(self.body(self.transform(x)))
        s = self.level(x)
        median = out[:, 0::2]
        gap = nn.functional.softplus(out[:, 1::2])
        p50 = s * (self.y_loc + self.y_scale * median)
        p90 = p50 + s * self.y_scale * gap
        return torch.stack([p50[:, 0], p90[:, 0], p50[:, 1], p90[:, 1]], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q = self.quantiles(x)
        return tuple(q[:, i] for i in range(q.shape[1]))

    def standardise_from(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Sets the normalisation statistics from training rows (x raw, y targets)."""
        with torch.no_grad():
            prepared, log_level = self.prepare(x)
            self.x_mean.copy_(prepared.mean(dim=0))
            self.x_std.copy_(prepared.std(dim=0).clamp_min(_MIN_STD))
            self.level_mean.copy_(log_level.mean(dim=0))
            self.level_std.copy_(log_level.std(dim=0).clamp_min(_MIN_STD))
            relative_y = y / self.level(x)
            self.y_loc.copy_(relative_y.mean(dim=0))
            # relative targets are ratios (floor 1%), absolute ones percentage points
            floor = 1e-2 if self.relative else _MIN_TARGET_SCALE
            self.y_scale.copy_(relative_y.std(dim=0).clamp_min(floor))


class _WindowNet(nn.Module):
    """Windows of interval metrics in ([N, W, F], oldest first); `build_features` of the newest row, then the net.

    ``columns[i]`` is the index in F of the model's i-th input series (`FeatureSpec.inputs`).
    Features are computed in float64 and cast to float32, as `build_features` (float64) and
    `ResourceModel.predict_features` (float32) do; the window must be full and finite.
    """

    def __init__(self, net: _QuantileNet, spec: FeatureSpec, columns: Sequence[int]) -> None:
        super().__init__()
        if len(columns) != len(spec.inputs()):
            raise ValueError(f"need one column per input series ({', '.join(spec.inputs())})")
        self.net = net
        self.spec = spec
        self.columns = tuple(int(c) for c in columns)

    def features(self, metrics: torch.Tensor) -> torch.Tensor:
        """(N, D) raw feature rows, `FeatureSpec.names` order, of the newest row of each window."""
        x = metrics.to(torch.float64)
        spec = self.spec
        h, d, w = spec.horizon, spec.day, spec.window
        cols: list[torch.Tensor] = []
        for i in range(len(RESOURCES)):
            u = x[:, :, self.columns[i]]
            cols += [u[:, w - 1 - k] for k in range(spec.lags)]
            recent, day = u[:, w - h :], u[:, w - d :]
            mean_day = day.mean(dim=1)
            std_day = torch.sqrt(((day - mean_day.unsqueeze(1)) ** 2).mean(dim=1))  # ddof 0, as np.std
            cols += [recent.mean(dim=1), recent.amax(dim=1), mean_day, day.amax(dim=1), std_day]
            # peak of [t+1-d, t+h-d]: the first h samples of the day
            cols.append(u[:, w - d : w - d + h].amax(dim=1))
        for j in range(len(spec.load_names)):
            u = x[:, :, self.columns[len(RESOURCES) + j]]
            cols += [u[:, w - 1], u[:, w - h :].mean(dim=1)]
        return torch.stack(cols, dim=1).to(torch.float32)

    def forward(self, metrics: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: tuple[torch.Tensor, ...] = self.net(self.features(metrics))
        return out


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    """Mean pinball (quantile) loss ``max(q (y - p), (q - 1)(y - p))``; minimised by the q-quantile."""
    diff = target - pred
    return torch.maximum(q * diff, (q - 1.0) * diff).mean()


def _loss(pred: torch.Tensor, y: torch.Tensor, y_scale: torch.Tensor) -> torch.Tensor:
    """Pinball loss over the 4 outputs (pred (N, 4), y (N, 2)), each resource divided by its scale."""
    total = pred.new_zeros(())
    for i, q in enumerate(QUANTILES * len(RESOURCES)):
        r = i // len(QUANTILES)
        total = total + pinball_loss(pred[:, i], y[:, r], q) / y_scale[r]
    return total / pred.shape[1]


@dataclass(frozen=True)
class ResourceConfig:
    """Hyperparameters of the resource model."""

    lags: int = 6
    horizon: int = 12
    day: int = 288
    hidden: int = 64
    depth: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 512
    epochs: int = 12
    patience: int = 3
    relative: bool = True
    """Scale-equivariant network (see `_QuantileNet`); False: absolute percentages throughout."""
    """Stop after this many epochs without a better validation loss (the best state is kept)."""
    load_names: tuple[str, ...] = DEFAULT_LOAD_NAMES

    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec(lags=self.lags, horizon=self.horizon, day=self.day, load_names=self.load_names)


@dataclass
class Recommendation:
    """Per-sample recommendations for the next window, % of provisioned (NaN: too little history)."""

    times_s: FloatArray
    cpu_request: FloatArray
    cpu_limit: FloatArray
    memory_request: FloatArray
    memory_limit: FloatArray

    def limit(self, resource: str) -> FloatArray:
        return self.cpu_limit if resource == "cpu" else self.memory_limit

    def request(self, resource: str) -> FloatArray:
        return self.cpu_request if resource == "cpu" else self.memory_request


def _rows(
    series: Sequence[UsageSeries], spec: FeatureSpec, bounds: Sequence[tuple[int, int]]
) -> tuple[FloatArray, FloatArray]:
    """Feature rows and targets of the samples t in each series' ``[start, end - horizon)``.

    Targets never reach past ``end``, so training rows do not see validation data; rows with a
    missing feature or target are dropped.
    """
    xs, ys = [], []
    for s, (start, end) in zip(series, bounds, strict=True):
        x = build_features(s, spec)
        y = next_window_peaks(s, spec.horizon)
        lo, hi = max(start, spec.warmup), end - spec.horizon
        if hi <= lo:
            continue
        x, y = x[lo:hi], y[lo:hi]
        ok = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        xs.append(x[ok])
        ys.append(y[ok])
    d = len(spec.names())
    if not xs:
        return np.zeros((0, d)), np.zeros((0, len(RESOURCES)))
    return np.concatenate(xs), np.concatenate(ys)


def _split_bounds(series: Sequence[UsageSeries], validation_fraction: float) -> list[tuple[int, int, int]]:
    """(0, validation start, end) per series: the last `validation_fraction` is validation."""
    return [(0, round(len(s) * (1.0 - validation_fraction)), len(s)) for s in series]


def _train(
    config: ResourceConfig,
    x_train: FloatArray,
    y_train: FloatArray,
    x_val: FloatArray,
    y_val: FloatArray,
    *,
    seed: int,
    progress: Progress | None = None,
) -> tuple[_QuantileNet, float]:
    """Trains one network; returns it (best validation state) and its validation loss."""
    torch.manual_seed(seed)
    net = _QuantileNet(config.feature_spec(), config.hidden, config.depth, relative=config.relative)
    xt = torch.as_tensor(x_train, dtype=torch.float32)
    yt = torch.as_tensor(y_train, dtype=torch.float32)
    xv = torch.as_tensor(x_val, dtype=torch.float32)
    yv = torch.as_tensor(y_val, dtype=torch.float32)
    net.standardise_from(xt, yt)
    y_scale = yt.std(dim=0).clamp_min(_MIN_TARGET_SCALE)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, stale = math.inf, {k: v.clone() for k, v in net.state_dict().items()}, 0
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(len(xt), generator=generator)
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            optimiser.zero_grad()
            loss = _loss(net.quantiles(xt[idx]), yt[idx], y_scale)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        net.eval()
        with torch.no_grad():
            val = float(_loss(net.quantiles(xv), yv, y_scale)) if len(xv) else float(loss)
        if progress is not None:
            progress(f"epoch {epoch + 1}/{config.epochs}: validation pinball {val:.4f}")
        if val < best - 1e-6:
            best, stale = val, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return net, best


class ResourceModel:
    """Pooled quantile model of next-window CPU/memory peaks, with calibrated limits."""

    def __init__(
        self,
        net: _QuantileNet,
        config: ResourceConfig,
        *,
        margins: Mapping[str, float] | None = None,
        target_rates: Mapping[str, float] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.net = net
        self.config = config
        self.spec = config.feature_spec()
        self.margins: dict[str, float] = {r: 0.0 for r in RESOURCES} | dict(margins or {})
        """Per resource: ``limit = p90 * (1 + margin)`` (before any online recalibration)."""
        self.target_rates: dict[str, float] = dict.fromkeys(RESOURCES, 0.1) | dict(target_rates or {})
        """Per resource: the under-provision rate the margins were calibrated to."""
        self.info: dict[str, Any] = dict(info or {})
        """How it was fitted: validation loss, search results, row counts, seconds."""

    @property
    def feature_names(self) -> list[str]:
        return self.spec.names()

    @classmethod
    def fit(
        cls,
        series: Sequence[UsageSeries],
        *,
        validation_fraction: float = 0.2,
        config: ResourceConfig | None = None,
        search: bool = True,
        search_space: Mapping[str, Sequence[Any]] | None = None,
        search_rows: int = 40_000,
        search_iter: int = DEFAULT_SEARCH_ITER,
        target_under_rate: float | Mapping[str, float] = 0.1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> ResourceModel:
        """Trains on the first part of every series and validates on its last `validation_fraction`.

        With `search`, `search_iter` combinations drawn without replacement (scikit-learn
        `ParameterSampler`, seeded; the whole grid when it is no larger) from `search_space`
        (default `DEFAULT_SEARCH_SPACE`) over `config` are each trained on at most `search_rows`
        evenly spaced training rows and scored by validation pinball loss; the best is retrained
        on all training rows. The limit margins
        are then calibrated on the validation rows to `target_under_rate`.
        """
        from sklearn.model_selection import ParameterGrid, ParameterSampler

        if not 0.0 < validation_fraction < 1.0:
            raise ValueError("validation_fraction must be within (0, 1)")
        base = config or ResourceConfig()
        started = time.perf_counter()
        bounds = _split_bounds(series, validation_fraction)
        train_b = [(a, b) for a, b, _ in bounds]
        val_b = [(b, c) for _, b, c in bounds]

        def data(cfg: ResourceConfig) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
            spec = cfg.feature_spec()
            return (*_rows(series, spec, train_b), *_rows(series, spec, val_b))

        results: list[dict[str, Any]] = []
        best_cfg = base
        if search:
            space = dict(search_space or DEFAULT_SEARCH_SPACE)
            grid = list(ParameterGrid(space))
            if len(grid) > search_iter:
                grid = list(ParameterSampler(space, n_iter=search_iter, random_state=seed))
            cache: dict[int, tuple[FloatArray, FloatArray, FloatArray, FloatArray]] = {}
            best_loss = math.inf
            for i, params in enumerate(grid):
                cfg = replace(base, **params)
                if cfg.lags not in cache:
                    cache[cfg.lags] = data(cfg)
                xt, yt, xv, yv = cache[cfg.lags]
                if len(xt) == 0 or len(xv) == 0:
                    raise ValueError("too little history for training and validation rows")
                step = max(1, len(xt) // search_rows)
                _, loss = _train(cfg, xt[::step], yt[::step], xv, yv, seed=seed)
                results.append({**params, "validation_loss": loss})
                if progress is not None:
                    progress(f"search {i + 1}/{len(grid)} {params}: validation pinball {loss:.4f}")
                if loss < best_loss:
                    best_loss, best_cfg = loss, cfg
            xt, yt, xv, yv = cache[best_cfg.lags]
        else:
            xt, yt, xv, yv = data(best_cfg)
            if len(xt) == 0 or len(xv) == 0:
                raise ValueError("too little history for training and validation rows")
        net, loss = _train(best_cfg, xt, yt, xv, yv, seed=seed, progress=progress)
        model = cls(
            net,
            best_cfg,
            info={
                "validation_loss": loss,
                "search": results,
                "train_rows": len(xt),
                "validation_rows": len(xv),
            },
        )
        pred = model.predict_features(xv)
        model.calibrate_rows(pred, yv, target_under_rate)
        model.info["fit_seconds"] = time.perf_counter() - started
        if progress is not None:
            progress(f"fitted {best_cfg} in {model.info['fit_seconds']:.1f}s, margins {model.margins}")
        return model

    # ---------------------------------------------------------------- prediction
    def predict_features(self, features: npt.ArrayLike) -> FloatArray:
        """(N, 4) quantiles (`OUTPUT_NAMES` order) for raw feature rows (N, D)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected (N, {len(self.feature_names)}) feature rows")
        with torch.no_grad():
            out = self.net.quantiles(x) if len(x) else torch.zeros((0, len(OUTPUT_NAMES)))
        return out.numpy().astype(np.float64)

    def predict(self, series: UsageSeries) -> dict[str, FloatArray]:
        """Per sample t, the quantiles of the peak over ``t+1 .. t+horizon`` (NaN: too little history)."""
        x = build_features(series, self.spec)
        out = np.full((len(x), len(OUTPUT_NAMES)), np.nan)
        ok = np.isfinite(x).all(axis=1)
        out[ok] = self.predict_features(x[ok])
        return {name: out[:, i] for i, name in enumerate(OUTPUT_NAMES)}

    def recommend(
        self, series: UsageSeries, *, adaptive: bool = True, gamma: float = DEFAULT_GAMMA, start: int = 0
    ) -> Recommendation:
        """Requests and limits for every sample's next window, from the history up to that sample.

        ``request = p50``; ``limit = p90 * (1 + margin)``, and with `adaptive` (the default) the
        margin is then recalibrated online from the windows that have closed (`adaptive_limits`,
        from sample `start` on, toward `target_rates`), so the limits keep their under-provision
        rate when the workload drifts.
        """
        p = self.predict(series)
        peaks = next_window_peaks(series, self.config.horizon)
        limits = {}
        for r in RESOURCES:
            p90 = p[f"{r}_p90_next"]
            if adaptive:
                limits[r] = adaptive_limits(
                    p90,
                    peaks[:, RESOURCES.index(r)],
                    margin=self.margins[r],
                    target_under_rate=self.target_rates[r],
                    gamma=gamma,
                    horizon=self.config.horizon,
                    start=start,
                )
            else:
                limits[r] = p90 * (1.0 + self.margins[r])
        return Recommendation(
            times_s=np.asarray(series.times_s, dtype=np.float64),
            cpu_request=p["cpu_p50_next"],
            cpu_limit=limits["cpu"],
            memory_request=p["memory_p50_next"],
            memory_limit=limits["memory"],
        )

    # ---------------------------------------------------------------- calibration
    def calibrate_rows(
        self, predictions: FloatArray, peaks: FloatArray, target_under_rate: float | Mapping[str, float]
    ) -> dict[str, float]:
        """Sets each resource's margin by `calibrate_margin` of its p90 on these rows (N, 4) / (N, 2)."""
        for i, r in enumerate(RESOURCES):
            target = target_under_rate[r] if isinstance(target_under_rate, Mapping) else target_under_rate
            if len(peaks):
                self.margins[r] = calibrate_margin(predictions[:, 2 * i + 1], peaks[:, i], target)
                self.target_rates[r] = float(target)
        return dict(self.margins)

    def calibrate(
        self,
        series: Sequence[UsageSeries],
        bounds: Sequence[tuple[int, int]],
        target_under_rate: float | Mapping[str, float],
    ) -> dict[str, float]:
        """`calibrate_rows` on the windows starting in ``[start, end - horizon)`` of each series."""
        x, y = _rows(series, self.spec, bounds)
        return self.calibrate_rows(self.predict_features(x), y, target_under_rate)

    # ---------------------------------------------------------------- persistence
    def export_onnx(self, path: Path | str) -> Path:
        """ONNX graph: input ``features`` float32 [N, D] raw, outputs `OUTPUT_NAMES` [N].

        Metadata: ``foedus.kind=resource``, ``foedus.features`` (comma-separated feature names),
        ``foedus.horizon`` (samples in the predicted window), ``foedus.margins`` (JSON).
        """
        import onnx

        path = Path(path)
        d = len(self.feature_names)
        # The TorchScript exporter (dynamo=False) needs no onnxscript; its deprecation notice is noise here.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                self.net,
                (torch.zeros(2, d),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "N"}, **{n: {0: "N"} for n in OUTPUT_NAMES}},
                opset_version=17,
                dynamo=False,
            )
        model = onnx.load(str(path))
        meta = {
            "foedus.kind": "resource",
            "foedus.features": ",".join(self.feature_names),
            "foedus.horizon": str(self.config.horizon),
            "foedus.quantiles": ",".join(str(q) for q in QUANTILES),
            "foedus.margins": json.dumps(self.margins),
        }
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        path.write_bytes(model.SerializeToString())
        return path

    def agent_columns(self, columns: Mapping[str, str]) -> tuple[str, ...]:
        """Checks an input-to-agent-metric mapping; returns the agent metrics it reads, in agent order.

        `columns` maps each of the model's input series (`FeatureSpec.inputs`: ``cpu``,
        ``memory`` and every load proxy) to one agent metric (`HISTORY_METRICS`); several inputs
        may read one metric.
        """
        inputs = self.spec.inputs()
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"input series names must be distinct: {', '.join(inputs)}")
        missing = [n for n in inputs if n not in columns]
        extra = [n for n in columns if n not in inputs]
        if missing or extra:
            raise ValueError(
                f"columns must map exactly the model's inputs {', '.join(inputs)} to agent metrics"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; not inputs of this model: {', '.join(extra)}" if extra else "")
            )
        unknown = sorted({m for m in columns.values() if m not in HISTORY_METRICS})
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not agent metric(s); agents measure {', '.join(HISTORY_METRICS)}"
            )
        used = set(columns.values())
        return tuple(m for m in HISTORY_METRICS if m in used)

    def export_agent_onnx(self, path: Path | str, *, columns: Mapping[str, str]) -> Path:
        """ONNX graph agents serve: input ``metrics`` float32 [N, W, F], outputs `OUTPUT_NAMES` [N].

        `columns` maps each input series of the model (``cpu``, ``memory``, each load proxy:
        `FeatureSpec.inputs`) to the agent metric it is read from (see `agent_columns`), e.g.
        ``{"cpu": "process_cpu_percent", "memory": "process_memory_bytes", "requests": "requests"}``;
        predictions come in those metrics' units. ``F`` are the mapped metrics in agent order
        (`HISTORY_METRICS`) and ``W = max(day, lags)`` intervals, oldest first; the graph
        computes the features of the newest interval (`build_features`) and runs the network.
        Metadata: ``foedus.kind=resource``, ``foedus.features`` (the F metrics, comma-separated),
        ``foedus.window``, ``foedus.horizon``, ``foedus.quantiles``, ``foedus.margins`` and
        ``foedus.columns`` (JSON). Raises ValueError for a bad mapping or a window over
        `MAX_AGENT_WINDOW`.
        """
        import onnx

        features = self.agent_columns(columns)
        window = self.spec.window
        if window > MAX_AGENT_WINDOW:
            raise ValueError(
                f"the model needs a window of {window} intervals (its day of {self.spec.day} samples); "
                f"agents feed at most {MAX_AGENT_WINDOW}: train with day <= {MAX_AGENT_WINDOW}"
            )
        graph = _WindowNet(
            self.net, self.spec, [features.index(columns[n]) for n in self.spec.inputs()]
        ).eval()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.ones(2, window, len(features))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[AGENT_INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={AGENT_INPUT_NAME: {0: "N"}, **{n: {0: "N"} for n in OUTPUT_NAMES}},
                opset_version=17,
                dynamo=False,
            )
        model = onnx.load(str(path))
        meta = {
            "foedus.kind": "resource",
            "foedus.features": ",".join(features),
            "foedus.window": str(window),
            "foedus.horizon": str(self.config.horizon),
            "foedus.quantiles": ",".join(str(q) for q in QUANTILES),
            "foedus.margins": json.dumps(self.margins),
            "foedus.columns": json.dumps({n: columns[n] for n in self.spec.inputs()}),
        }
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        path.write_bytes(model.SerializeToString())
        return path

    def save(self, path: Path | str) -> Path:
        """Saves weights, configuration and margins (a torch file readable with weights_only)."""
        path = Path(path)
        payload = {
            "version": _FORMAT_VERSION,
            "config": json.dumps(asdict(self.config)),
            "margins": json.dumps(self.margins),
            "target_rates": json.dumps(self.target_rates),
            "info": json.dumps(self.info, default=str),
            "state": self.net.state_dict(),
        }
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> ResourceModel:
        payload = torch.load(Path(path), weights_only=True)
        if payload.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported resource model format {payload.get('version')!r}")
        raw = json.loads(payload["config"])
        raw["load_names"] = tuple(raw["load_names"])
        config = ResourceConfig(**raw)
        net = _QuantileNet(config.feature_spec(), config.hidden, config.depth, relative=config.relative)
        net.load_state_dict(payload["state"])
        net.eval()
        return cls(
            net,
            config,
            margins=json.loads(payload["margins"]),
            target_rates=json.loads(payload["target_rates"]),
            info=json.loads(payload["info"]),
        )


AGENT_CPU, AGENT_MEMORY, AGENT_LOAD = "process_cpu_percent", "process_memory_bytes", "requests"
"""The agent metrics `train_from_matrix` reads from an agent's history: CPU, memory, the load proxy."""


_CPU_NAMES = ("cpu", "cpu_percent", "cpu_usage_pct", "process_cpu_percent")
_MEMORY_NAMES = ("memory", "memory_percent", "memory_usage_pct", "process_memory_bytes")


_USAGE_WORDS = ("usage", "used", "util")
"""A column whose name holds one of these measures use (preferred as the CPU or memory column)."""
_CAPACITY_WORDS = ("capacity", "provisioned", "cores", "limit", "allocatable")
"""A column whose name holds one of these (and no usage word) measures capacity, not use."""
_TIME_WORDS = ("time", "date", "datetime", "epoch", "ts")
_PERCENT_WORDS = ("%", "pct", "percent")


def _is_time(name: str) -> bool:
    """Whether column `name` holds timestamps: its name holds "timestamp" or "datetime", or
    starts with time, date, epoch or ts (``Timestamp [ms]``, ``time_s``; not ``response_time``)."""
    lowered = name.strip().lower()
    words = re.findall(r"[a-z0-9]+", lowered)
    return "timestamp" in lowered or "datetime" in lowered or bool(words and words[0] in _TIME_WORDS)


def _is_usage(name: str) -> bool:
    return any(w in name.lower() for w in _USAGE_WORDS)


def _is_capacity(name: str) -> bool:
    return not _is_usage(name) and any(w in name.lower() for w in _CAPACITY_WORDS)


def _candidates(names: Sequence[str], fragment: str) -> list[int]:
    """Columns that measure the resource whose names hold `fragment` (not timestamps)."""
    return [i for i, n in enumerate(names) if fragment in n.lower() and not _is_time(n)]


def _pick(names: Sequence[str], preferred: Sequence[str], fragment: str, given: str | None = None) -> int:
    """The column of the resource: `given` (a column name), else the first named in `preferred`,
    else among the columns holding `fragment`: a usage column (a percentage first), else one that
    is neither usage nor capacity; never a capacity column (cores, capacity, provisioned, limit)
    nor a timestamp."""
    if given is not None:
        if given not in names:
            raise ValueError(f"no column {given!r} among {', '.join(names)}")
        return list(names).index(given)
    lowered = [n.strip().lower() for n in names]
    for candidate in preferred:
        if candidate in lowered:
            return lowered.index(candidate)
    candidates = _candidates(names, fragment)
    usable = [i for i in candidates if not _is_capacity(names[i])]
    if usable:
        return min(
            usable,
            key=lambda i: (not _is_usage(names[i]), not any(w in lowered[i] for w in _PERCENT_WORDS), i),
        )
    if candidates:
        raise ValueError(
            f"no {fragment} usage column: {', '.join(names[i] for i in candidates)} hold capacity, "
            f"not usage; name the column to use"
        )
    raise ValueError(
        f"no {fragment} column among {', '.join(names)}: give the agent metrics {AGENT_CPU} and "
        f"{AGENT_MEMORY} (and {AGENT_LOAD}), or columns named cpu and memory, or name the columns to use"
    )


def resource_columns(
    names: Sequence[str], cpu_column: str | None = None, memory_column: str | None = None
) -> tuple[int, int, list[int]]:
    """(CPU column, memory column, load-proxy columns) among columns `names` that are not agent
    metrics, as `train_from_matrix` picks them (see there); ValueError without CPU or memory."""
    cpu_col = _pick(names, _CPU_NAMES, "cpu", cpu_column)
    memory_col = _pick(names, _MEMORY_NAMES, "mem", memory_column)
    if cpu_col == memory_col:
        raise ValueError(f"the CPU and the memory column are both {names[cpu_col]!r}")
    resource_cols = {cpu_col, memory_col, *_candidates(names, "cpu"), *_candidates(names, "mem")}
    load_cols = [i for i in range(len(names)) if i not in resource_cols and not _is_time(names[i])]
    return cpu_col, memory_col, load_cols


def agent_columns_of(names: Sequence[str]) -> dict[str, str] | None:
    """The input-to-agent-metric mapping for columns `names` when they hold an agent's CPU and memory.

    ``{"cpu": "process_cpu_percent", "memory": "process_memory_bytes"}``, plus
    ``"requests": "requests"`` (the load proxy) when `names` has it; None without both resources.
    """
    if AGENT_CPU not in names or AGENT_MEMORY not in names:
        return None
    mapping = {"cpu": AGENT_CPU, "memory": AGENT_MEMORY}
    if AGENT_LOAD in names:
        mapping[AGENT_LOAD] = AGENT_LOAD
    return mapping


def train_from_matrix(
    x: npt.ArrayLike,
    names: Sequence[str],
    out: Path | str,
    *,
    seed: int = 0,
    progress: Progress | None = None,
    horizon: int | None = None,
    day: int | None = None,
    search: bool = True,
    validation_fraction: float = 0.2,
    cpu_column: str | None = None,
    memory_column: str | None = None,
) -> dict[str, Any]:
    """Trains on one workload's metric matrix and writes the ONNX model; returns a summary row.

    `x` holds rows in time order at a fixed period, one column per metric in `names`.

    Agent metrics (`names` has ``process_cpu_percent`` and ``process_memory_bytes``; e.g. an
    agent's history, all of `HISTORY_METRICS`): the model reads those two, and ``requests`` as
    its load proxy when present (other columns are ignored); `horizon` defaults to
    `AGENT_HORIZON` and `day` to `AGENT_DAY` (capped at `MAX_AGENT_WINDOW`), and it writes the
    agent-servable export (`ResourceModel.export_agent_onnx`).

    Other columns: the CPU column is `cpu_column` when given, else the first named ``cpu``,
    ``cpu_percent``, ``cpu_usage_pct`` or ``process_cpu_percent``, else among the columns whose
    names contain "cpu" a usage column (its name holds usage, used or util; a percentage first,
    e.g. Bitbrains' ``CPU usage [%]``), else one that does not measure capacity; capacity columns
    (cores, capacity, provisioned, limit) and timestamps are never picked. The memory column
    likewise (`memory_column`; ``memory``, ...; names containing "mem"). The load proxies are the
    other columns, less timestamps (a name holding "timestamp", or starting with time, date,
    epoch or ts) and the other CPU and memory columns (capacities, other units), so on a Bitbrains trace they
    are the disk and network throughputs; `horizon` defaults to 12 and `day` to 288, and it
    writes the raw-feature export (`ResourceModel.export_onnx`, which agents do not serve).
    Without such columns, or with a named column that is not in `names`, it raises ValueError
    saying which columns it needs.

    Predictions come in the units of the CPU and memory columns. When there are fewer than
    ``4 * day`` rows, the day window shrinks to a quarter of the rows (at least ``horizon + 1``).
    The summary holds plain values: the model's path, kind, whether agents serve it, rows, the
    CPU and memory columns, ``features`` (the columns the model reads, comma-separated; for an
    agent export its ``foedus.features``), window, horizon, day, the chosen lags, hidden, lr
    and relative, the validation pinball loss and the calibrated margins.
    """
    matrix = np.asarray(x, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError("x must be (rows, len(names))")
    names = list(names)
    mapping = agent_columns_of(names)
    if cpu_column not in (None, AGENT_CPU) or memory_column not in (None, AGENT_MEMORY):
        mapping = None  # columns named by the caller: the raw-feature export
    if mapping is not None:
        horizon = AGENT_HORIZON if horizon is None else horizon
        day_cap = min(AGENT_DAY if day is None else day, MAX_AGENT_WINDOW)
        cpu_col, memory_col = names.index(mapping["cpu"]), names.index(mapping["memory"])
        load_names = tuple(n for n in mapping if n not in RESOURCES)
        load_cols = [names.index(mapping[n]) for n in load_names]
    else:
        horizon = 12 if horizon is None else horizon
        day_cap = 288 if day is None else day
        cpu_col, memory_col, load_cols = resource_columns(names, cpu_column, memory_column)
        load_names = tuple(names[i] for i in load_cols)
    if horizon < 1:
        raise ValueError("horizon must be at least 1")
    day = min(day_cap, max(horizon + 1, len(matrix) // 4))
    if len(matrix) < 2 * day + 4 * horizon:
        raise ValueError(
            f"{len(matrix)} rows are too few to train a resource model "
            f"(horizon {horizon}, day {day}: need 2 * day + 4 * horizon = {2 * day + 4 * horizon})"
        )
    series = UsageSeries(
        matrix[:, cpu_col].copy(),
        matrix[:, memory_col].copy(),
        matrix[:, load_cols].copy(),
        np.arange(len(matrix), dtype=np.float64),
        name="matrix",
    )
    config = ResourceConfig(horizon=horizon, day=day, load_names=load_names)
    model = ResourceModel.fit(
        [series],
        validation_fraction=validation_fraction,
        config=config,
        search=search,
        seed=seed,
        progress=progress,
    )
    if mapping is not None:
        path = model.export_agent_onnx(out, columns=mapping)
        features = model.agent_columns(mapping)
    else:
        path = model.export_onnx(out)
        features = tuple(names[i] for i in (cpu_col, memory_col, *load_cols))
    cfg = model.config
    return {
        "model": str(path),
        "kind": "resource",
        "agent_servable": mapping is not None,
        "rows": len(matrix),
        "cpu": names[cpu_col],
        "memory": names[memory_col],
        "features": ",".join(features),
        "window": model.spec.window,
        "horizon": cfg.horizon,
        "day": cfg.day,
        "lags": cfg.lags,
        "hidden": cfg.hidden,
        "lr": cfg.lr,
        "relative": cfg.relative,
        "validation_pinball": round(float(model.info["validation_loss"]), 6),
        "cpu_margin": round(model.margins["cpu"], 4),
        "memory_margin": round(model.margins["memory"], 4),
    }


# ------------------------------------------------------------------ federated training
class _QuantileHeads(nn.Module):
    """`_QuantileNet` with one output tensor (N, 4), `OUTPUT_NAMES` order, for the federated task."""

    def __init__(self, net: _QuantileNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net.quantiles(x)
        return out


def federated_rows(
    series: Sequence[UsageSeries], config: ResourceConfig, bounds: Sequence[tuple[int, int]]
) -> np.ndarray:
    """One organisation's training matrix for the federated task: each row holds the raw feature
    row (`FeatureSpec.names` order) and then the next window's CPU and memory peaks, for the samples
    of each series in its ``[start, end)`` bounds (targets never reach past ``end``)."""
    x, y = _rows(series, config.feature_spec(), bounds)
    return np.concatenate([x, y], axis=1).astype(np.float32)


RECORD_DP_REFUSAL = (
    "record-level DP (DP-SGD) is not supported for the resource model: its first round sends each "
    "node's feature statistics, which DP-SGD does not cover"
)
"""Why the resource model refuses record-level DP (its task, and the CLI before a run starts)."""


def federated_task(
    hidden: int = 64,
    depth: int = 2,
    lr: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
    lags: int = 6,
    horizon: int = 12,
    day: int = 288,
    relative: bool = True,
    agent_history: bool = False,
) -> Any:
    """The resource model as a Flower task (`foedus.federation.flower.task.FederatedTask`).

    With ``agent_history`` a node's data is an agent's interval history instead (columns
    `HISTORY_METRICS`, oldest first): CPU and memory are ``process_cpu_percent`` and
    ``process_memory_bytes``, ``requests`` the load proxy, the horizon `AGENT_HORIZON`, and the
    result is what `federated_resource_model` exports for agents.

    Import string ``foedus.federation.resources:federated_task``; run-config options are the
    keyword arguments (``task-options.hidden``, ...). A node's data is `federated_rows`: raw
    feature rows with the two peaks appended. The loss is the pinball loss of the four outputs
    (p50 and p90 of CPU and memory peaks). Standardisation: the first round only agrees on it (each
    node sets the network's statistics from its own rows, without training, and FedAvg averages
    them, weighted by rows: the mean of the feature means is the pooled mean); training starts in
    the second round, on the same statistics everywhere, which then stay fixed. Trained in one
    process (`train` once from `initial_arrays`), the first call standardises on its rows and
    returns without training, like the first round.
    """
    from foedus.federation.flower.task import (
        DpSgd,
        LocalData,
        Metrics,
        NamedArrays,
        TorchTask,
        get_weights,
        set_weights,
    )

    if agent_history:
        from foedus.client_sdk.agent.history import HISTORY_METRICS

        columns = agent_columns_of(HISTORY_METRICS)
        assert columns is not None
        load_names: tuple[str, ...] = tuple(n for n in columns if n not in RESOURCES)
        horizon = AGENT_HORIZON
    config = ResourceConfig(
        load_names=load_names if agent_history else DEFAULT_LOAD_NAMES,
        hidden=hidden,
        depth=depth,
        lr=lr,
        batch_size=batch_size,
        lags=lags,
        horizon=horizon,
        day=day,
        relative=relative,
    )
    spec = config.feature_spec()
    n_in = len(spec.names())
    q = torch.tensor([qq for _ in RESOURCES for qq in QUANTILES], dtype=torch.float32)
    expand = [i for i in range(len(RESOURCES)) for _ in QUANTILES]

    def factory() -> nn.Module:
        return _QuantileHeads(_QuantileNet(spec, hidden, depth, relative=relative))

    def pairs(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if agent_history:
            matrix = _history_rows(matrix, config)
        if matrix.shape[1] != n_in + len(RESOURCES):
            raise ValueError(
                f"the task takes {n_in} feature columns and {len(RESOURCES)} targets; the data has {matrix.shape[1]} columns"
            )
        return matrix[:, :n_in].astype(np.float32), matrix[:, n_in:][:, expand].astype(np.float32)

    def pinball(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = target - prediction
        return torch.maximum(q * diff, (q - 1.0) * diff)

    class ResourceTask(TorchTask):
        resource_config = config

        def train(
            self,
            arrays: NamedArrays,
            data: LocalData,
            *,
            epochs: int,
            proximal_mu: float = 0.0,
            server_round: int = 0,
            local_state: MutableMapping[str, np.ndarray] | None = None,
            dp_sgd: DpSgd | None = None,
        ) -> tuple[NamedArrays, Metrics]:
            if dp_sgd is not None:
                raise ValueError(RECORD_DP_REFUSAL)
            if np.any(arrays["net.x_mean"]) or not np.all(arrays["net.x_std"] == 1.0):
                return super().train(
                    arrays,
                    data,
                    epochs=epochs,
                    proximal_mu=proximal_mu,
                    server_round=server_round,
                    local_state=local_state,
                )
            # the first round agrees on the standardisation: no training on statistics that differ
            model = self.build()
            set_weights(model, arrays)
            x, y = pairs(data.train)
            assert isinstance(model, _QuantileHeads)
            model.net.standardise_from(torch.from_numpy(x), torch.from_numpy(y[:, :: len(QUANTILES)]))
            with torch.no_grad():
                loss = float(pinball(model(torch.from_numpy(x)), torch.from_numpy(y)).mean())
            return get_weights(model), {
                "num-examples": len(x),
                "train-loss": loss,
                "train-loss-initial": loss,
            }

    return ResourceTask(factory, pairs=pairs, loss=pinball, lr=lr, batch_size=batch_size, seed=seed)


def _history_rows(history: np.ndarray, config: ResourceConfig) -> np.ndarray:
    """`federated_rows` of one agent history matrix (columns `HISTORY_METRICS`)."""
    from foedus.client_sdk.agent.history import HISTORY_METRICS

    if history.ndim != 2 or history.shape[1] != len(HISTORY_METRICS):
        raise ValueError(
            f"an agent history has {len(HISTORY_METRICS)} columns ({', '.join(HISTORY_METRICS)}); "
            f"the data has shape {history.shape}"
        )
    columns = agent_columns_of(HISTORY_METRICS)
    assert columns is not None
    x = np.asarray(history, dtype=np.float64)
    at = {name: HISTORY_METRICS.index(metric) for name, metric in columns.items()}
    loads = x[:, [at[n] for n in config.load_names]]
    series = UsageSeries(x[:, at["cpu"]], x[:, at["memory"]], loads, np.arange(len(x), dtype=np.float64))
    if len(series) < config.feature_spec().warmup + 2 * config.horizon:
        raise ValueError(f"{len(series)} intervals are too few (the model's day is {config.day} intervals)")
    return federated_rows([series], config, [(0, len(series))])


def federated_resource_model(weights: Mapping[str, np.ndarray], **task_options: Any) -> ResourceModel:
    """A `ResourceModel` of a federated run's global weights (the task's options as given to
    `federated_task`); its limit margins are 0 (limit = p90) until a site calibrates them."""
    from foedus.federation.flower.task import set_weights

    task = federated_task(**task_options)
    heads = task.build()
    set_weights(heads, weights)
    heads.eval()
    return ResourceModel(heads.net, task.resource_config, info={"federated": True})


def quantile_metrics(predictions: np.ndarray, peaks: np.ndarray) -> dict[str, float]:
    """Mean pinball loss over the four outputs and the p90s' coverage (share of peaks at or below
    the p90; 0.9 is calibrated) of predictions (N, 4) against peaks (N, 2)."""
    pred = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(peaks, dtype=np.float64)[:, [i for i in range(len(RESOURCES)) for _ in QUANTILES]]
    q = np.array([qq for _ in RESOURCES for qq in QUANTILES])
    diff = y - pred
    loss = float(np.maximum(q * diff, (q - 1.0) * diff).mean())
    p90 = [i for i, qq in enumerate(q) if qq == 0.9]
    coverage = float((y[:, p90] <= pred[:, p90]).mean())
    return {"pinball": loss, "p90_coverage": coverage}


__all__ = [
    "AGENT_DAY",
    "AGENT_HORIZON",
    "AGENT_INPUT_NAME",
    "DEFAULT_SEARCH_SPACE",
    "MAX_AGENT_WINDOW",
    "OUTPUT_NAMES",
    "QUANTILES",
    "RESOURCES",
    "DecayingHistogram",
    "FeatureSpec",
    "Recommendation",
    "ResourceConfig",
    "ResourceModel",
    "UsageSeries",
    "adaptive_limits",
    "agent_columns_of",
    "build_features",
    "calibrate_margin",
    "federated_resource_model",
    "federated_rows",
    "federated_task",
    "next_window_peaks",
    "pinball_loss",
    "quantile_metrics",
    "recommendation_metrics",
    "resource_columns",
    "train_from_matrix",
    "vpa_bucket_edges",
    "vpa_recommendations",
]
