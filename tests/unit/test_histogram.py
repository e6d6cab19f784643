"""Latency histograms on the shared bucket layout, and counts on reference-profile bins."""

from __future__ import annotations

import numpy as np
import pytest

from foedus.client_sdk.agent.histogram import (
    BUCKET_EDGES_MS,
    BUCKET_GROWTH,
    NUM_BUCKETS,
    OVERFLOW_BUCKET,
    TYPICAL_RELATIVE_ERROR,
    UNDERFLOW_BUCKET,
    WORST_CASE_RELATIVE_ERROR,
    BinnedCounts,
    LatencyHistogram,
    latency_bucket_index,
)

QUANTILES = [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]


def test_layout_is_the_documented_one() -> None:
    assert NUM_BUCKETS == 215
    assert BUCKET_EDGES_MS[0] == pytest.approx(0.001)
    assert BUCKET_EDGES_MS[-1] == pytest.approx(103_496.0, rel=1e-4)  # ≈ 103.5 s
    np.testing.assert_allclose(BUCKET_EDGES_MS[1:] / BUCKET_EDGES_MS[:-1], BUCKET_GROWTH)
    # a value on an edge opens the bucket above it; below 1 µs underflows, from the top edge overflows
    assert latency_bucket_index(BUCKET_EDGES_MS[10]) == 11
    assert latency_bucket_index(0.0) == UNDERFLOW_BUCKET
    assert latency_bucket_index(BUCKET_EDGES_MS[-1]) == OVERFLOW_BUCKET
    assert latency_bucket_index(1e9) == OVERFLOW_BUCKET


@pytest.mark.parametrize(("mu", "sigma"), [(0.0, 0.5), (2.0, 1.0), (4.0, 1.5)])
def test_quantiles_match_numpy_on_lognormal_latencies(mu: float, sigma: float) -> None:
    x = np.random.default_rng(7).lognormal(mu, sigma, size=50_000)
    h = LatencyHistogram()
    h.record_many(x)
    assert h.count == x.size
    assert h.sum_ms == pytest.approx(x.sum())
    errors = [abs(h.quantile(q) / np.quantile(x, q) - 1.0) for q in QUANTILES]
    print(f"lognormal({mu}, {sigma}) max relative quantile error {max(errors):.4f}")
    assert max(errors) <= TYPICAL_RELATIVE_ERROR


def test_worst_case_error_bound_holds_when_values_sit_on_bucket_edges() -> None:
    # every value on the lower edge of its bucket: interpolation is as wrong as it gets
    x = np.repeat(BUCKET_EDGES_MS[[40, 80, 120]], 1000)
    h = LatencyHistogram()
    h.record_many(x)
    # the bound is against the floor(q * (n - 1))-th smallest value, numpy's "lower" method; the
    # last q puts the rank between two values that are 40 buckets apart
    for q in [*QUANTILES, 999.5 / 2999]:
        exact = np.quantile(x, q, method="lower")
        assert abs(h.quantile(q) / exact - 1.0) <= WORST_CASE_RELATIVE_ERROR + 1e-12


def test_record_one_by_one_equals_record_many() -> None:
    x = np.random.default_rng(3).lognormal(1.0, 2.0, size=500)
    one, many = LatencyHistogram(), LatencyHistogram()
    for v in x:
        one.record(float(v))
    many.record_many(x)
    np.testing.assert_array_equal(one.bucket_counts, many.bucket_counts)
    assert one.sum_ms == pytest.approx(many.sum_ms)


def test_merge_equals_histogram_of_the_concatenation() -> None:
    rng = np.random.default_rng(11)
    a, b = rng.lognormal(1.0, 1.0, 3000), rng.lognormal(3.0, 0.5, 7000)
    ha, hb, hab = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    ha.record_many(a)
    hb.record_many(b)
    hab.record_many(np.concatenate([a, b]))
    ha.merge(hb)
    np.testing.assert_array_equal(ha.bucket_counts, hab.bucket_counts)
    assert ha.count == 10_000
    assert ha.sum_ms == pytest.approx(hab.sum_ms)
    assert [ha.quantile(q) for q in QUANTILES] == [hab.quantile(q) for q in QUANTILES]


