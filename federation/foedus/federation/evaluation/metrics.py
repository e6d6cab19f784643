"""Detection metrics and unsupervised threshold rules for time-series anomaly detection (pure numpy).

Conventions: ``label`` is a per-point 0/1 array (1 = anomalous), ``pred`` a per-point boolean array
(True = flagged), ``scores`` a per-point float array (higher = more anomalous). A *segment* is a
maximal run of consecutive anomalous points, written as the half-open range ``(start, end)``.

Detection metrics
    * `precision_recall_f1` — plain point-wise precision, recall and F1 (no adjustment).
    * `point_adjust` / the ``*_pa`` figures of `detection_scores` — the point adjustment of Xu et al.
      (Donut, WWW 2018), used by OmniAnomaly, USAD, TranAD and most SMD results: when any point of a
      labelled segment is flagged, every point of that segment counts as flagged. Points outside
      labelled segments are unchanged. It is optimistic (one hit inside a long segment counts as
      the whole segment), so report plain F1 beside it.
    * `average_precision` — the area under the precision-recall curve as step-wise average
      precision, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing
      order; identical to scikit-learn's ``average_precision_score``. Threshold free, no adjustment.
    * `best_f1_threshold` — the threshold that maximises F1 *given the labels*: an oracle, for
      comparison with papers that report it, never for choosing a deployed threshold.

Root cause
    * `hit_rate` — HitRate@P% of OmniAnomaly (Su et al., KDD 2019): for an anomalous point whose
      ground-truth metric set is G, take the ``floor(P% * |G|)`` metrics with the highest
      contribution and score ``|top ∩ G| / |G|``; the figure is the mean over the anomalous points
      (every point of every interpreted segment, or only those the detector flagged when a mask is
      given), which is how the paper's evaluation code averages it.

Unsupervised thresholds (from scores on normal/training data only)
    * `quantile_threshold` — a high empirical quantile.
    * `pot_threshold` — Peaks-Over-Threshold (extreme value theory; Siffer et al., KDD 2017): fit a
      generalised Pareto distribution to the excesses over an initial high quantile and return the
      score whose exceedance probability is the requested risk. It extrapolates beyond the largest
      training score, which a plain quantile cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DetectionScores",
    "average_precision",
    "best_f1_threshold",
    "detection_scores",
    "fit_gpd",
    "hit_rate",
    "label_segments",
    "point_adjust",
    "pot_threshold",
    "precision_recall_f1",
    "quantile_threshold",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _as_bool(x: npt.ArrayLike) -> BoolArray:
    return np.asarray(x).astype(bool).ravel()


def _as_float(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64).ravel()


def label_segments(label: npt.ArrayLike) -> list[tuple[int, int]]:
    """Maximal runs of anomalous points as half-open ``(start, end)`` index ranges, in order."""
    lab = _as_bool(label).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], lab, [0]])))
    return [(int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def point_adjust(pred: npt.ArrayLike, label: npt.ArrayLike) -> BoolArray:
    """Point-adjusted predictions: a labelled segment with any flagged point is flagged entirely."""
    p = _as_bool(pred).copy()
    lab = _as_bool(label)
    if p.shape != lab.shape:
        raise ValueError(f"pred has {p.size} points, label {lab.size}")
    for start, end in label_segments(lab):
        if p[start:end].any():
            p[start:end] = True
    return p


def precision_recall_f1(pred: npt.ArrayLike, label: npt.ArrayLike) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1; a ratio with a zero denominator is 0.0."""
    p = _as_bool(pred)
    lab = _as_bool(label)
    if p.shape != lab.shape:
        raise ValueError(f"pred has {p.size} points, label {lab.size}")
    tp = float(np.sum(p & lab))
    fp = float(np.sum(p & ~lab))
    fn = float(np.sum(~p & lab))
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class DetectionScores:
    """Plain and point-adjusted precision, recall and F1 of one set of predictions."""

    precision: float
    recall: float
    f1: float
    precision_pa: float
    recall_pa: float
    f1_pa: float

    def as_dict(self) -> dict[str, float]:
        """The six figures by field name."""
        return {k: float(v) for k, v in asdict(self).items()}


