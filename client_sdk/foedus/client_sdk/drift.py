"""Data drift from counts on a reference profile's bins: one computation for the server and the SDK.

Agents count each input feature on the bins of the version's reference profile (`BinnedCounts`);
the control plane compares those counts with the profile's own. `compare_datasets` does the same
in memory: it profiles a reference sample, counts a current sample on the reference's bins with the
agents' counter, and runs the very same statistics. Nothing here needs more than numpy, so the base
SDK install computes exactly what the server reports.

Layout of a feature's counts (`FeatureCounts.counts`): numeric features ``[underflow, bin_0, ...,
bin_k-1, overflow]`` (values below the first edge, the bins in order, values above the last edge);
categorical features ``[category_0, ..., category_k-1, other]``. Missing values are counted apart
and enter no statistic.

Statistics of a feature (reference counts ``r``, current counts ``c``, shares ``p = r / sum r`` and
``q = c / sum c``):

``psi``
    Population stability index ``sum (q - p) ln(q / p)``, shares floored at 1e-4.
``js_distance``
    Jensen-Shannon distance, natural logarithm (as ``scipy.spatial.distance.jensenshannon``):
    within ``[0, sqrt(ln 2)]``.
``chi2``, ``chi2_p_value``
    Pearson's chi-square test of homogeneity of the 2 x K table of both samples (bins empty in both
    left out; ``scipy.stats.chi2_contingency`` without continuity correction): both samples are
    treated as samples, so a reference of finite size is not taken as the truth.
``ks_statistic``, ``ks_p_value`` (numeric only)
    Two-sample Kolmogorov-Smirnov statistic on the binned CDFs: the largest CDF difference at the
    bin edges, where both CDFs are known exactly. It is at most the statistic on raw values (the
    largest gap may lie inside a bin). The p-value is the asymptotic Kolmogorov one with
    ``n_eff = n m / (n + m)`` (``scipy.stats.kstwobign``).
``wasserstein`` (numeric only)
    First Wasserstein distance ``integral |F_r - F_c| dx`` with both CDFs linear inside each bin
    (values spread evenly over the bin), values outside the edges placed on the nearest edge, divided
    by the reference's standard deviation under the same assumption (floored at 0.001): Evidently's
    "normed Wasserstein distance" on bins.

Which statistic decides (`method`, default ``"auto"``): the rule Evidently's DataDriftPreset uses by
default, so results compare with a tool people know. With more than `DriftThresholds.small_sample`
reference rows, numeric features with more than 5 bins are tested by the normed Wasserstein distance
(drift at >= `DriftThresholds.wasserstein`, 0.1), other features by the Jensen-Shannon distance
(>= `DriftThresholds.js_distance`, 0.1): at such sizes every p-value test flags differences too
small to matter. With a small reference, numeric features with more than 5 bins use the KS p-value
and the others the chi-square p-value (drift at < `DriftThresholds.p_value`, 0.05). A fixed method
(``"psi"``, ``"js"``, ``"wasserstein"``, ``"chi2"``, ``"ks"``) applies to every feature it is
defined for; a numeric-only method falls back to ``"js"`` on categorical features. The dataset
drifts when the share of drifted features reaches `DriftThresholds.drift_share` (0.5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from foedus.client_sdk.agent.histogram import BinnedCounts
from foedus.client_sdk.profile import (
    DEFAULT_BINS,
    DEFAULT_MAX_CATEGORIES,
    compute_reference_profile,
    table_columns,
)
from foedus.v1 import common_pb2, monitoring_pb2

__all__ = [
    "API_THRESHOLDS",
    "METHODS",
    "DriftReport",
    "DriftThresholds",
    "FeatureCounts",
    "FeatureDrift",
    "binned_ks",
    "binned_wasserstein",
    "chi2_homogeneity",
    "compare_datasets",
    "counts_from_binned",
    "drift_report",
    "feature_drift",
    "jensen_shannon_distance",
    "population_stability_index",
    "reference_counts",
    "thresholds_message",
]

NUMERIC: Final = "numeric"
CATEGORICAL: Final = "categorical"
METHODS: Final[tuple[str, ...]] = ("auto", "psi", "js", "wasserstein", "chi2", "ks")
_NUMERIC_ONLY: Final = frozenset({"wasserstein", "ks"})
_MIN_DISTANCE_BINS: Final = 6
"""Numeric features with fewer bins are compared as categories (Evidently: more than 5 values)."""
_PSI_EPSILON: Final = 1e-4
_MIN_STD: Final = 0.001

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """When a feature, and the dataset, count as drifted. The defaults are Evidently's."""

    js_distance: float = 0.1
    """Jensen-Shannon distance (natural log) at or above which a feature drifted."""
    wasserstein: float = 0.1
    """Normed Wasserstein distance at or above which a numeric feature drifted."""
    psi: float = 0.2
    """PSI at or above which a feature drifted (method "psi"; 0.1 moderate, 0.25 large by custom)."""
    p_value: float = 0.05
    """Chi-square or KS p-value below which a feature drifted (methods "chi2", "ks")."""
    drift_share: float = 0.5
    """Share of drifted features at or above which the dataset drifted."""
    small_sample: int = 1000
    """With at most this many reference rows, "auto" uses p-value tests instead of distances."""

    def validate(self) -> None:
        """Raises ValueError naming the first value out of range."""
        for name in ("js_distance", "wasserstein", "psi"):
            if not getattr(self, name) > 0.0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"threshold {name} must be a positive number")
        if not 0.0 < self.p_value < 1.0:
            raise ValueError("threshold p_value must be between 0 and 1")
        if not 0.0 < self.drift_share <= 1.0:
            raise ValueError("threshold drift_share must be in (0, 1]")
        if self.small_sample < 0:
            raise ValueError("small_sample must not be negative")


