"""Forecasts for progressive rollouts: a deployment's request rate, to pick low-load windows, and an
SLO metric's trend, to roll back before a breach rather than after it.

Load forecast (`forecast_load`, `lowest_load_windows`)
    The request-rate history is resampled to hourly means. Two forecasters compete on held-out
    history: a seasonal baseline (the median of the same hour-of-week over the last weeks, or of
    the same hour-of-day over the last days when there are under two weeks) and a small gradient
    boosted model on calendar and seasonal-lag features. The learned model is used only when its
    mean absolute error on the held-out hours is strictly lower than the baseline's; both errors
    are reported. Everything is deterministic: the same input gives the same forecast.

Trend forecast (`breach_probability`)
    A weighted least-squares line through the latest per-tick values of an SLO metric, and the
    Student-t predictive distribution of a new tick at the horizon, give the probability that the
    metric exceeds its SLO by then.

Only numpy and scikit-learn (with its threadpoolctl) are used; the Student-t tail is computed here
(regularised incomplete beta function by continued fraction), so nothing needs scipy's untyped API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HOUR_MS",
    "LEARNED_MODEL",
    "BreachForecast",
    "LoadForecast",
    "NotEnoughHistory",
    "Window",
    "breach_probability",
    "forecast_load",
    "lowest_load_windows",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

HOUR_MS = 3_600_000
"""The forecast step: one hour in milliseconds."""
LEARNED_MODEL = "gradient_boosting"
"""`LoadForecast.model` when the learned model won on held-out history."""
HOUR_OF_WEEK = "hour_of_week"
HOUR_OF_DAY = "hour_of_day"

_DAY_H = 24
_WEEK_H = 168
_MIN_HISTORY_H = 2 * _DAY_H
"""Observed hours needed for any forecast (two days: each hour of the day seen twice)."""
_WEEKLY_HISTORY_H = 2 * _WEEK_H
"""Observed hours needed for the hour-of-week profile (two weeks)."""
_LOOKBACK_H = 16 * _WEEK_H
"""History older than this before the forecast is ignored: it bounds time and memory, and the
baseline (6 weeks) and the learned model (3 weekly lags plus training rows) need less."""
_WEEKLY_DEPTH = 6
"""Weeks in the hour-of-week median. Measured on NAB nyc_taxi (20 weekly origins): 6 weeks gave
the lowest mean error of 3, 4, 5, 6, 8, 12 weeks and all history."""
_DAILY_DEPTH = 7
"""Days in the hour-of-day median (a week, so that each day of the week weighs the same)."""
_MAX_INTERPOLATED_GAP_H = 3
"""Gaps up to this many hours are bridged linearly; longer ones take the seasonal profile."""
_MAX_LAGS = 3
_MIN_TRAIN_ROWS = 24
_MAX_DAYS = 366.0
# Thursday 1970-01-01 00:00 UTC is hour 0 of the epoch; 72 hours later a week starts on Monday.
_MONDAY_OFFSET_H = 72


class NotEnoughHistory(ValueError):
    """The request-rate history is too short to forecast from.

    Attributes hold the observed hours (`have_hours`) and the hours needed (`need_hours`).
    """

    def __init__(self, have_hours: int, need_hours: int) -> None:
        super().__init__(
            f"not enough request-rate history to forecast: {have_hours} hour(s) with data, "
            f"at least {need_hours} hours ({need_hours // _DAY_H} days) needed"
        )
        self.have_hours = have_hours
        self.need_hours = need_hours


@dataclass(frozen=True, slots=True)
class LoadForecast:
    """An hourly request-rate forecast and how its model was chosen.

    `values[i]` is the forecast mean request rate (requests/s) over the hour
    `[start_ms + i * step_ms, start_ms + (i + 1) * step_ms)`.
    """

    start_ms: int
    """First forecast hour, aligned to the hour (UTC): the first hour that starts at or after now."""
    step_ms: int
    """Always `HOUR_MS`."""
    values: tuple[float, ...]
    """Forecast requests/s per hour, all finite and >= 0."""
    model: str
    """`"hour_of_week"`, `"hour_of_day"` (the seasonal baseline) or `LEARNED_MODEL`."""
    baseline_mae: float
    """Mean absolute error (requests/s) of the seasonal baseline on the held-out hours."""
    model_mae: float
    """Held-out error of the chosen model; equals `baseline_mae` when the baseline was chosen."""
    history_hours: int
    """Hours of history with data that the forecast used (at most 16 weeks)."""
    learned_mae: float | None = None
    """Held-out error of the learned model, chosen or not; None when there was too little history
    to train it."""
    holdout_hours: int = 0
    """Length of the held-out stretch at the end of the history (24, 48 or 168 hours)."""

    @property
    def end_ms(self) -> int:
        """End of the horizon (exclusive)."""
        return self.start_ms + len(self.values) * self.step_ms

    def at(self, time_ms: int) -> float:
        """The forecast for the hour that contains `time_ms`.

        Raises ValueError when `time_ms` is outside `[start_ms, end_ms)`.
        """
        if not self.start_ms <= time_ms < self.end_ms:
            raise ValueError(
                f"time {time_ms} ms is outside the forecast horizon [{self.start_ms}, {self.end_ms}) ms"
            )
        return self.values[int((time_ms - self.start_ms) // self.step_ms)]


@dataclass(frozen=True, slots=True)
class Window:
    """A candidate deployment window and its forecast load."""

    start_ms: int
    end_ms: int
    mean_rps: float
    """Forecast mean requests/s over the window."""
    relative_to_mean: float
    """`mean_rps` over the mean of the whole horizon (1.0 when that mean is 0)."""
    relative_to_peak: float
    """`mean_rps` over the highest hour of the horizon (1.0 when that peak is 0)."""


@dataclass(frozen=True, slots=True)
class BreachForecast:
    """Where an SLO metric's trend leads, and how likely it is to breach the SLO."""

    probability: float
    """P(a new tick at now + horizon > slo) under the fitted trend (now = the latest tick)."""
    predicted: float
    """Point forecast of the metric at the horizon."""
    slope_per_s: float
    """Fitted slope, metric units per second."""
    points: int
    """Ticks the fit used."""


