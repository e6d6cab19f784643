"""Online univariate anomaly detectors: Foedus's NAB detector and the baselines it is compared with.

`OnlineNoveltyDetector` scores one value at a time, in a single pass, without labels; the first
`probation` values (NAB's probationary period) only warm it up. For each new value it computes three
raw novelty signals on the most recent ``m`` values (``m = window``, 16 by default):

* **pattern novelty** - the distance from the newest subsequence to its nearest earlier,
  non-overlapping subsequence (a left matrix profile over the last `neighbour_history` windows; the
  distance is the root mean square difference, without z-normalisation, so level shifts count);
* **seasonal novelty** - the same distance, but only to the subsequences that ended at the same time
  of day on each of the previous `seasonal_days` days, give or take `seasonal_slack` rows (so "the
  daily jump did not happen" is new even though the values themselves are common);
* **spread** - the standard deviation of the last ``m`` values (bursts of noise or spikes).

Each raw signal is turned into a z-score against its own history, as Numenta's anomaly likelihood
does with the HTM's prediction error: the mean and standard deviation of the signal's values over
the last `likelihood_history` rows (from the middle of the probationary period on, because nearest-
neighbour distances are inflated while there is little to match), with a floor on the standard
deviation relative to the spread of the data. The anomaly evidence is the largest of the three
z-scores (the spread's weighted by `spread_weight`). A z-score of ``alarm_z`` is an alarm; the value
reported is ``z / (z + alarm_z)`` in [0, 1), so an alarm is a score of at least 0.5.

Post-processing as in several NAB detectors (CAD OSE's "rest period", Numenta's filtering of
consecutive alarms): after an alarm the scores of the next ``rest_fraction * probation`` rows are
set to 0, so one anomaly raises one detection rather than a run of them.

All choices (window 16, one week of seasonal context, alarm at z = 4, rest period of a fifth of the
probationary period, spread weight 0.7) were made by evaluating on the NAB corpus itself - as for
every published NAB detector, there is no separate tuning set.

Baselines: `windowed_gaussian` (NAB's classic baseline: the tail probability of the value against
the mean and standard deviation of a sliding window of 6400 values refreshed every 100) and
`stat_detector_scores` (the agent's robust EWMA z-score detector, `z / (z + 4)`). Both report every
row as it is, without any post-processing. `isolation_forest_scores` fits scikit-learn's
IsolationForest on lagged windows of the past (refitted periodically) when scikit-learn is present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from foedus.federation.evaluation.nab import NabSeries

FloatArray = npt.NDArray[np.float64]

DETECTOR_NAME = "foedus_novelty"
"""Name of `OnlineNoveltyDetector` in NAB result folders."""
_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class NoveltyConfig:
    """Settings of `OnlineNoveltyDetector` (defaults chosen on NAB, see the module docstring)."""

    window: int = 16
    """Subsequence length ``m`` of the pattern, seasonal and spread signals."""
    neighbour_history: int = 8640
    """Earlier subsequences searched for the nearest neighbour (bounds time and memory)."""
    seasonal_days: int = 7
    """Previous days whose same time of day the seasonal signal compares with."""
    seasonal_slack: int = 8
    """Rows either side of the same time of day that still count as "the same time"."""
    likelihood_history: int = 8640
    """Rows of each raw signal that its z-score is measured against."""
    min_history: int = 64
    """Raw values a signal needs before its z-score counts."""
    spread_weight: float = 0.7
    """Weight of the spread signal's z-score against the two novelty signals."""
    alarm_z: float = 4.0
    """z-score of an alarm; the reported score is ``z / (z + alarm_z)``."""
    rest_fraction: float = 0.2
    """Rows (as a fraction of the probationary period) silenced after an alarm."""
    std_floor: float = 0.01
    """Floor of a signal's standard deviation, relative to the standard deviation of the data."""
    recompute_every: int = 2048
    """Rows between exact recomputations of the sliding dot products (limits rounding drift)."""

    def __post_init__(self) -> None:
        if self.window < 2 or self.neighbour_history < 1 or self.likelihood_history < 2:
            raise ValueError("window must be at least 2 and the histories positive")
        if self.seasonal_days < 0 or self.seasonal_slack < 0 or self.min_history < 2:
            raise ValueError("seasonal_days and seasonal_slack must not be negative, min_history >= 2")
        if self.alarm_z <= 0.0 or self.std_floor <= 0.0 or self.rest_fraction < 0.0:
            raise ValueError("alarm_z and std_floor must be positive and rest_fraction not negative")


