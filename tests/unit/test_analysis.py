"""Canary analysis: anytime-valid tests of a candidate against the stable version, tick by tick."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from foedus.client_sdk.agent.histogram import NUM_BUCKETS, LatencyHistogram, latency_bucket_index
from foedus.server.rollouts.analysis import (
    METRICS,
    AnalysisConfig,
    CanaryAnalysis,
    Verdict,
    VersionWindow,
    jensen_shannon_distance,
    population_stability_index,
)

ONLY_ERRORS = AnalysisConfig(latency_p99_weight=0, latency_p50_weight=0, anomaly_weight=0, drift_weight=0)
ONLY_LATENCY = AnalysisConfig(error_rate_weight=0, anomaly_weight=0, drift_weight=0)
ONLY_DRIFT = AnalysisConfig(error_rate_weight=0, latency_p99_weight=0, latency_p50_weight=0, anomaly_weight=0)
BINS = np.array([0.3, 0.25, 0.2, 0.1, 0.08, 0.07])


def latency(rng: np.random.Generator, n: int, median_ms: float = 20.0, sigma: float = 0.5) -> np.ndarray:
    values = rng.lognormal(math.log(median_ms), sigma, size=n)
    return np.bincount(latency_bucket_index(values), minlength=NUM_BUCKETS).astype(np.int64)


def window(
    rng: np.random.Generator,
    requests: float,
    error_rate: float = 0.01,
    *,
    median_ms: float = 20.0,
    sigma: float = 0.5,
    predictions: np.ndarray | None = BINS,
    intervals: int = 1,
    anomaly_rate: float = 0.02,
) -> VersionWindow:
    n = int(rng.poisson(requests))
    return VersionWindow(
        requests=n,
        errors=int(rng.binomial(n, error_rate)),
        latency=latency(rng, n, median_ms, sigma),
        predictions=None if predictions is None else rng.multinomial(n, predictions).astype(np.int64),
        intervals=intervals,
        anomalous_intervals=int(rng.binomial(intervals, anomaly_rate)),
    )


def pairs(
    rng: np.random.Generator, candidate: dict[str, Any], stable: dict[str, Any]
) -> Callable[[], tuple[VersionWindow, VersionWindow]]:
    """A source of ticks: `window(rng, **candidate)` and `window(rng, **stable)`."""
    return lambda: (window(rng, **candidate), window(rng, **stable))


def run(
    analysis: CanaryAnalysis, ticks: int, make: Callable[[], tuple[VersionWindow, VersionWindow]]
) -> Verdict:
    """Feeds `ticks` ticks from make() -> (candidate, stable); stops at the first regression."""
    verdict = analysis.verdict()
    for _ in range(ticks):
        verdict = analysis.update(*make())
        if verdict.regression:
            break
    return verdict


# -- configuration and inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"error_rate_ratio_margin": -0.1}, "error_rate_ratio_margin"),
        ({"error_rate_points_margin": 5.0}, "error_rate_points_margin"),
        ({"latency_p99_margin": -1.0}, "latency_p99_margin"),
        ({"anomaly_weight": -1.0}, "weights"),
        (
            {
                "error_rate_weight": 0,
                "latency_p99_weight": 0,
                "latency_p50_weight": 0,
                "anomaly_weight": 0,
                "drift_weight": 0,
            },
            "weight",
        ),
        ({"odds_ratio_min": 1.0}, "odds_ratio_min"),
        ({"odds_ratio_max": 1.05}, "odds_ratio_max"),
        ({"odds_ratio_grid_size": 1}, "odds_ratio_grid_size"),
        ({"prior_center": 0.5}, "prior_center"),
        ({"prior_log_sd": 0.0}, "prior_log_sd"),
        ({"stable_bound_share": 1.0}, "stable_bound_share"),
    ],
)
def test_config_validation_names_the_bad_setting(changes: dict[str, Any], message: str) -> None:
    config = replace(AnalysisConfig(), **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        CanaryAnalysis(config)


def test_alpha_is_split_by_the_weights() -> None:
    config = AnalysisConfig()
    config.validate()
    alphas = config.metric_alphas()
    assert set(alphas) == set(METRICS)
    assert sum(alphas.values()) == pytest.approx(config.alpha)
    assert alphas["error_rate"] == pytest.approx(0.005)
    verdict = CanaryAnalysis(config).verdict()
    assert verdict.log_threshold["error_rate"] == pytest.approx(math.log(200))
    assert not verdict.regression and verdict.metric == ""
    assert all(v == pytest.approx(0.0) for v in verdict.log_e.values())
    # a metric with weight 0 is off: not reported, and its share goes to the others
    assert set(CanaryAnalysis(ONLY_ERRORS).verdict().log_threshold) == {"error_rate"}
    assert ONLY_ERRORS.metric_alphas() == {"error_rate": pytest.approx(0.01)}


def test_bad_windows_are_rejected() -> None:
    analysis = CanaryAnalysis(AnalysisConfig())
    ok = VersionWindow(requests=10)
    with pytest.raises(ValueError, match="errors"):
        analysis.update(VersionWindow(requests=5, errors=6), ok)
    with pytest.raises(ValueError, match="latency"):
        analysis.update(VersionWindow(requests=5, latency=np.zeros(10, dtype=np.int64)), ok)
    with pytest.raises(ValueError, match="cpu_s_per_request"):
        analysis.update(VersionWindow(requests=5, cpu_s_per_request=math.nan), ok)
    with pytest.raises(ValueError, match="anomalous"):
        analysis.update(ok, VersionWindow(intervals=1, anomalous_intervals=2))
    with pytest.raises(ValueError, match="bins"):
        analysis.update(
            VersionWindow(predictions=np.ones(3, dtype=np.int64)),
            VersionWindow(predictions=np.ones(4, dtype=np.int64)),
        )
    assert analysis.ticks == 0


def test_ticks_without_traffic_change_no_evidence() -> None:
    rng = np.random.default_rng(1)
    analysis = CanaryAnalysis(AnalysisConfig())
    for _ in range(5):
        analysis.update(window(rng, 50, 0.05), window(rng, 450))
    before = analysis.verdict().log_e
    analysis.update(VersionWindow(), VersionWindow())
    analysis.update(VersionWindow(), window(rng, 450))  # stable only: nothing to compare
    analysis.update(window(rng, 50, 0.05, intervals=0), VersionWindow())  # candidate only
    assert analysis.verdict().log_e == before
    assert analysis.ticks == 8


# -- false rollbacks ------------------------------------------------------------------------------


def test_healthy_candidates_are_rarely_rolled_back_on_any_metric() -> None:
    # A/A, all metrics on, margins at 0 (the null boundary), alpha 0.1 so that the rate is measurable
    config = AnalysisConfig(alpha=0.1, latency_p50_margin=0.0, latency_p99_margin=0.0)
    streams, rolled_back = 200, 0
    for seed in range(streams):
        rng = np.random.default_rng([7, seed])
        analysis = CanaryAnalysis(config)
        verdict = run(
            analysis,
            30,
            pairs(rng, {"requests": 20, "anomaly_rate": 0.1}, {"requests": 60, "anomaly_rate": 0.1}),
        )
        rolled_back += verdict.regression
    rate = rolled_back / streams
    print(f"A/A false-rollback rate {rate:.3f} at alpha 0.1")
    assert rate <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / streams)


def test_small_counts_keep_the_error_test_valid() -> None:
    # few trials per tick, high rates: the hypergeometric regime the convex-order argument covers
    config = replace(ONLY_ERRORS, alpha=0.2)
    streams, rolled_back = 300, 0
    for seed in range(streams):
        rng = np.random.default_rng([11, seed])
        analysis = CanaryAnalysis(config)
        for _ in range(40):
            n_c, n_s = int(rng.integers(1, 6)), int(rng.integers(1, 6))
            verdict = analysis.update(
                VersionWindow(requests=n_c, errors=int(rng.binomial(n_c, 0.3))),
                VersionWindow(requests=n_s, errors=int(rng.binomial(n_s, 0.3))),
            )
            if verdict.regression:
                rolled_back += 1
                break
    assert rolled_back / streams <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / streams)


def test_drift_test_is_valid_with_few_predictions_per_tick() -> None:
    # the bin-by-bin conditional factorisation must hold with tiny counts (PSI margin 0: e-value only)
    config = replace(ONLY_DRIFT, alpha=0.2, drift_psi_margin=0.0)
    streams, rolled_back = 200, 0
    for seed in range(streams):
        rng = np.random.default_rng([13, seed])
        analysis = CanaryAnalysis(config)
        for _ in range(40):
            verdict = analysis.update(
                VersionWindow(predictions=rng.multinomial(int(rng.integers(0, 4)), BINS).astype(np.int64)),
                VersionWindow(predictions=rng.multinomial(int(rng.integers(0, 6)), BINS).astype(np.int64)),
            )
            if verdict.regression:
                rolled_back += 1
                break
    assert rolled_back / streams <= 0.2 + 3 * math.sqrt(0.2 * 0.8 / streams)


@pytest.mark.parametrize(
    ("n_c", "n_s", "events"), [(1, 1, 1), (3, 9, 4), (10, 90, 12), (50, 5, 20), (7, 7, 14)]
)
def test_one_tick_of_the_error_test_has_expectation_at_most_one(n_c: int, n_s: int, events: int) -> None:
    # exact: under equal rates, the candidate's share of the tick's errors is hypergeometric
    expectation = 0.0
    for x in range(max(0, events - n_s), min(events, n_c) + 1):
        p = math.comb(n_c, x) * math.comb(n_s, events - x) / math.comb(n_c + n_s, events)
        verdict = CanaryAnalysis(ONLY_ERRORS).update(VersionWindow(n_c, x), VersionWindow(n_s, events - x))
        expectation += p * math.exp(verdict.log_e["error_rate"])
    assert expectation <= 1.0 + 1e-12


@pytest.mark.parametrize(
    ("totals", "n_c"), [((3, 1), 2), ((2, 2, 2), 3), ((5, 1, 1), 3), ((6, 6, 6), 6), ((1, 8), 1)]
)
def test_one_tick_of_the_drift_test_has_expectation_at_most_one(totals: tuple[int, ...], n_c: int) -> None:
    # exact: under one prediction law, the candidate's counts given the bin totals are multivariate
    # hypergeometric; enumerate them all
    m = np.array(totals)
    expectation = 0.0
    for counts in itertools.product(*(range(k + 1) for k in totals)):
        y = np.array(counts)
        if y.sum() != n_c:
            continue
        p = math.prod(math.comb(int(a), int(b)) for a, b in zip(m, y, strict=True)) / math.comb(
            int(m.sum()), n_c
        )
        verdict = CanaryAnalysis(ONLY_DRIFT).update(
            VersionWindow(predictions=y), VersionWindow(predictions=m - y)
        )
        expectation += p * math.exp(verdict.log_e["prediction_drift"])
    assert expectation <= 1.0 + 1e-12


def test_identical_streams_never_regress_and_the_evidence_falls() -> None:
    analysis = CanaryAnalysis(AnalysisConfig())
    lat_c = np.zeros(NUM_BUCKETS, dtype=np.int64)
    lat_c[[100, 110, 120, 130]] = [40, 30, 20, 10]
    pred = np.array([30, 30, 20, 20], dtype=np.int64)
    for _ in range(500):
        verdict = analysis.update(
            VersionWindow(100, 1, lat_c, pred, 1, 0), VersionWindow(900, 9, lat_c * 9, pred * 9, 9, 0)
        )
    assert not verdict.regression
    assert verdict.log_e["error_rate"] < 0.0
    assert verdict.evidence["candidate_error_rate"] == pytest.approx(verdict.evidence["stable_error_rate"])
    assert verdict.evidence["psi"] == pytest.approx(0.0)


# -- detection -------------------------------------------------------------------------------------


def test_error_rate_regression_is_detected_quickly() -> None:
    ticks_needed = []
    for seed in range(20):
        rng = np.random.default_rng([3, seed])
        analysis = CanaryAnalysis(AnalysisConfig())
        verdict = run(analysis, 60, pairs(rng, {"requests": 100, "error_rate": 0.05}, {"requests": 900}))
        assert verdict.regression, f"seed {seed}: 1% -> 5% not detected in 60 ticks"
        assert verdict.metric == "error_rate"
        assert verdict.log_e["error_rate"] >= verdict.log_threshold["error_rate"]
        ticks_needed.append(analysis.ticks)
    assert float(np.median(ticks_needed)) <= 6  # 600 candidate requests: 30 errors against 6 expected


def test_regression_is_sticky() -> None:
    rng = np.random.default_rng(5)
    analysis = CanaryAnalysis(ONLY_ERRORS)
    run(analysis, 60, lambda: (window(rng, 100, 0.2), window(rng, 900, 0.01)))
    assert analysis.verdict().regression
    for _ in range(200):  # the candidate now looks better than the stable version
        verdict = analysis.update(window(rng, 100, 0.0), window(rng, 900, 0.05))
    assert verdict.log_e["error_rate"] < verdict.log_threshold["error_rate"]
    assert verdict.regression and verdict.metric == "error_rate"


def test_error_ratio_margin_is_respected() -> None:
    # candidate 15% worse than stable: a regression without margin, not with a 30% margin
    def stream(rng: np.random.Generator) -> tuple[VersionWindow, VersionWindow]:
        return window(rng, 2000, 0.023, predictions=None), window(rng, 2000, 0.02, predictions=None)

    rng = np.random.default_rng(17)
    strict = run(CanaryAnalysis(ONLY_ERRORS), 400, lambda: stream(rng))
    assert strict.regression
    rng = np.random.default_rng(17)
    tolerant = run(
        CanaryAnalysis(replace(ONLY_ERRORS, error_rate_ratio_margin=0.3)), 400, lambda: stream(rng)
    )
    assert not tolerant.regression
    assert tolerant.log_e["error_rate"] < 0.0


def test_error_points_margin_uses_a_stable_upper_bound() -> None:
    config = replace(ONLY_ERRORS, error_rate_points_margin=0.005)
    alphas = config.metric_alphas()
    analysis = CanaryAnalysis(config)
    # the error alpha is split between the stable's confidence sequence and the test
    assert analysis.verdict().log_threshold["error_rate"] == pytest.approx(
        math.log(1 / (0.75 * alphas["error_rate"]))
    )
    rng = np.random.default_rng(19)
    verdict = run(analysis, 300, lambda: (window(rng, 200, 0.013), window(rng, 1800, 0.01)))
    assert not verdict.regression  # +0.3 points is within the 0.5-point margin
    bound = verdict.evidence["stable_error_rate_upper_bound"]
    assert verdict.evidence["stable_error_rate"] < bound < 0.0115
    rng = np.random.default_rng(23)
    verdict = run(CanaryAnalysis(config), 300, lambda: (window(rng, 200, 0.03), window(rng, 1800, 0.01)))
    assert verdict.regression and verdict.metric == "error_rate"


def test_latency_tail_regression_is_detected_but_an_identical_distribution_is_not() -> None:
    # the candidate keeps the median but its p99 is twice the stable's
    tail_sigma = 0.5 + math.log(2.0) / 2.3263
    rng = np.random.default_rng(29)
    verdict = run(
        CanaryAnalysis(ONLY_LATENCY),
        200,
        lambda: (window(rng, 200, sigma=tail_sigma), window(rng, 1800)),
    )
    assert verdict.regression and verdict.metric == "latency_p99"
    assert verdict.evidence["candidate_p99_ms"] > 1.5 * verdict.evidence["stable_p99_ms"]
    assert verdict.evidence["candidate_p50_ms"] == pytest.approx(verdict.evidence["stable_p50_ms"], rel=0.15)
    for seed in range(5):
        rng = np.random.default_rng([31, seed])
        verdict = run(CanaryAnalysis(ONLY_LATENCY), 200, pairs(rng, {"requests": 200}, {"requests": 1800}))
        assert not verdict.regression
        assert verdict.log_e["latency_p99"] < 0.0 and verdict.log_e["latency_p50"] < 0.0


def test_latency_margin_is_respected() -> None:
    # every request 10% slower: within the default margin (0.15, tested as +18.9%), beyond a margin of 0
    def stream(rng: np.random.Generator) -> tuple[VersionWindow, VersionWindow]:
        return window(rng, 500, median_ms=22.0), window(rng, 1500, median_ms=20.0)

    rng = np.random.default_rng(37)
    tolerant = run(CanaryAnalysis(ONLY_LATENCY), 300, lambda: stream(rng))
    assert not tolerant.regression
    assert tolerant.evidence["latency_p99_effective_margin"] == pytest.approx(2 ** (2 / 8) - 1)
    assert (
        tolerant.evidence["latency_p99_candidate_threshold_ms"]
        >= 1.15 * tolerant.evidence["latency_p99_threshold_ms"]
    )
    rng = np.random.default_rng(37)
    strict = run(
        CanaryAnalysis(replace(ONLY_LATENCY, latency_p50_margin=0.0, latency_p99_margin=0.0)),
        300,
        lambda: stream(rng),
    )
    assert strict.regression and strict.metric in {"latency_p50", "latency_p99"}


def test_no_latency_test_before_the_stable_has_a_histogram() -> None:
    rng = np.random.default_rng(41)
    analysis = CanaryAnalysis(ONLY_LATENCY)
    # the first tick with stable data only sets the threshold, however slow the candidate is
    verdict = analysis.update(window(rng, 200, median_ms=2000.0), window(rng, 1800))
    assert verdict.log_e["latency_p99"] == 0.0 and verdict.log_e["latency_p50"] == 0.0
    verdict = analysis.update(window(rng, 200, median_ms=2000.0), window(rng, 1800))
    assert verdict.regression


def test_anomalous_intervals_are_tested() -> None:
    config = AnalysisConfig(error_rate_weight=0, latency_p99_weight=0, latency_p50_weight=0, drift_weight=0)
    rng = np.random.default_rng(43)
    verdict = run(
        CanaryAnalysis(config),
        200,
        lambda: (
            window(rng, 10, intervals=2, anomaly_rate=0.4),
            window(rng, 90, intervals=18, anomaly_rate=0.02),
        ),
    )
    assert verdict.regression and verdict.metric == "anomaly"
    assert verdict.evidence["candidate_anomalous_fraction"] > verdict.evidence["stable_anomalous_fraction"]


def test_prediction_drift_needs_the_psi_margin() -> None:
    shifted_a_little = np.array([0.27, 0.25, 0.2, 0.1, 0.1, 0.08])  # PSI about 0.01
    shifted_a_lot = np.array([0.1, 0.15, 0.2, 0.15, 0.2, 0.2])  # PSI about 0.4
    rng = np.random.default_rng(47)
    analysis = CanaryAnalysis(ONLY_DRIFT)
    verdict = run(analysis, 200, lambda: (window(rng, 2000, predictions=shifted_a_little), window(rng, 2000)))
    assert verdict.log_e["prediction_drift"] > verdict.log_threshold["prediction_drift"]  # a real difference
    assert verdict.evidence["psi"] < 0.1  # but too small to matter
    assert not verdict.regression
    rng = np.random.default_rng(53)
    verdict = run(
        CanaryAnalysis(ONLY_DRIFT),
        200,
        lambda: (window(rng, 200, predictions=shifted_a_lot), window(rng, 1800)),
    )
    assert verdict.regression and verdict.metric == "prediction_drift"
    assert verdict.evidence["psi"] >= 0.1
    assert 0.0 < verdict.evidence["js_distance"] < 1.0


def test_drift_is_skipped_when_a_version_reports_no_predictions() -> None:
    rng = np.random.default_rng(59)
    analysis = CanaryAnalysis(ONLY_DRIFT)
    for _ in range(20):
        verdict = analysis.update(window(rng, 200, predictions=None), window(rng, 1800))
    assert verdict.log_e["prediction_drift"] == 0.0
    assert "psi" not in verdict.evidence


# -- evidence and helpers --------------------------------------------------------------------------


def test_evidence_reports_cumulative_figures() -> None:
    rng = np.random.default_rng(61)
    analysis = CanaryAnalysis(AnalysisConfig())
    hist = LatencyHistogram()
    c_requests = 0
    for _ in range(10):
        c = window(rng, 100)
        c.cpu_s_per_request = 0.002
        analysis.update(c, window(rng, 900))
        c_requests += c.requests
        hist.merge(LatencyHistogram.from_sparse(np.arange(NUM_BUCKETS), c.latency, sum_ms=0.0))
    verdict = analysis.verdict()
    assert verdict.candidate_requests == c_requests == verdict.evidence["candidate_requests"]
    assert verdict.evidence["candidate_p50_ms"] == pytest.approx(hist.quantile(0.5), rel=1e-12)
    assert verdict.evidence["candidate_p99_ms"] == pytest.approx(hist.quantile(0.99), rel=1e-12)
    assert verdict.evidence["candidate_cpu_s_per_request"] == pytest.approx(0.002)
    assert "stable_cpu_s_per_request" not in verdict.evidence
    assert verdict.evidence["ticks"] == 10


def test_psi_and_jensen_shannon_distance() -> None:
    a = np.array([10, 20, 30, 40])
    assert population_stability_index(a, a * 3) == pytest.approx(0.0)
    assert jensen_shannon_distance(a, a * 3) == pytest.approx(0.0)
    b = np.array([40, 30, 20, 10])
    p, q = a / a.sum(), b / b.sum()
    assert population_stability_index(a, b) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert population_stability_index(a, b) == pytest.approx(population_stability_index(b, a))
    # disjoint supports: the largest distance; empty bins are floored by the epsilon in PSI
    assert jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert math.isfinite(population_stability_index([1, 0], [0, 1]))
    assert math.isnan(population_stability_index([0, 0], [1, 1]))
    with pytest.raises(ValueError, match="length"):
        jensen_shannon_distance([1, 2], [1, 2, 3])


# -- state ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [AnalysisConfig(), AnalysisConfig(error_rate_points_margin=0.002, error_rate_ratio_margin=0.1)]
)
def test_state_round_trip_continues_exactly(config: AnalysisConfig) -> None:
    rng = np.random.default_rng(67)
    windows = [(window(rng, 100, 0.02, sigma=0.55), window(rng, 900)) for _ in range(60)]
    uninterrupted = CanaryAnalysis(config)
    first = CanaryAnalysis(config)
    for c, s in windows[:30]:
        uninterrupted.update(c, s)
        first.update(c, s)
    restored = CanaryAnalysis(config, json.loads(json.dumps(first.state())))
    assert restored.verdict() == first.verdict()
    assert restored.ticks == 30
    for c, s in windows[30:]:
        assert restored.update(c, s) == uninterrupted.update(c, s)
    assert restored.state() == uninterrupted.state()


def test_state_of_a_declared_regression_stays_declared() -> None:
    rng = np.random.default_rng(71)
    analysis = CanaryAnalysis(ONLY_ERRORS)
    run(analysis, 60, lambda: (window(rng, 100, 0.3), window(rng, 900)))
    restored = CanaryAnalysis(ONLY_ERRORS, json.loads(json.dumps(analysis.state())))
    assert restored.verdict().regression and restored.verdict().metric == "error_rate"


def test_state_is_plain_json_when_windows_hold_numpy_scalars() -> None:
    rng = np.random.default_rng(73)
    analysis = CanaryAnalysis(AnalysisConfig())
    for _ in range(3):
        c, s = window(rng, 100), window(rng, 900)
        # what a caller summing numpy arrays hands over
        c.requests, c.errors = np.int64(c.requests), np.int64(c.errors)  # type: ignore[assignment]
        c.cpu_s_per_request = np.float64(0.001)
        verdict = analysis.update(c, s)
    assert type(verdict.candidate_requests) is int
    restored = CanaryAnalysis(AnalysisConfig(), json.loads(json.dumps(analysis.state())))
    assert restored.verdict() == verdict


def test_state_from_another_configuration_is_rejected() -> None:
    state = CanaryAnalysis(AnalysisConfig()).state()
    with pytest.raises(ValueError, match="grid"):
        CanaryAnalysis(AnalysisConfig(odds_ratio_grid_size=24), state)
    with pytest.raises(ValueError, match="metrics"):
        CanaryAnalysis(ONLY_ERRORS, state)
    with pytest.raises(ValueError, match="format"):
        CanaryAnalysis(AnalysisConfig(), {**state, "format": 99})