@dataclass(frozen=True, slots=True)
class FeatureCounts:
    """Counts of one feature on a reference profile's bins (layout in the module docstring)."""

    name: str
    edges: FloatArray | None
    """Numeric bin edges (k + 1 for k bins); None for a categorical feature."""
    counts: IntArray
    missing: int = 0

    @property
    def kind(self) -> str:
        return NUMERIC if self.edges is not None else CATEGORICAL

    @property
    def total(self) -> int:
        """Values counted, missing ones left out."""
        return int(self.counts.sum())


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """Every statistic of one feature, and the verdict of the method that decides."""

    name: str
    kind: str
    method: str
    """The statistic that decides: psi, js, wasserstein, chi2 or ks."""
    score: float
    """Its value (a p-value for chi2 and ks)."""
    threshold: float
    drifted: bool
    reference_count: int
    current_count: int
    current_missing: int
    psi: float
    js_distance: float
    chi2: float
    chi2_p_value: float
    ks_statistic: float
    """NaN for categorical features, as are ks_p_value and wasserstein."""
    ks_p_value: float
    wasserstein: float


@dataclass(frozen=True, slots=True)
class DriftReport:
    features: tuple[FeatureDrift, ...]
    drifted_features: int
    """Features with current counts that drifted."""
    compared_features: int
    """Features with counts on both sides; the drift share is over these."""
    drift_share: float
    dataset_drift: bool
    thresholds: DriftThresholds

    def drifted(self) -> list[str]:
        """Names of the drifted features, in profile order."""
        return [f.name for f in self.features if f.drifted]


API_THRESHOLDS: Final[tuple[str, ...]] = ("js_distance", "wasserstein", "psi", "p_value", "drift_share")
"""The `DriftThresholds` fields the API carries (message foedus.v1.DriftThresholds)."""


def thresholds_message(thresholds: DriftThresholds) -> monitoring_pb2.DriftThresholds:
    """The thresholds as the API carries them."""
    return monitoring_pb2.DriftThresholds(**{name: getattr(thresholds, name) for name in API_THRESHOLDS})


# --- statistics on two count arrays -------------------------------------------------------------


def _pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"count arrays differ in length: {x.size} and {y.size}")
    return x, y