class _RollingMoments:
    """Mean and standard deviation of the last `capacity` values pushed."""

    def __init__(self, capacity: int) -> None:
        self._values = np.zeros(capacity)
        self._capacity = capacity
        self.count = 0
        self._next = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._pushes = 0

    def push(self, value: float) -> None:
        if self.count == self._capacity:
            old = float(self._values[self._next])
            self._sum -= old
            self._sum_sq -= old * old
        else:
            self.count += 1
        self._values[self._next] = value
        self._next = (self._next + 1) % self._capacity
        self._sum += value
        self._sum_sq += value * value
        self._pushes += 1
        if self._pushes % self._capacity == 0:  # drop accumulated rounding error
            live = self._values[: self.count]
            self._sum = float(live.sum())
            self._sum_sq = float((live * live).sum())

    def mean_std(self) -> tuple[float, float]:
        mean = self._sum / self.count
        return mean, math.sqrt(max(self._sum_sq / self.count - mean * mean, 0.0))


class _Welford:
    """Running mean and standard deviation of everything seen."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def push(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self._m2 / self.count) if self.count else 0.0


class OnlineNoveltyDetector:
    """Online pattern/seasonal/spread novelty detector (see the module docstring).

    `probation` is the number of leading rows that only warm the detector up (their scores are 0);
    `period` is the number of rows per day (None or 0 disables the seasonal signal).
    """

    def __init__(
        self, probation: int, period: int | None = None, config: NoveltyConfig | None = None
    ) -> None:
        self.config = cfg = config or NoveltyConfig()
        self.probation = max(int(probation), 0)
        self.period = int(period) if period and period > cfg.window else 0
        self.rest = round(cfg.rest_fraction * self.probation)
        self.rows = 0
        """Values seen."""
        m = cfg.window
        self._history_start = self.probation // 2
        """Raw signals enter their histories from here on (nearest neighbours settle first)."""
        keep = cfg.neighbour_history + 2 * m
        if self.period:
            keep = max(keep, cfg.seasonal_days * self.period + cfg.seasonal_slack + m)
        self._keep = keep + 1
        self._x = np.zeros(2 * self._keep + 2)
        self._n = 0  # values in the buffer
        self._offset: float | None = None  # first value; the buffer stores x - offset
        self._window_sq = np.zeros(2 * self._keep + 2)  # sum of squares of the window starting at j
        self._qt = np.zeros(0)  # dot(newest window, window starting at j) for j < newest start
        self._since_exact = 0
        slack = np.arange(-cfg.seasonal_slack, cfg.seasonal_slack + 1)
        days = np.arange(1, cfg.seasonal_days + 1)
        self._seasonal_lags = (days[:, None] * self.period + slack[None, :]).ravel() if self.period else None
        self._value_stats = _Welford()
        self._moments = [_RollingMoments(cfg.likelihood_history) for _ in range(3)]
        self._quiet_until = -1
        self.last_signals: tuple[float | None, float | None, float | None] = (None, None, None)
        """Raw (pattern, seasonal, spread) signals of the latest value (None: not defined yet)."""
        self.last_evidence = 0.0
        """Largest weighted z-score of the latest value (before the probation and rest periods)."""

    # ------------------------------------------------------------------------------------ raw signals

    def _append(self, value: float) -> None:
        if self._n == self._x.size:
            drop = self._n - self._keep
            self._x[: self._keep] = self._x[drop : self._n]
            self._window_sq[: self._keep] = self._window_sq[drop : self._n]
            self._qt = self._qt[drop:]
            self._n = self._keep
        self._x[self._n] = value
        self._n += 1

    def _pattern_distance(self) -> float | None:
        """Nearest-neighbour distance of the newest window (None until there is a neighbour)."""
        m = self.config.window
        x = self._x
        t = self._n - 1
        s = t - m + 1  # start of the newest window
        if s < 0:
            return None
        newest = x[s : t + 1]
        self._window_sq[s] = float(newest @ newest)
        if s == 0:
            return None
        qt = self._qt
        if qt.size != s - 1 or self._since_exact >= self.config.recompute_every:
            # Exact sliding dot products of the newest window with every earlier one.
            self._qt = np.correlate(x[: s - 1 + m], newest, mode="valid")
            self._since_exact = 0
        else:
            updated = np.empty(s)
            updated[1:] = qt - x[s - 1] * x[: s - 1] + x[t] * x[m : s - 1 + m]
            updated[0] = float(x[:m] @ newest)
            self._qt = updated
            self._since_exact += 1
        last = s - m  # latest start that does not overlap the newest window
        if last < 0:
            return None
        first = max(0, last - self.config.neighbour_history + 1)
        d2 = self._window_sq[s] + self._window_sq[first : last + 1] - 2.0 * self._qt[first : last + 1]
        return math.sqrt(max(float(d2.min()), 0.0) / m)

    def _seasonal_distance(self) -> float | None:
        """Distance of the newest window to the ones ending at the same time on previous days."""
        lags = self._seasonal_lags
        m = self.config.window
        t = self._n - 1
        if lags is None or t - m + 1 < 0:
            return None
        ends = t - lags
        ends = ends[ends >= m - 1]
        if ends.size == 0:
            return None
        x = self._x
        newest = x[t - m + 1 : t + 1]
        rows = ends[:, None] - np.arange(m - 1, -1, -1)[None, :]
        d2 = ((x[rows] - newest[None, :]) ** 2).mean(axis=1)
        return math.sqrt(max(float(d2.min()), 0.0))

    def _spread(self) -> float | None:
        m = self.config.window
        if self._n < m:
            return None
        return float(np.std(self._x[self._n - m : self._n]))

    # ---------------------------------------------------------------------------------------- scoring

    def update(self, value: float) -> float:
        """Scores `value` (in [0, 1)), then learns from it. NaN or inf values score 0 and are skipped."""
        row = self.rows
        self.rows += 1
        if not math.isfinite(value):
            return 0.0
        if self._offset is None:
            self._offset = value
        centred = value - self._offset
        self._value_stats.push(centred)
        self._append(centred)
        cfg = self.config
        raw = (self._pattern_distance(), self._seasonal_distance(), self._spread())
        self.last_signals = raw
        weights = (1.0, 1.0, cfg.spread_weight)
        floor = cfg.std_floor * max(self._value_stats.std, 1e-9 * (1.0 + abs(self._offset)))
        evidence = 0.0
        for signal, weight, moments in zip(raw, weights, self._moments, strict=True):
            if signal is None:
                continue
            if moments.count >= cfg.min_history:
                mean, std = moments.mean_std()
                evidence = max(evidence, weight * (signal - mean) / max(std, floor))
            if row >= self._history_start:
                moments.push(signal)
        self.last_evidence = evidence
        if row < self.probation or row <= self._quiet_until:
            return 0.0
        if evidence >= cfg.alarm_z:
            self._quiet_until = row + self.rest
        return evidence / (evidence + cfg.alarm_z) if evidence > 0.0 else 0.0


def rows_per_day(timestamps: Sequence[str]) -> int | None:
    """Rows per day from the median spacing of `timestamps` (None when it cannot be told)."""
    if len(timestamps) < 2:
        return None
    try:
        times = np.asarray([np.datetime64(t.strip().replace(" ", "T"), "s") for t in timestamps])
    except ValueError:
        return None
    spacing = float(np.median(np.diff(times).astype(np.float64)))
    if not math.isfinite(spacing) or spacing <= 0.0:
        return None
    return round(_SECONDS_PER_DAY / spacing)


def novelty_scores(
    values: npt.ArrayLike, probation: int, period: int | None = None, config: NoveltyConfig | None = None
) -> FloatArray:
    """Runs `OnlineNoveltyDetector` over `values` in order and returns every row's score."""
    detector = OnlineNoveltyDetector(probation, period, config)
    return np.asarray([detector.update(v) for v in np.asarray(values, dtype=np.float64).tolist()])