def test_sparse_round_trip() -> None:
    h = LatencyHistogram()
    h.record_many(np.random.default_rng(5).lognormal(0.0, 3.0, 2000))
    h.record_many([0.0, 0.0005, 5e5])  # underflow and overflow survive too
    indices, counts = h.to_sparse()
    assert indices.size < NUM_BUCKETS and np.all(counts > 0) and np.all(np.diff(indices) > 0)
    assert indices[0] == UNDERFLOW_BUCKET and indices[-1] == OVERFLOW_BUCKET
    back = LatencyHistogram.from_sparse(indices.tolist(), counts.tolist(), sum_ms=h.sum_ms)
    np.testing.assert_array_equal(back.bucket_counts, h.bucket_counts)
    assert back.sum_ms == h.sum_ms
    assert back.quantile(0.5) == h.quantile(0.5)


def test_edge_cases_and_invalid_input() -> None:
    h = LatencyHistogram()
    assert np.isnan(h.quantile(0.5))
    h.record_many(np.array([]))
    assert h.count == 0
    h.record(2e5)
    assert h.quantile(0.5) == BUCKET_EDGES_MS[-1]  # overflow reports its lower edge
    with pytest.raises(ValueError):
        h.record(-1.0)
    with pytest.raises(ValueError):
        h.record_many(np.array([1.0, np.nan]))
    assert h.count == 1  # a rejected batch counts nothing
    with pytest.raises(ValueError):
        h.quantile(1.5)
    with pytest.raises(ValueError):
        LatencyHistogram.from_sparse([NUM_BUCKETS], [1], sum_ms=0.0)
    with pytest.raises(ValueError):
        LatencyHistogram.from_sparse([3, 3], [1, 1], sum_ms=0.0)


def test_numeric_binned_counts_agree_with_numpy_histogram() -> None:
    edges = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    rng = np.random.default_rng(2)
    x = rng.normal(size=10_000)
    x[:7] = np.nan
    binned = BinnedCounts.numeric(edges)
    binned.add(x[:4000])
    binned.add(x[4000:])
    finite = x[~np.isnan(x)]
    expected, _ = np.histogram(finite, bins=edges)  # last bin closed, like the reference profile
    np.testing.assert_array_equal(binned.counts, expected)
    assert binned.underflow == int((finite < -2.0).sum()) > 0
    assert binned.overflow == int((finite > 2.0).sum()) > 0
    assert binned.missing == 7
    assert binned.total == 10_000


def test_numeric_binned_counts_on_edges() -> None:
    binned = BinnedCounts.numeric([0.0, 1.0, 2.0])
    binned.add([0.0, 1.0, 2.0, -1e-12, 2.0000001, np.inf, -np.inf])
    assert binned.counts.tolist() == [1, 2]  # 1.0 opens the second bin; 2.0 closes the last
    assert (binned.underflow, binned.overflow, binned.missing) == (2, 2, 0)
    with pytest.raises(ValueError):
        BinnedCounts.numeric([1.0, 1.0])


def test_categorical_binned_counts() -> None:
    binned = BinnedCounts.categorical(["red", "blue", "1"])
    binned.add(np.array(["red", "red", "green", None, "blue", 1, float("nan")], dtype=object))
    assert binned.counts.tolist() == [2, 1, 1]  # 1 counts as "1", as the reference profile's str()
    assert (binned.other, binned.missing, binned.total) == (1, 2, 7)
    assert not binned.is_numeric


def test_binned_counts_merge_only_on_the_same_bins() -> None:
    a, b = BinnedCounts.numeric([0.0, 1.0, 2.0]), BinnedCounts.numeric([0.0, 1.0, 2.0])
    a.add([0.5, 3.0])
    b.add([1.5, np.nan, -1.0])
    a.merge(b)
    assert a.counts.tolist() == [1, 1]
    assert (a.underflow, a.overflow, a.missing) == (1, 1, 1)
    with pytest.raises(ValueError):
        a.merge(BinnedCounts.numeric([0.0, 1.0, 3.0]))
    with pytest.raises(ValueError):
        a.merge(BinnedCounts.categorical(["x", "y"]))