def population_stability_index(
    expected: npt.ArrayLike, actual: npt.ArrayLike, eps: float = _PSI_EPSILON
) -> float:
    """PSI = sum (a - e) ln(a / e) over bins of two count arrays, shares floored at `eps`.

    Symmetric in its arguments; 0 for identical shares; 0.1 and 0.25 are the usual "moderate" and
    "large" shift marks. NaN if either array is empty (all zero).
    """
    e, a = _pair(expected, actual)
    if e.sum() <= 0.0 or a.sum() <= 0.0:
        return math.nan
    pe = np.maximum(e / e.sum(), eps)
    pa = np.maximum(a / a.sum(), eps)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def jensen_shannon_distance(
    p_counts: npt.ArrayLike, q_counts: npt.ArrayLike, *, base: float = math.e
) -> float:
    """Jensen-Shannon distance (square root of the divergence) of two count arrays.

    Natural log by default, as scipy's; ``base=2`` gives a distance within [0, 1]. NaN if either
    array is empty (all zero).
    """
    p, q = _pair(p_counts, q_counts)
    if p.sum() <= 0.0 or q.sum() <= 0.0:
        return math.nan
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(x: FloatArray) -> float:
        inside = x > 0.0
        return float(np.sum(x[inside] * np.log(x[inside] / m[inside])))

    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)) / math.log(base))


def _upper_gamma_regularized(a: float, x: float) -> float:
    """Q(a, x) = Gamma(a, x) / Gamma(a): a series below a + 1, a continued fraction above."""
    if x <= 0.0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's method for the continued fraction of Gamma(a, x).
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi2_sf(statistic: float, dof: int) -> float:
    """Survival function of the chi-square distribution (``scipy.stats.chi2.sf``)."""
    if dof <= 0:
        return math.nan
    return _upper_gamma_regularized(dof / 2.0, statistic / 2.0)


