"""Drift statistics on binned counts, checked against scipy, and the in-memory comparison of datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from foedus.client_sdk import compute_reference_profile
from foedus.client_sdk.drift import (
    DriftThresholds,
    FeatureCounts,
    binned_ks,
    binned_wasserstein,
    chi2_homogeneity,
    chi2_sf,
    compare_datasets,
    drift_report,
    feature_drift,
    jensen_shannon_distance,
    kolmogorov_sf,
    population_stability_index,
    reference_counts,
)


@pytest.mark.parametrize("dof", [1, 2, 3, 7, 24, 150])
def test_chi2_survival_matches_scipy(dof: int) -> None:
    for x in [1e-3, 0.3, 1.0, dof * 0.5, float(dof), dof + 3.0, 2.0 * dof + 10.0, 300.0]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


def test_kolmogorov_survival_matches_scipy() -> None:
    for x in np.linspace(0.02, 4.0, 200):
        assert kolmogorov_sf(float(x)) == pytest.approx(stats.kstwobign.sf(x), abs=1e-12)
    assert kolmogorov_sf(0.0) == 1.0


def test_chi2_homogeneity_matches_scipy_contingency() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        r = rng.integers(0, 500, size=9)
        c = rng.integers(0, 500, size=9)
        r[2] = c[2] = 0  # an empty bin on both sides is left out, as scipy would reject it
        keep = (r + c) > 0
        expected = stats.chi2_contingency(np.stack([r[keep], c[keep]]), correction=False)
        statistic, p = chi2_homogeneity(r, c)
        assert statistic == pytest.approx(expected.statistic, rel=1e-10)
        assert p == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-300)
    assert chi2_homogeneity([5, 0], [3, 0]) == (0.0, 1.0)
    assert all(math.isnan(v) for v in chi2_homogeneity([0, 0], [1, 2]))


def test_jensen_shannon_matches_scipy_in_both_bases() -> None:
    rng = np.random.default_rng(4)
    p, q = rng.integers(0, 100, size=12), rng.integers(0, 100, size=12)
    q[0] = 0
    assert jensen_shannon_distance(p, q) == pytest.approx(distance.jensenshannon(p, q))
    assert jensen_shannon_distance(p, q, base=2.0) == pytest.approx(distance.jensenshannon(p, q, base=2.0))
    assert jensen_shannon_distance([1, 0], [0, 1], base=2.0) == pytest.approx(1.0)
    assert jensen_shannon_distance(p, p * 7) == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(jensen_shannon_distance([0, 0], [1, 1]))


def test_psi_is_the_formula_with_floored_shares() -> None:
    a, b = np.array([10.0, 30.0, 60.0]), np.array([20.0, 30.0, 50.0])
    p, q = a / a.sum(), b / b.sum()
    assert population_stability_index(a, b) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert math.isfinite(population_stability_index([1, 0], [0, 1]))
    with pytest.raises(ValueError, match="differ in length"):
        population_stability_index([1, 2], [1, 2, 3])


def test_binned_ks_is_exact_when_every_value_sits_on_an_edge() -> None:
    # Integer data with at most `bins` values: one bin per value, so the binned CDFs are the ECDFs.
    rng = np.random.default_rng(5)
    ref = rng.choice(8, size=3000, p=np.full(8, 1 / 8))
    cur = rng.choice(8, size=2000, p=[0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    report = compare_datasets({"x": ref}, {"x": cur})
    f = report.features[0]
    expected = stats.ks_2samp(ref, cur)
    assert f.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
    en = 3000 * 2000 / 5000
    assert f.ks_p_value == pytest.approx(stats.kstwobign.sf(math.sqrt(en) * expected.statistic))
    d, p = binned_ks([1, 2, 3], [1, 2, 3])
    assert d == 0.0 and p == 1.0


def test_binned_wasserstein_is_exact_for_values_spread_evenly_in_bins() -> None:
    edges = np.array([0.0, 1.0, 3.0, 4.0, 8.0])
    ref_bins, cur_bins = np.array([400, 300, 200, 100]), np.array([100, 200, 300, 400])

    def spread(counts: np.ndarray) -> np.ndarray:
        # counts[i] points evenly inside bin i (midpoints of equal sub-intervals): piecewise uniform
        return np.concatenate(
            [
                lo + (np.arange(n) + 0.5) * (hi - lo) / n
                for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
            ]
        )

    r, c = spread(ref_bins), spread(cur_bins)
    got = binned_wasserstein(edges, [0, *ref_bins, 0], [0, *cur_bins, 0])
    assert got == pytest.approx(stats.wasserstein_distance(r, c) / r.std(), rel=2e-3)
    with pytest.raises(ValueError, match="edges need"):
        binned_wasserstein(edges, ref_bins, cur_bins)


def test_binned_wasserstein_approaches_the_exact_one_with_fine_bins() -> None:
    rng = np.random.default_rng(6)
    ref, cur = rng.normal(0, 1, 50_000), rng.normal(0.3, 1, 50_000)
    exact = stats.wasserstein_distance(ref, cur) / ref.std()
    fine = compare_datasets({"x": ref}, {"x": cur}, bins=100).features[0]
    assert fine.wasserstein == pytest.approx(exact, rel=0.03)
    coarse = compare_datasets({"x": ref}, {"x": cur}).features[0]
    assert 0.7 * exact < coarse.wasserstein <= 1.05 * exact


def test_binary_and_few_valued_numeric_features_keep_their_values_apart() -> None:
    profile = compute_reference_profile({"flag": np.array([0] * 70 + [1] * 30), "level": np.arange(100) % 4})
    flag, level = profile.features
    assert list(flag.numeric.counts) == [70, 30]
    assert list(level.numeric.counts) == [25, 25, 25, 25]
    report = compare_datasets(
        {"flag": np.array([0] * 70 + [1] * 30)}, {"flag": np.array([0] * 30 + [1] * 70)}
    )
    assert report.features[0].js_distance > 0.1


def test_compare_datasets_flags_the_features_that_drifted() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    ref = {
        "shifted": rng.normal(0, 1, n),
        "scaled": rng.normal(0, 1, n),
        "same": rng.exponential(2.0, n),
        "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
    }
    cur = {
        "shifted": rng.normal(0.5, 1, n),
        "scaled": rng.normal(0, 1.8, n),
        "same": rng.exponential(2.0, n),
        "color": rng.choice(["red", "green", "blue", "violet"], n, p=[0.2, 0.3, 0.2, 0.3]),
    }
    report = compare_datasets(ref, cur)
    assert report.drifted() == ["shifted", "scaled", "color"]
    by_name = {f.name: f for f in report.features}
    assert [by_name[k].method for k in ("shifted", "same", "color")] == ["wasserstein", "wasserstein", "js"]
    assert by_name["color"].kind == "categorical" and math.isnan(by_name["color"].ks_statistic)
    assert report.compared_features == 4 and report.drift_share == pytest.approx(0.75)
    assert report.dataset_drift
    # categories unseen in the reference count as "other", as on the agents
    counts = np.unique(cur["color"], return_counts=True)
    cur_counts = dict(zip(counts[0].tolist(), counts[1].tolist(), strict=True))
    ref_names = list(compute_reference_profile({"color": ref["color"]}).features[0].categorical.categories)
    expected = [cur_counts[c] for c in ref_names] + [cur_counts["violet"]]
    assert by_name["color"].current_count == n
    assert by_name["color"].chi2 == pytest.approx(
        stats.chi2_contingency(
            np.stack([[int((ref["color"] == c).sum()) for c in ref_names] + [0], expected]), correction=False
        ).statistic
    )
    quiet = compare_datasets(ref, ref)
    assert quiet.drifted() == [] and not quiet.dataset_drift


def test_small_references_use_p_value_tests_and_methods_can_be_chosen() -> None:
    rng = np.random.default_rng(8)
    ref, cur = rng.normal(0, 1, 500), rng.normal(1.0, 1, 500)
    f = compare_datasets({"x": ref}, {"x": cur}).features[0]
    assert f.method == "ks" and f.drifted and f.score == f.ks_p_value < 0.05
    psi = compare_datasets({"x": ref}, {"x": cur}, method="psi").features[0]
    assert psi.method == "psi" and psi.score == psi.psi and psi.threshold == 0.2
    cat = compare_datasets({"c": np.array(["a", "b"] * 50)}, {"c": np.array(["a"] * 100)}, method="ks")
    assert cat.features[0].method == "js"  # KS needs an order: categorical features fall back
    strict = compare_datasets({"x": ref}, {"x": cur}, method="psi", thresholds=DriftThresholds(psi=50.0))
    assert not strict.features[0].drifted


def test_report_without_current_counts_and_bad_input() -> None:
    profile = compute_reference_profile({"a": np.arange(100.0), "b": np.arange(100.0)})
    reference = reference_counts(profile)
    current = {"a": FeatureCounts("a", reference[0].edges, reference[0].counts.copy())}
    report = drift_report(reference, current)
    assert report.compared_features == 1 and report.features[1].current_count == 0
    assert not report.features[1].drifted and math.isnan(report.features[1].psi)
    with pytest.raises(ValueError, match="do not match the reference bins"):
        feature_drift(reference[0], FeatureCounts("a", None, np.ones(3, dtype=np.int64)))
    with pytest.raises(ValueError, match="unknown drift method"):
        feature_drift(reference[0], current["a"], method="magic")
    with pytest.raises(ValueError, match="drift_share"):
        drift_report(reference, current, thresholds=DriftThresholds(drift_share=0.0))
    with pytest.raises(ValueError, match="no column 'b'"):
        compare_datasets({"a": np.arange(10.0), "b": np.arange(10.0)}, {"a": np.arange(10.0)})