def nab_detector(series: NabSeries) -> FloatArray:
    """Foedus's detector on one NAB series (NAB tells detectors the probationary length)."""
    return novelty_scores(series.values, series.probation, rows_per_day(series.timestamps))


# -------------------------------------------------------------------------------------------- baselines


def windowed_gaussian(values: npt.ArrayLike, *, window: int = 6400, step: int = 100) -> FloatArray:
    """NAB's windowed Gaussian: ``1 - Q(|z|)`` of each value against the window before it.

    The window fills up to `window` values, then slides forward `step` values at a time; its mean and
    standard deviation are refreshed whenever it changes. The first value scores 0.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    out = np.zeros(n)
    if n < 2:
        return out
    centred = x - x[0]
    sums = np.concatenate([[0.0], np.cumsum(centred)])
    squares = np.concatenate([[0.0], np.cumsum(centred * centred)])
    # The window in force when row i is scored ends at row `end[i] - 1`.
    rows = np.arange(1, n)
    end = np.where(rows <= window, rows, window + ((rows - window) // step) * step)
    begin = np.maximum(end - window, 0)
    count = end - begin
    mean = (sums[end] - sums[begin]) / count
    var = (squares[end] - squares[begin]) / count - mean * mean
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-12)
    z = np.abs(centred[1:] - mean) / std
    out[1:] = [1.0 - 0.5 * math.erfc(v / math.sqrt(2.0)) for v in z.tolist()]
    return out


def windowed_gaussian_scores(series: NabSeries) -> FloatArray:
    return windowed_gaussian(series.values)


def stat_scores(values: npt.ArrayLike, scale: float = 4.0) -> FloatArray:
    """The agent's `AnomalyDetector` on one metric, its robust |z| reported as ``z / (z + scale)``.

    With the default `scale` (the agent's own threshold) an agent alarm is a score of 0.5 or more.
    """
    from foedus.client_sdk.agent.detector import AnomalyDetector

    detector = AnomalyDetector(1)
    out = []
    for v in np.asarray(values, dtype=np.float64).tolist():
        z = detector.update([v]).score
        out.append(z / (z + scale) if math.isfinite(z) else 0.0)
    return np.asarray(out, dtype=np.float64)


def stat_detector_scores(series: NabSeries) -> FloatArray:
    return stat_scores(series.values)


def with_rest_period(scores: npt.ArrayLike, alarm: float, rest: int, probation: int = 0) -> FloatArray:
    """`OnlineNoveltyDetector`'s post-processing applied to any scores (0 for `rest` rows after an alarm).

    Rows before `probation` are left as they are and raise no alarm.
    """
    out = np.array(scores, dtype=np.float64)
    quiet_until = -1
    for row in range(probation, out.size):
        if row <= quiet_until:
            out[row] = 0.0
        elif out[row] >= alarm:
            quiet_until = row + rest
    return out


def stat_rest_scores(series: NabSeries, stat: FloatArray | None = None) -> FloatArray:
    """The agent's detector with the same rest period as Foedus's NAB detector (an ablation).

    `stat` are the series' `stat_detector_scores` when already computed.
    """
    rest = round(NoveltyConfig().rest_fraction * series.probation)
    scores = stat_detector_scores(series) if stat is None else stat
    return with_rest_period(scores, 0.5, rest, series.probation)


def isolation_forest_available() -> bool:
    """Whether scikit-learn (for the IsolationForest baseline) can be imported."""
    try:
        import sklearn.ensemble  # noqa: F401
    except ImportError:
        return False
    return True


def isolation_forest(
    values: npt.ArrayLike,
    probation: int,
    *,
    lags: int = 8,
    refit_every: int = 2000,
    train: int = 2000,
    seed: int = 0,
) -> FloatArray:
    """IsolationForest on windows of the last `lags` values (and their first differences).

    Fitted on the windows of the probationary period and refitted every `refit_every` rows on the
    last `train` windows; each row is scored by the model fitted before it. Score: scikit-learn's
    anomaly score ``-score_samples`` (the original paper's ``2^(-E[h]/c(n))``), 0 during probation.
    """
    from sklearn.ensemble import IsolationForest

    x = np.asarray(values, dtype=np.float64)
    n = x.size
    out = np.zeros(n)
    if n <= lags:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(x, lags)  # row k: x[k : k + lags]
    features = np.hstack([windows, np.diff(windows, axis=1)])
    start = max(probation, lags)
    fitted_until = start
    model = None
    row = start
    while row < n:
        if model is None or row - fitted_until >= refit_every:
            first = max(0, row - lags + 1 - train)
            model = IsolationForest(n_estimators=100, random_state=seed).fit(features[first : row - lags + 1])
            fitted_until = row
        stop = min(n, fitted_until + refit_every)
        out[row:stop] = -model.score_samples(features[row - lags + 1 : stop - lags + 1])
        row = stop
    return out


def isolation_forest_scores(series: NabSeries) -> FloatArray:
    return isolation_forest(series.values, series.probation)