def chi2_homogeneity(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[float, float]:
    """Pearson's chi-square statistic and p-value for "both samples come from one distribution".

    The 2 x K table of counts, bins empty on both sides left out; (0, 1) with fewer than two bins
    left, (NaN, NaN) if a side is empty.
    """
    r, c = _pair(reference, current)
    if r.sum() <= 0.0 or c.sum() <= 0.0:
        return math.nan, math.nan
    keep = (r + c) > 0.0
    r, c = r[keep], c[keep]
    if r.size < 2:
        return 0.0, 1.0
    table = np.stack([r, c])
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, chi2_sf(statistic, r.size - 1)


def kolmogorov_sf(x: float) -> float:
    """Survival function of the Kolmogorov distribution (``scipy.stats.kstwobign.sf``)."""
    if x <= 0.0:
        return 1.0
    if x < 1.0:
        # The alternating series converges slowly here; use the theta-function form of the CDF.
        z = -(math.pi**2) / (8.0 * x * x)
        cdf = math.sqrt(2.0 * math.pi) / x * sum(math.exp((2 * k - 1) ** 2 * z) for k in range(1, 20))
        return max(0.0, 1.0 - cdf)
    total = 0.0
    for k in range(1, 101):
        term = (-1.0) ** (k - 1) * math.exp(-2.0 * k * k * x * x)
        total += term
        if abs(term) < 1e-17:
            break
    return min(1.0, max(0.0, 2.0 * total))


def binned_ks(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[float, float]:
    """KS statistic on the binned CDFs (counts in value order) and its asymptotic p-value."""
    r, c = _pair(reference, current)
    n, m = r.sum(), c.sum()
    if n <= 0.0 or m <= 0.0:
        return math.nan, math.nan
    d = float(np.max(np.abs(np.cumsum(r) / n - np.cumsum(c) / m)))
    return d, kolmogorov_sf(math.sqrt(n * m / (n + m)) * d)


def binned_wasserstein(edges: npt.ArrayLike, reference: npt.ArrayLike, current: npt.ArrayLike) -> float:
    """Normed Wasserstein distance of numeric counts ``[underflow, *bins, overflow]`` (module docstring)."""
    e = np.asarray(edges, dtype=np.float64).ravel()
    r, c = _pair(reference, current)
    if r.size != e.size + 1:
        raise ValueError(f"{e.size} edges need {e.size + 1} counts (underflow, bins, overflow), got {r.size}")
    n, m = r.sum(), c.sum()
    if n <= 0.0 or m <= 0.0:
        return math.nan
    # CDF differences at every edge: after the underflow, then after each bin.
    diff = np.cumsum(r[:-1]) / n - np.cumsum(c[:-1]) / m
    a, b = diff[:-1], diff[1:]
    widths = np.diff(e)
    same_sign = a * b >= 0.0
    absum = np.abs(a) + np.abs(b)
    crossing = np.divide(a * a + b * b, 2.0 * absum, out=np.zeros_like(absum), where=absum > 0.0)
    distance = float(np.sum(widths * np.where(same_sign, 0.5 * absum, crossing)))
    # Reference moments with values spread evenly inside each bin, outside ones on the edges.
    share = r / n
    mids = 0.5 * (e[:-1] + e[1:])
    mean = share[0] * e[0] + float(np.sum(share[1:-1] * mids)) + share[-1] * e[-1]
    second = (
        share[0] * e[0] ** 2
        + float(np.sum(share[1:-1] * (mids**2 + widths**2 / 12.0)))
        + share[-1] * e[-1] ** 2
    )
    std = math.sqrt(max(0.0, second - mean * mean))
    return distance / max(std, _MIN_STD)


# --- features and reports -----------------------------------------------------------------------


def _method_for(method: str, kind: str, bins: int, reference_rows: int, thresholds: DriftThresholds) -> str:
    if method == "auto":
        wide_numeric = kind == NUMERIC and bins >= _MIN_DISTANCE_BINS
        if reference_rows <= thresholds.small_sample:
            return "ks" if wide_numeric else "chi2"
        return "wasserstein" if wide_numeric else "js"
    if method in _NUMERIC_ONLY and kind != NUMERIC:
        return "js"
    return method


def feature_drift(
    reference: FeatureCounts,
    current: FeatureCounts,
    *,
    method: str = "auto",
    thresholds: DriftThresholds = DriftThresholds(),
) -> FeatureDrift:
    """Every statistic of one feature; `current` must be counted on `reference`'s bins."""
    if method not in METHODS:
        raise ValueError(f"unknown drift method {method!r}: use one of {', '.join(METHODS)}")
    if reference.kind != current.kind or reference.counts.shape != current.counts.shape:
        raise ValueError(
            f"feature {reference.name!r}: current counts ({current.kind}, {current.counts.size}) do not "
            f"match the reference bins ({reference.kind}, {reference.counts.size})"
        )
    r, c = reference.counts, current.counts
    chi2, chi2_p = chi2_homogeneity(r, c)
    ks = ks_p = wasserstein = math.nan
    if reference.edges is not None:
        ks, ks_p = binned_ks(r, c)
        wasserstein = binned_wasserstein(reference.edges, r, c)
    stats = {
        "psi": population_stability_index(r, c),
        "js": jensen_shannon_distance(r, c),
        "chi2": chi2_p,
        "ks": ks_p,
        "wasserstein": wasserstein,
    }
    limits = {
        "psi": thresholds.psi,
        "js": thresholds.js_distance,
        "chi2": thresholds.p_value,
        "ks": thresholds.p_value,
        "wasserstein": thresholds.wasserstein,
    }
    bins = r.size - 2 if reference.edges is not None else r.size - 1
    chosen = _method_for(method, reference.kind, bins, reference.total, thresholds)
    score, limit = stats[chosen], limits[chosen]
    if not math.isfinite(score):
        drifted = False
    elif chosen in ("chi2", "ks"):
        drifted = score < limit
    else:
        drifted = score >= limit
    return FeatureDrift(
        name=reference.name,
        kind=reference.kind,
        method=chosen,
        score=score,
        threshold=limit,
        drifted=drifted,
        reference_count=reference.total,
        current_count=current.total,
        current_missing=current.missing,
        psi=stats["psi"],
        js_distance=stats["js"],
        chi2=chi2,
        chi2_p_value=chi2_p,
        ks_statistic=ks,
        ks_p_value=ks_p,
        wasserstein=wasserstein,
    )


def drift_report(
    reference: Sequence[FeatureCounts],
    current: Mapping[str, FeatureCounts],
    *,
    method: str = "auto",
    thresholds: DriftThresholds = DriftThresholds(),
) -> DriftReport:
    """Drift of every reference feature; features without current counts are reported with NaNs
    and left out of the drift share."""
    thresholds.validate()
    features = []
    for ref in reference:
        cur = current.get(ref.name)
        if cur is None:
            cur = FeatureCounts(ref.name, ref.edges, np.zeros_like(ref.counts))
        features.append(feature_drift(ref, cur, method=method, thresholds=thresholds))
    compared = [f for f in features if f.current_count > 0 and f.reference_count > 0]
    drifted = sum(f.drifted for f in compared)
    share = drifted / len(compared) if compared else 0.0
    return DriftReport(
        features=tuple(features),
        drifted_features=drifted,
        compared_features=len(compared),
        drift_share=share,
        dataset_drift=bool(compared) and share >= thresholds.drift_share,
        thresholds=thresholds,
    )


def reference_counts(profile: common_pb2.ReferenceProfile) -> list[FeatureCounts]:
    """The profile's own counts of every feature, in the layout of `FeatureCounts`."""
    out = []
    for f in profile.features:
        if f.WhichOneof("kind") == "categorical":
            counts = [*f.categorical.counts, f.categorical.other]
            out.append(FeatureCounts(f.name, None, np.asarray(counts, dtype=np.int64), f.missing))
        else:
            counts = [f.numeric.underflow, *f.numeric.counts, f.numeric.overflow]
            edges = np.asarray(f.numeric.edges, dtype=np.float64)
            out.append(FeatureCounts(f.name, edges, np.asarray(counts, dtype=np.int64), f.missing))
    return out


def counts_from_binned(name: str, binned: BinnedCounts) -> FeatureCounts:
    """An agent-side counter (`BinnedCounts`) in the layout of `FeatureCounts`."""
    if binned.edges is not None:
        counts = np.concatenate([[binned.underflow], binned.counts, [binned.overflow]])
    else:
        counts = np.concatenate([binned.counts, [binned.other]])
    return FeatureCounts(name, binned.edges, counts.astype(np.int64), binned.missing)


def compare_datasets(
    reference: Any,
    current: Any,
    *,
    feature_names: Sequence[str] | None = None,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    method: str = "auto",
    thresholds: DriftThresholds = DriftThresholds(),
    profile: common_pb2.ReferenceProfile | None = None,
) -> DriftReport:
    """Drift of `current` against `reference`, two in-memory datasets, as the server computes it.

    Both take the forms `compute_reference_profile` accepts (2-D array, mapping of columns,
    DataFrame) with the same columns. The reference is profiled (or `profile` is used as given),
    the current data is counted on its bins exactly as an agent counts served inputs, and
    `drift_report` compares the counts.
    """
    if profile is None:
        profile = compute_reference_profile(
            reference, feature_names=feature_names, bins=bins, max_categories=max_categories
        )
    columns = dict(table_columns(current, feature_names))
    current_counts = {}
    for ref in profile.features:
        values = columns.get(ref.name)
        if values is None:
            raise ValueError(f"current data has no column {ref.name!r}")
        if ref.WhichOneof("kind") == "categorical":
            counter = BinnedCounts.categorical(list(ref.categorical.categories))
        else:
            counter = BinnedCounts.numeric(np.asarray(ref.numeric.edges, dtype=np.float64))
        counter.add(values)
        current_counts[ref.name] = counts_from_binned(ref.name, counter)
    return drift_report(reference_counts(profile), current_counts, method=method, thresholds=thresholds)
