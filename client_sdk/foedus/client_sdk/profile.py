"""Reference profiles: per-feature bin edges and counts computed from a reference sample.

Numeric features get bins at quantiles of the sample (so each bin holds about the same share of the
reference); categorical features get their most frequent categories. Drift is later computed from
counts on exactly these bins, so raw inputs never need to leave a tenant's hosts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from foedus.v1 import common_pb2

DEFAULT_BINS = 10
DEFAULT_MAX_CATEGORIES = 20


def table_columns(data: Any, feature_names: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    """(name, column) pairs of a 2-D array, a mapping of name -> column, or a DataFrame."""
    if isinstance(data, Mapping):
        return [(str(k), np.asarray(v)) for k, v in data.items()]
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):  # a pandas or polars DataFrame
        return [(str(c), np.asarray(data[c])) for c in data.columns]
    arr = np.asarray(data)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"reference data must be 2-D (rows x features), got shape {arr.shape}")
    names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(arr.shape[1])]
    if len(names) != arr.shape[1]:
        raise ValueError(f"{len(names)} feature names for {arr.shape[1]} columns")
    return [(names[i], arr[:, i]) for i in range(arr.shape[1])]


def _numeric(values: np.ndarray, bins: int, fp: common_pb2.FeatureProfile) -> None:
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    fp.missing = int((~finite).sum())
    x = x[finite]
    if x.size == 0:
        edges = np.array([0.0, 1.0])
    else:
        edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
        if edges.size < bins + 1:
            # Tied quantiles: a feature with at most `bins` distinct values gets one bin per value,
            # [v_i, v_i+1), the last one [v_k, next float], so that a 0/1 or constant feature keeps
            # its distribution instead of sharing one closed bin.
            distinct = np.unique(x)
            if distinct.size <= bins:
                edges = np.append(distinct, np.nextafter(distinct[-1], np.inf))
    # Bin i holds [edges[i], edges[i+1]); the last bin is closed on the right.
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    counts = np.bincount(idx, minlength=edges.size - 1)
    fp.numeric.edges.extend(edges.tolist())
    fp.numeric.counts.extend(int(c) for c in counts)


def _categorical(values: np.ndarray, max_categories: int, fp: common_pb2.FeatureProfile) -> None:
    present = [v for v in values.tolist() if v is not None and not (isinstance(v, float) and np.isnan(v))]
    fp.missing = len(values) - len(present)
    cats, counts = np.unique(np.asarray([str(v) for v in present], dtype=object), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    fp.categorical.categories.extend(str(cats[i]) for i in order)
    fp.categorical.counts.extend(int(counts[i]) for i in order)
    fp.categorical.other = int(counts.sum() - counts[order].sum()) if counts.size else 0


def compute_reference_profile(
    data: Any,
    *,
    feature_names: Sequence[str] | None = None,
    bins: int = DEFAULT_BINS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
) -> common_pb2.ReferenceProfile:
    """Profiles a reference sample: a 2-D array, a mapping of name -> column, or a DataFrame.

    Numeric columns (int, float, bool) get up to `bins` quantile bins (one bin per value when they
    hold at most `bins` distinct values); other columns are categorical, keeping the
    `max_categories` most frequent values.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    columns = table_columns(data, feature_names)
    lengths = {len(v) for _, v in columns}
    if len(lengths) > 1:
        raise ValueError("all reference columns must have the same length")
    if not columns or lengths == {0}:
        raise ValueError("reference data has no rows (or no columns): drift needs a reference sample")
    profile = common_pb2.ReferenceProfile(row_count=lengths.pop() if lengths else 0)
    for name, values in columns:
        fp = profile.features.add(name=name)
        if values.dtype.kind in "biuf":
            _numeric(values, bins, fp)
        else:
            _categorical(values, max_categories, fp)
    return profile
