"""Shared detection metrics and threshold rules on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from foedus.federation.evaluation.metrics import (
    average_precision,
    best_f1_threshold,
    detection_scores,
    fit_gpd,
    hit_rate,
    label_segments,
    point_adjust,
    pot_threshold,
    precision_recall_f1,
    quantile_threshold,
)

LABEL = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0])
PRED = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0], dtype=bool)


def test_label_segments_are_half_open_runs() -> None:
    assert label_segments(LABEL) == [(1, 4), (6, 8)]
    assert label_segments([1, 1, 0, 1]) == [(0, 2), (3, 4)]
    assert label_segments([0, 0]) == []


def test_point_adjustment_fills_a_detected_segment_only() -> None:
    adjusted = point_adjust(PRED, LABEL)
    assert adjusted.tolist() == [False, True, True, True, False, True, False, False, False]


def test_plain_and_point_adjusted_f1_by_hand() -> None:
    # plain: TP 1 (step 2), FP 1 (step 5), FN 4 -> P 1/2, R 1/5, F1 2/7
    p, r, f1 = precision_recall_f1(PRED, LABEL)
    assert (p, r) == (0.5, 0.2)
    assert f1 == pytest.approx(2 / 7)
    # adjusted: the first segment counts whole -> TP 3, FP 1, FN 2 -> P 3/4, R 3/5, F1 2/3
    scores = detection_scores(PRED, LABEL)
    assert scores.f1 == pytest.approx(2 / 7)
    assert (scores.precision_pa, scores.recall_pa) == (0.75, 0.6)
    assert scores.f1_pa == pytest.approx(2 / 3)
    assert set(scores.as_dict()) == {"precision", "recall", "f1", "precision_pa", "recall_pa", "f1_pa"}


def test_empty_predictions_give_zero_not_nan() -> None:
    assert precision_recall_f1(np.zeros(9, dtype=bool), LABEL) == (0.0, 0.0, 0.0)


def test_average_precision_by_hand_and_against_sklearn() -> None:
    # ranks: + - + -  ->  AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    rng = np.random.default_rng(3)
    for _ in range(5):
        scores = np.round(rng.random(400), 2)  # many ties
        label = rng.random(400) < 0.15
        assert average_precision(scores, label) == pytest.approx(
            average_precision_score(label, scores), abs=1e-12
        )
    assert math.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_hit_rate_follows_the_omnianomaly_definition() -> None:
    fs = np.zeros((6, 5))
    fs[0] = [0, 5, 1, 4, 0]  # truth {1, 3}: top2 = {1, 3} -> 1; top3 = {1, 3, 2} -> 1
    fs[1] = [5, 4, 0, 0, 0]  # top2 = {0, 1} -> 1/2; top3 = {0, 1, 2} (tie -> lower index) -> 1/2
    fs[4] = [0, 0, 1, 9, 0]  # truth {2}: top1 = {3} -> 0 (both P)
    segments = [(0, 2, [1, 3]), (4, 5, [2])]
    assert hit_rate(fs, segments, p=1.0) == pytest.approx((1 + 0.5 + 0) / 3)
    assert hit_rate(fs, segments, p=1.5) == pytest.approx((1 + 0.5 + 0) / 3)
    # P=200% takes 4 of the 5 features at the two-dim points and 2 at the one-dim point
    assert hit_rate(fs, segments, p=2.0) == pytest.approx((1 + 1 + 1) / 3)
    # averaged over points, not segments: only the detected points count with a mask
    assert hit_rate(fs, segments, p=1.0, mask=[1, 0, 0, 0, 1, 0]) == pytest.approx(0.5)
    assert math.isnan(hit_rate(fs, segments, mask=np.zeros(6)))


def test_hit_rate_weighs_points_not_segments() -> None:
    fs = np.tile([1.0, 0.0], (4, 1))
    segments = [(0, 3, [0]), (3, 4, [1])]  # three perfect points, one miss
    assert hit_rate(fs, segments) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="outside"):
        hit_rate(fs, [(0, 1, [2])])


def test_best_f1_threshold_is_an_oracle_over_score_quantiles() -> None:
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.1, 0.3, 0.7, 0.2, 0.1])
    # flagging >= 0.2 catches all 5 anomalous points and one normal (0.3): F1 = 2 * 5/6 / (5/6 + 1)
    th, f1 = best_f1_threshold(scores, LABEL)
    assert f1 == pytest.approx(10 / 11)
    assert 0.1 < th <= 0.2
    # point adjusted, anything in (0.3, 0.7] flags one point of each segment and no normal one
    th_pa, f1_pa = best_f1_threshold(scores, LABEL, point_adjusted=True)
    assert f1_pa == 1.0
    assert 0.3 < th_pa <= 0.7


def test_gpd_fit_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    u = rng.random(20000)
    for xi, sigma in [(0.25, 2.0), (-0.2, 1.0)]:
        y = sigma / xi * (u ** (-xi) - 1.0)
        xi_hat, sigma_hat = fit_gpd(y)
        assert xi_hat == pytest.approx(xi, abs=0.05)
        assert sigma_hat == pytest.approx(sigma, rel=0.05)
    xi_hat, sigma_hat = fit_gpd(-np.log(u))  # exponential: xi = 0
    assert abs(xi_hat) < 0.03 and sigma_hat == pytest.approx(1.0, rel=0.05)


def test_pot_threshold_extrapolates_the_tail() -> None:
    rng = np.random.default_rng(1)
    x = rng.exponential(size=50000)
    # Exp(1): P(X > t) = exp(-t) -> the 1e-4 risk level is ln(1e4) = 9.21, beyond most samples
    assert pot_threshold(x, risk=1e-4) == pytest.approx(math.log(1e4), rel=0.06)
    assert pot_threshold(x, risk=1e-3) == pytest.approx(math.log(1e3), rel=0.05)
    assert quantile_threshold(x, 0.99) == pytest.approx(math.log(100), rel=0.05)
    with pytest.raises(ValueError, match="within"):
        pot_threshold(x, risk=0.0)