def detection_scores(pred: npt.ArrayLike, label: npt.ArrayLike) -> DetectionScores:
    """Plain and point-adjusted (`point_adjust`) precision, recall and F1 of `pred` against `label`."""
    precision, recall, f1 = precision_recall_f1(pred, label)
    precision_pa, recall_pa, f1_pa = precision_recall_f1(point_adjust(pred, label), label)
    return DetectionScores(precision, recall, f1, precision_pa, recall_pa, f1_pa)


def average_precision(scores: npt.ArrayLike, label: npt.ArrayLike) -> float:
    """Area under the precision-recall curve (step-wise average precision, as scikit-learn computes it).

    Ties share one threshold. NaN when `label` has no anomalous point.
    """
    s = _as_float(scores)
    lab = _as_bool(label)
    if s.shape != lab.shape:
        raise ValueError(f"scores has {s.size} points, label {lab.size}")
    positives = int(lab.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    tp = np.cumsum(lab[order])
    # The last index of each group of tied scores is where that threshold's counts are complete.
    last = np.flatnonzero(np.concatenate([s_sorted[1:] != s_sorted[:-1], [True]]))
    tp_at = tp[last].astype(np.float64)
    flagged = (last + 1).astype(np.float64)
    precision = tp_at / flagged
    recall = tp_at / positives
    recall_step = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(recall_step * precision))


def best_f1_threshold(
    scores: npt.ArrayLike,
    label: npt.ArrayLike,
    *,
    point_adjusted: bool = False,
    candidates: int = 1000,
) -> tuple[float, float]:
    """ORACLE: the threshold (from `candidates` score quantiles) maximising F1 given the labels.

    Returns ``(threshold, f1)``; a point is flagged when its score is ``>= threshold``. With
    `point_adjusted`, the F1 is the point-adjusted one. Uses the labels, so it is only a reference
    figure (what papers that search the threshold on the test set report), not a detector.
    """
    s = _as_float(scores)
    lab = _as_bool(label)
    if s.shape != lab.shape:
        raise ValueError(f"scores has {s.size} points, label {lab.size}")
    grid = np.unique(np.quantile(s, np.linspace(0.0, 1.0, candidates)))
    positives = float(lab.sum())
    if positives == 0:
        return float(grid[-1]), 0.0
    normal_sorted = np.sort(s[~lab])
    fp = normal_sorted.size - np.searchsorted(normal_sorted, grid, side="left")
    if point_adjusted:
        segments = label_segments(lab)
        seg_max = np.array([s[a:b].max() for a, b in segments])
        seg_len = np.array([b - a for a, b in segments], dtype=np.float64)
        tp = (seg_max[None, :] >= grid[:, None]).astype(np.float64) @ seg_len
    else:
        pos_sorted = np.sort(s[lab])
        tp = (pos_sorted.size - np.searchsorted(pos_sorted, grid, side="left")).astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / positives
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    best = int(np.argmax(f1))
    return float(grid[best]), float(f1[best])


def hit_rate(
    feature_scores: npt.ArrayLike,
    segments: Sequence[tuple[int, int, Sequence[int]]],
    *,
    p: float = 1.0,
    mask: npt.ArrayLike | None = None,
) -> float:
    """HitRate@P% (OmniAnomaly) of per-point, per-feature contributions against interpreted segments.

    `feature_scores` is ``(T, F)``: higher means the feature contributes more to the point's anomaly.
    `segments` lists ``(start, end, dims)`` with a half-open point range and the 0-based features at
    fault. For every point t in a segment (only where ``mask[t]`` when a mask is given, e.g. the
    detector's flags) with ground truth G, the ``k = floor(p * |G|)`` highest-ranked features at t
    (ties broken by lower index) score ``|top_k ∩ G| / |G|``; the result is the mean over all such
    points, so long segments weigh more, as in the paper's evaluation code. NaN when no point counts.
    """
    fs = np.asarray(feature_scores, dtype=np.float64)
    if fs.ndim != 2:
        raise ValueError("feature_scores must be (T, F)")
    if p <= 0:
        raise ValueError("p must be positive")
    keep = None if mask is None else _as_bool(mask)
    if keep is not None and keep.size != fs.shape[0]:
        raise ValueError(f"mask has {keep.size} points, feature_scores {fs.shape[0]}")
    values: list[float] = []
    for start, end, dims in segments:
        truth = {int(d) for d in dims}
        if not truth:
            continue
        if min(truth) < 0 or max(truth) >= fs.shape[1]:
            raise ValueError(f"ground-truth dims {sorted(truth)} outside 0..{fs.shape[1] - 1}")
        k = math.floor(p * len(truth) + 1e-9)
        lo, hi = max(int(start), 0), min(int(end), fs.shape[0])
        for t in range(lo, hi):
            if keep is not None and not keep[t]:
                continue
            top = np.argsort(-fs[t], kind="stable")[:k]
            hits = len(truth.intersection(int(i) for i in top))
            values.append(hits / len(truth))
    return float(np.mean(values)) if values else math.nan