# --------------------------------------------------------------------------------------------
# Load forecast
# --------------------------------------------------------------------------------------------


def forecast_load(
    times_ms: Sequence[int] | np.ndarray,
    rps: Sequence[float] | np.ndarray,
    *,
    now_ms: int,
    days: float = 7.0,
) -> LoadForecast:
    """Forecast a deployment's hourly request rate for the next `days` days.

    Method:
    1. Samples are sorted, samples at or after the first forecast hour and those older than 16
       weeks are dropped, and the rest are averaged into UTC hour buckets (so any regular step
       of an hour or finer works; hourly buckets pass through unchanged). Hours without samples
       are missing, never zero: gaps of up to 3 hours are bridged linearly and longer ones take
       the seasonal profile where a model needs a value; errors are measured on observed hours
       only.
    2. Seasonal baseline: with >= 2 weeks of observed hours, the median of each hour-of-week over
       its last 6 weeks (a slot never observed takes the hour-of-day value); with >= 2 days, the
       median of each hour-of-day over its last 7 days.
    3. Learned model: scikit-learn's HistGradientBoostingRegressor (fixed seed, no early
       stopping, so deterministic) on the hour of day, the day of week (weekly mode only), the
       values 1..3 periods earlier (period: a week with >= 2 weeks of history, else a day) and
       their mean and median. It forecasts a period at a time, feeding its own output back as
       lags beyond the first period.
    4. Both are fitted on the history less its last stretch (168 hours with >= 3 weeks of data,
       48 with >= 4 days, else 24) and scored on that stretch by mean absolute error over its
       observed hours. The period (week or day) is set by the whole history, so the held-out
       fits are of the same kind as the final one. The learned model is refitted on all history
       and used only if its held-out error is strictly lower than the baseline's.

    Guarantees: values are finite and >= 0; the same input gives the same output; a constant
    series is forecast as that constant.

    Raises:
        ValueError: mismatched lengths, a NaN, infinite or negative rate, a non-finite time, or
            `days` outside (0, 366].
        NotEnoughHistory: fewer than 48 hours with data before the forecast.
    """
    if not (math.isfinite(days) and 0 < days <= _MAX_DAYS):
        raise ValueError(f"days must be in (0, {_MAX_DAYS:g}], got {days!r}")
    horizon = max(1, round(days * _DAY_H))
    t, v = _validated_history(times_ms, rps)
    start_hour = -(-int(now_ms) // HOUR_MS)
    keep = (t < start_hour * HOUR_MS) & (t >= (start_hour - _LOOKBACK_H) * HOUR_MS)
    t, v = t[keep], v[keep]
    if t.size == 0:
        raise NotEnoughHistory(0, _MIN_HISTORY_H)

    first_hour = int(t[0] // HOUR_MS)
    y = _hourly_means(t, v, first_hour, start_hour - first_hour)
    observed = ~np.isnan(y)
    n_obs = int(observed.sum())
    if n_obs < _MIN_HISTORY_H:
        raise NotEnoughHistory(n_obs, _MIN_HISTORY_H)

    # One period for the held-out fits and the final one, so that the model scored is the model used.
    period = _WEEK_H if n_obs >= _WEEKLY_HISTORY_H else _DAY_H
    # Held-out stretch: the last `holdout` hours up to the last observed one.
    end = int(np.flatnonzero(observed)[-1]) + 1
    if n_obs >= _WEEKLY_HISTORY_H + _WEEK_H:
        holdout = _WEEK_H
    elif n_obs >= 4 * _DAY_H:
        holdout = 2 * _DAY_H
    else:
        holdout = _DAY_H
    origin = end - holdout
    truth = y[origin:end]
    scored = ~np.isnan(truth)
    baseline_heldout = _baseline_forecast(y[:origin], first_hour, period, holdout)
    baseline_mae = float(np.mean(np.abs(baseline_heldout[scored] - truth[scored])))
    learned_heldout = _learned_forecast(y[:origin], first_hour, period, holdout)
    learned_mae = (
        None if learned_heldout is None else float(np.mean(np.abs(learned_heldout[scored] - truth[scored])))
    )

    name = HOUR_OF_WEEK if period == _WEEK_H else HOUR_OF_DAY
    values = _baseline_forecast(y, first_hour, period, horizon)
    model_mae = baseline_mae
    if learned_mae is not None and learned_mae < baseline_mae:
        learned = _learned_forecast(y, first_hour, period, horizon)
        if learned is not None:  # more history than the held-out fit had, so always trainable
            name, values, model_mae = LEARNED_MODEL, learned, learned_mae

    return LoadForecast(
        start_ms=start_hour * HOUR_MS,
        step_ms=HOUR_MS,
        values=tuple(float(x) for x in np.maximum(values, 0.0)),
        model=name,
        baseline_mae=baseline_mae,
        model_mae=model_mae,
        history_hours=n_obs,
        learned_mae=learned_mae,
        holdout_hours=holdout,
    )


def lowest_load_windows(
    forecast: LoadForecast,
    *,
    duration_s: float = 3600.0,
    count: int = 3,
    not_before_ms: int | None = None,
) -> list[Window]:
    """The `count` non-overlapping windows of `duration_s` with the lowest forecast mean load.

    Windows start on the hour, lie inside the horizon and start no earlier than `not_before_ms`
    (rounded up to the hour). The forecast is a step function of its hourly values, so a window
    that covers part of an hour weighs that hour by the part covered. Windows are picked greedily:
    the lowest-load window first, then the lowest that overlaps none picked so far (ties: the
    earliest), and returned in that order. Fewer than `count` (possibly none) are returned when
    no more fit.

    Raises ValueError for a non-positive or non-finite duration or a count below 1.
    """
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be a positive number of seconds, got {duration_s!r}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    values = np.asarray(forecast.values, dtype=np.float64)
    step = forecast.step_ms
    duration_ms = round(duration_s * 1000.0)
    full, partial_ms = divmod(duration_ms, step)
    first = 0
    if not_before_ms is not None and not_before_ms > forecast.start_ms:
        first = -(-(not_before_ms - forecast.start_ms) // step)
    # Candidate i starts at hour i and needs hours i .. i + full (the last only if partial).
    last = values.size - full - (1 if partial_ms else 0)
    if duration_ms <= 0 or last < first:
        return []
    starts = np.arange(first, last + 1)
    cumulative = np.concatenate(([0.0], np.cumsum(values)))
    load = cumulative[starts + full] - cumulative[starts]
    if partial_ms:
        load = load + values[starts + full] * (partial_ms / step)
    means = load / (duration_ms / step)

    horizon_mean = float(values.mean())
    peak = float(values.max())
    chosen: list[Window] = []
    taken: list[int] = []
    for i in np.lexsort((starts, means)):
        begin = forecast.start_ms + int(starts[i]) * step
        if any(abs(begin - other) < duration_ms for other in taken):
            continue
        mean = float(means[i])
        chosen.append(
            Window(
                start_ms=begin,
                end_ms=begin + duration_ms,
                mean_rps=mean,
                relative_to_mean=mean / horizon_mean if horizon_mean > 0 else 1.0,
                relative_to_peak=mean / peak if peak > 0 else 1.0,
            )
        )
        taken.append(begin)
        if len(chosen) == count:
            break
    return chosen


def _validated_history(
    times_ms: Sequence[int] | np.ndarray, rps: Sequence[float] | np.ndarray
) -> tuple[IntArray, FloatArray]:
    """Times (int ms) and rates as sorted 1-D arrays; ValueError naming the first bad entry."""
    times = np.asarray(times_ms)
    rates = np.asarray(rps, dtype=np.float64)
    if times.ndim != 1 or rates.ndim != 1:
        raise ValueError("times_ms and rps must be one-dimensional")
    if times.shape != rates.shape:
        raise ValueError(f"times_ms has {times.size} entries but rps has {rates.size}")
    if times.dtype.kind not in "iu":
        times_f = times.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(times_f))
        if bad.size:
            raise ValueError(f"times_ms[{bad[0]}] is not a finite time: {float(times_f[bad[0]])}")
        times = np.floor(times_f)
    nan = np.flatnonzero(np.isnan(rates))
    if nan.size:
        raise ValueError(f"rps[{nan[0]}] is NaN ({nan.size} NaN value(s) in all)")
    inf = np.flatnonzero(np.isinf(rates))
    if inf.size:
        raise ValueError(f"rps[{inf[0]}] is infinite")
    negative = np.flatnonzero(rates < 0)
    if negative.size:
        raise ValueError(
            f"rps[{negative[0]}] = {float(rates[negative[0]])} is negative "
            f"({negative.size} negative value(s) in all); request rates are >= 0"
        )
    t = times.astype(np.int64)
    order = np.argsort(t, kind="stable")
    return t[order], rates[order]


def _hourly_means(t: IntArray, v: FloatArray, first_hour: int, hours: int) -> FloatArray:
    """Mean of the samples in each hour `first_hour .. first_hour + hours - 1`; NaN where none."""
    offsets = t // HOUR_MS - first_hour
    sums = np.bincount(offsets, weights=v, minlength=hours)[:hours]
    counts = np.bincount(offsets, minlength=hours)[:hours]
    out = np.full(hours, np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out


def _hour_of_week(hours: IntArray) -> IntArray:
    """0 = Monday 00:00 UTC."""
    return (hours + _MONDAY_OFFSET_H) % _WEEK_H


def _profile(y: FloatArray, slots: IntArray, period: int, depth: int) -> FloatArray:
    """Per slot, the median of its last `depth` observed values; NaN for a slot never observed."""
    out = np.full(period, np.nan)
    observed = ~np.isnan(y)
    for slot in range(period):
        seen = y[(slots == slot) & observed]
        if seen.size:
            out[slot] = np.median(seen[-depth:])
    return out


def _seasonal_profile(y: FloatArray, first_hour: int, period: int) -> FloatArray:
    """The baseline's profile: per hour-of-week (period 168) or hour-of-day (period 24).

    A slot with no observation takes the hour-of-day value, an hour of the day with none the
    median of all. Requires at least one observed value in `y`.
    """
    hours = first_hour + np.arange(y.size, dtype=np.int64)
    daily = _profile(y, hours % _DAY_H, _DAY_H, _DAILY_DEPTH)
    daily = np.where(np.isnan(daily), float(np.nanmedian(y)), daily)
    if period == _DAY_H:
        return daily
    weekly = _profile(y, _hour_of_week(hours), _WEEK_H, _WEEKLY_DEPTH)
    fallback = daily[(np.arange(_WEEK_H) - _MONDAY_OFFSET_H) % _DAY_H]
    return np.where(np.isnan(weekly), fallback, weekly)


def _slots_of(hours: IntArray, period: int) -> IntArray:
    return _hour_of_week(hours) if period == _WEEK_H else hours % _DAY_H


def _baseline_forecast(y: FloatArray, first_hour: int, period: int, horizon: int) -> FloatArray:
    """The seasonal baseline for the `horizon` hours that follow `y`."""
    profile = _seasonal_profile(y, first_hour, period)
    future = first_hour + y.size + np.arange(horizon, dtype=np.int64)
    return profile[_slots_of(future, period)]


def _filled(y: FloatArray, first_hour: int, period: int) -> FloatArray:
    """`y` with short gaps bridged linearly and the rest of the missing hours set to the profile."""
    missing = np.isnan(y)
    if not missing.any():
        return y
    out = y.copy()
    index = np.arange(y.size)
    seen = index[~missing]
    # Length of the gap each missing hour sits in (interior gaps only: both ends observed).
    nxt = np.searchsorted(seen, index)
    interior = missing & (nxt > 0) & (nxt < seen.size)
    gap = np.zeros(y.size, dtype=np.int64)
    gap[interior] = seen[nxt[interior]] - seen[nxt[interior] - 1] - 1
    bridge = interior & (gap <= _MAX_INTERPOLATED_GAP_H)
    out[bridge] = np.interp(index[bridge], seen, y[seen])
    rest = np.isnan(out)
    if rest.any():
        profile = _seasonal_profile(y, first_hour, period)
        out[rest] = profile[_slots_of(first_hour + index[rest].astype(np.int64), period)]
    return out


def _features(series: FloatArray, rows: IntArray, first_hour: int, period: int, lags: int) -> FloatArray:
    """Calendar and seasonal-lag features for the hours `rows` (indices into `series`)."""
    hours = first_hour + rows
    columns: list[FloatArray] = [(hours % _DAY_H).astype(np.float64)]
    if period == _WEEK_H:
        columns.append((_hour_of_week(hours) // _DAY_H).astype(np.float64))
    lagged = np.stack([series[rows - k * period] for k in range(1, lags + 1)], axis=1)
    columns.extend(lagged.T)
    if lags > 1:
        columns.append(lagged.mean(axis=1))
        columns.append(np.median(lagged, axis=1))
    return np.stack(columns, axis=1)


def _learned_forecast(y: FloatArray, first_hour: int, period: int, horizon: int) -> FloatArray | None:
    """The learned model's forecast for the `horizon` hours after `y`; None if it can't be trained."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    lags = min(_MAX_LAGS, y.size // period - 1)
    if lags < 1:
        return None
    series = _filled(y, first_hour, period)
    rows = np.arange(lags * period, y.size, dtype=np.int64)
    rows = rows[~np.isnan(y[rows])]
    if rows.size < _MIN_TRAIN_ROWS:
        return None
    categorical = [True, True] if period == _WEEK_H else [True]
    categorical += [False] * (lags + (2 if lags > 1 else 0))
    model: Any = HistGradientBoostingRegressor(
        max_iter=100,
        learning_rate=0.1,
        max_depth=4,
        min_samples_leaf=20,
        early_stopping=False,
        categorical_features=categorical,
        random_state=0,
    )
    extended = np.concatenate([series, np.zeros(horizon)])
    # One thread: on ~10^3 rows OpenMP's start-up costs more than it saves, and on a busy server
    # its spin-waits can turn a tenth of a second into seconds.
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(_features(series, rows, first_hour, period, lags), y[rows])
        for block in range(y.size, y.size + horizon, period):
            ahead = np.arange(block, min(block + period, y.size + horizon), dtype=np.int64)
            predicted = np.asarray(model.predict(_features(extended, ahead, first_hour, period, lags)))
            extended[ahead] = np.maximum(predicted, 0.0)
    return extended[y.size :]


# --------------------------------------------------------------------------------------------
# Trend forecast for predictive rollback
# --------------------------------------------------------------------------------------------


def breach_probability(
    times_s: Sequence[float] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    slo: float,
    horizon_s: float,
    weights: Sequence[float] | np.ndarray | None = None,
    min_points: int = 6,
    max_points: int = 30,
) -> BreachForecast | None:
    """The probability that an SLO metric exceeds `slo` at `horizon_s` after the latest tick.

    Method: ticks with zero weight are dropped, the rest sorted by time, and the latest
    `max_points` kept (a window in ticks, so the fit follows the candidate's recent behaviour at
    any tick rate). A weighted least-squares line is fitted, the weights (e.g. request counts per
    tick) taken as precisions: a tick's variance is inversely proportional to its weight. Weights
    are scaled to mean 1, so the residual variance s^2 = sum(w r^2) / (n - 2) is that of a tick of
    typical weight. A new typical tick at the horizon t_h then has the predictive distribution
    predicted + s * sqrt(1 + 1/n + (t_h - t_w)^2 / S_tt) * T(n - 2), with t_w the weighted mean
    time and S_tt = sum(w (t - t_w)^2): the tick's own noise plus the uncertainty of the fitted
    line at t_h, which grows with the distance from the data. The result is P(value > slo).

    When the residuals are exactly zero the line is certain and the probability is 0 or 1.

    Returns None with fewer than `min_points` ticks of positive weight, or when all of them share
    one time (no slope can be fitted).

    Raises ValueError for mismatched lengths, non-finite numbers, negative weights, a negative
    horizon, `min_points` below 3 (a Student-t needs one degree of freedom) or `max_points`
    below `min_points`.
    """
    if min_points < 3:
        raise ValueError(f"min_points must be at least 3, got {min_points}")
    if max_points < min_points:
        raise ValueError(f"max_points ({max_points}) must be at least min_points ({min_points})")
    if not math.isfinite(slo):
        raise ValueError(f"slo must be finite, got {slo!r}")
    if not (math.isfinite(horizon_s) and horizon_s >= 0):
        raise ValueError(f"horizon_s must be a finite number >= 0, got {horizon_s!r}")
    t = np.asarray(times_s, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (t.ndim == y.ndim == w.ndim == 1 and t.size == y.size == w.size):
        raise ValueError(
            f"times_s, values and weights must be 1-D of one length, got {t.shape}, {y.shape}, {w.shape}"
        )
    for name, array in (("times_s", t), ("values", y), ("weights", w)):
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] is not finite: {float(array[bad[0]])}")
    negative = np.flatnonzero(w < 0)
    if negative.size:
        raise ValueError(f"weights[{negative[0]}] = {float(w[negative[0]])} is negative")

    keep = w > 0
    t, y, w = t[keep], y[keep], w[keep]
    order = np.argsort(t, kind="stable")[-max_points:]
    t, y, w = t[order], y[order], w[order]
    n = t.size
    if n < min_points:
        return None

    now = float(t[-1])
    x = t - now  # small numbers: epoch seconds squared would lose precision
    w = w / w.mean()
    x_w = float(np.dot(w, x) / n)
    y_w = float(np.dot(w, y) / n)
    dx = x - x_w
    s_xx = float(np.dot(w, dx * dx))
    if s_xx <= 0.0 or s_xx <= 1e-12 * float(np.dot(w, x * x)):
        return None
    slope = float(np.dot(w, dx * (y - y_w)) / s_xx)
    at_horizon = horizon_s - x_w
    predicted = y_w + slope * at_horizon
    residuals = y - (y_w + slope * dx)
    s2 = float(np.dot(w, residuals * residuals)) / (n - 2)
    scale = math.sqrt(s2 * (1.0 + 1.0 / n + at_horizon * at_horizon / s_xx))
    if scale == 0.0 or not math.isfinite(scale):
        probability = 1.0 if predicted > slo else 0.0
    else:
        probability = _student_t_sf((slo - predicted) / scale, n - 2)
    return BreachForecast(probability=probability, predicted=predicted, slope_per_s=slope, points=n)


def _student_t_sf(x: float, dof: int) -> float:
    """P(T > x) for Student's t with `dof` degrees of freedom."""
    if math.isnan(x):
        return math.nan
    if math.isinf(x):
        return 0.0 if x > 0 else 1.0
    tail = 0.5 * _regularized_incomplete_beta(dof / 2.0, 0.5, dof / (dof + x * x))
    return tail if x > 0 else 1.0 - tail


def _regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1, by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        # The fraction converges fast only below this point; use I_x(a, b) = 1 - I_{1-x}(b, a).
        return 1.0 - _regularized_incomplete_beta(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        # Even term d_{2m}, then odd term d_{2m+1} of the continued fraction.
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a