def quantile_threshold(scores: npt.ArrayLike, q: float = 0.99) -> float:
    """The empirical `q` quantile of (normal) scores: about ``1 - q`` of such scores reach it."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be within (0, 1)")
    return float(np.quantile(_as_float(scores), q))


def fit_gpd(excesses: npt.ArrayLike) -> tuple[float, float]:
    """Maximum-likelihood fit ``(xi, sigma)`` of a generalised Pareto distribution to positive excesses.

    Grimshaw's reduction: with ``theta = xi / sigma`` the likelihood is maximised in xi at
    ``xi(theta) = mean(log(1 + theta * y))``, leaving the one-dimensional profile
    ``l(theta) = -n (log(xi / theta) + xi + 1)`` (``theta -> 0`` is the exponential case), which is
    maximised on a log-spaced grid and refined around the best point. The shape is kept at
    ``xi >= -0.5``, where the maximum-likelihood estimate is regular (below it the likelihood is
    unbounded at the sample maximum).
    """
    y = _as_float(excesses)
    y = y[y > 0]
    if y.size < 2:
        raise ValueError("need at least two positive excesses")
    mean, ymax = float(y.mean()), float(y.max())

    def profile(theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        xi = np.log1p(np.outer(theta, y)).mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = -(np.log(xi / theta) + xi + 1.0)
        ll = np.where((xi >= -0.5) & np.isfinite(ll) & (xi != 0.0), ll, -np.inf)
        return xi, ll

    negative = -(1.0 - np.logspace(-10, 0, 300, endpoint=False)) / ymax
    positive = np.logspace(-6, 6, 400) / mean
    grid = np.concatenate([negative, positive])
    xi, ll = profile(grid)
    best = int(np.argmax(ll))
    lo = grid[max(best - 1, 0)]
    hi = grid[min(best + 1, grid.size - 1)]
    fine = np.linspace(lo, hi, 401)
    fine = fine[fine != 0.0]
    if fine.size:
        xi_f, ll_f = profile(fine)
        if ll_f.max() > ll[best]:
            j = int(np.argmax(ll_f))
            grid, xi, ll, best = fine, xi_f, ll_f, j
    exponential_ll = -(math.log(mean) + 1.0)
    if not np.isfinite(ll[best]) or exponential_ll >= ll[best]:
        return 0.0, mean
    shape = float(xi[best])
    return shape, shape / float(grid[best])


def pot_threshold(scores: npt.ArrayLike, *, risk: float = 1e-3, level: float = 0.98) -> float:
    """Peaks-Over-Threshold threshold of (normal) scores for an exceedance probability of `risk`.

    The initial threshold ``t`` is the `level` quantile; a generalised Pareto distribution
    (`fit_gpd`) is fitted to the ``N_t`` excesses over it and the returned threshold is
    ``t + sigma / xi * ((risk * n / N_t) ** -xi - 1)`` (``t - sigma * log(risk * n / N_t)`` when
    ``xi = 0``), n being the number of scores. The result is at least ``t``. With fewer than 10
    excesses (tiny or degenerate samples) it falls back to the ``1 - risk`` empirical quantile.
    """
    s = _as_float(scores)
    s = s[np.isfinite(s)]
    if not 0.0 < level < 1.0 or not 0.0 < risk < 1.0:
        raise ValueError("risk and level must be within (0, 1)")
    if s.size == 0:
        raise ValueError("no finite scores")
    t = float(np.quantile(s, level))
    peaks = s[s > t] - t
    if peaks.size < 10:
        return float(np.quantile(s, 1.0 - risk))
    xi, sigma = fit_gpd(peaks)
    ratio = risk * s.size / peaks.size
    if ratio >= 1.0:
        return t
    if xi == 0.0:
        return t - sigma * math.log(ratio)
    return float(t + sigma / xi * (ratio ** (-xi) - 1.0))
