"""NAB's scoring method on hand-built cases, NAB result files, and the online univariate detectors."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from testkit import shared_data_dir

from foedus.federation import univariate
from foedus.federation.evaluation import nab

FloatArray = npt.NDArray[np.float64]

STANDARD = nab.CostMatrix(tp=1.0, fp=0.11, fn=1.0)
LOW_FN = nab.CostMatrix(tp=1.0, fp=0.11, fn=2.0)
N = 1000  # probation: floor(0.15 * 1000) = 150 rows
WINDOW = (400, 499)  # 100 rows


def _detections(*rows: int, n: int = N) -> np.ndarray:
    scores = np.zeros(n)
    scores[list(rows)] = 1.0
    return scores


def _score(
    *rows: int, windows: list[tuple[int, int]] | None = None, cost: nab.CostMatrix = STANDARD
) -> float:
    return nab.score_series(_detections(*rows), [WINDOW] if windows is None else windows, cost, 0.5).raw


def test_probationary_period_is_15_percent_capped_at_750_rows() -> None:
    assert nab.probation_length(1000) == 150
    assert nab.probation_length(4032) == 604  # floor(604.8)
    assert nab.probation_length(5000) == 750
    assert nab.probation_length(22695) == 750
    assert nab.probation_length(10) == 1


def test_scaled_sigmoid_matches_nab_reference_points() -> None:
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == pytest.approx(0.0, abs=1e-12)
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(3.0) == -1.0


def test_detection_at_window_start_earns_a_tp() -> None:
    assert _score(WINDOW[0]) == pytest.approx(1.0)


def test_detection_at_window_end_earns_about_nothing() -> None:
    # relative position -1/width: sigma(-0.01) / sigma(-1)
    assert _score(WINDOW[1]) == pytest.approx(nab.scaled_sigmoid(-0.01) / nab.scaled_sigmoid(-1.0))
    assert 0.0 < _score(WINDOW[1]) < 0.03


def test_earlier_detection_in_a_window_is_worth_more_and_only_the_best_counts() -> None:
    middle = _score(450)
    assert 0.8 < middle < 0.9
    assert _score(420) > middle > _score(480)
    assert _score(420, 450, 480) == pytest.approx(_score(420))


def test_missed_window_costs_a_fn() -> None:
    assert _score() == pytest.approx(-1.0)
    assert _score(cost=LOW_FN) == pytest.approx(-2.0)


def test_false_positive_weights_by_distance_after_the_window() -> None:
    hit = _score(WINDOW[0])
    just_after = _score(WINDOW[0], 500) - hit  # one row past the end: sigma(1/99) * A_FP
    assert just_after == pytest.approx(nab.scaled_sigmoid(1 / 99) * 0.11)
    assert -0.01 < just_after < 0.0
    one_width = _score(WINDOW[0], 598) - hit  # (598 - 499) / 99 = 1
    assert one_width == pytest.approx(-0.98661 * 0.11, abs=1e-5)
    far = _score(WINDOW[0], 900) - hit  # beyond three widths
    assert far == pytest.approx(-0.11)


def test_false_positive_before_any_window_costs_a_fp_and_probation_is_ignored() -> None:
    assert _score(WINDOW[0], 200) - _score(WINDOW[0]) == pytest.approx(-0.11)
    assert _score(WINDOW[0], 100) == pytest.approx(_score(WINDOW[0]))  # row 100 < 150: probation


def test_false_positives_follow_the_latest_window_only() -> None:
    windows = [(300, 349), (700, 749)]
    base = _score(300, 700, windows=windows)
    assert base == pytest.approx(2.0)
    assert _score(300, 700, 360, windows=windows) - base == pytest.approx(nab.scaled_sigmoid(11 / 49) * 0.11)
    assert _score(300, 700, 650, windows=windows) - base == pytest.approx(-0.11)  # 301 rows after


def test_window_inside_probation_is_not_counted() -> None:
    result = nab.score_series(np.zeros(N), [(10, 50), WINDOW], STANDARD, 0.5)
    assert result.fn == 1 and result.raw == pytest.approx(-1.0)


def test_perfect_detector_scores_100_and_null_detector_0() -> None:
    corpus = [
        _series("fam/a.csv", 1000, [(400, 499)]),
        _series("fam/b.csv", 2000, [(500, 549), (1200, 1399)]),
        _series("other/c.csv", 800, []),
    ]
    null_scores = {s.name: np.zeros(len(s)) for s in corpus}
    perfect_scores = {s.name: _detections(*(w[0] for w in s.windows), n=len(s)) for s in corpus}
    for cost in (STANDARD, LOW_FN, nab.CostMatrix(tp=1.0, fp=0.22, fn=1.0)):
        perfect = nab.score_detector(corpus, perfect_scores, cost)
        null = nab.score_detector(corpus, null_scores, cost)
        assert perfect.score == pytest.approx(100.0)
        assert null.score == pytest.approx(0.0)
        assert null.threshold == nab.NEVER_THRESHOLD
        assert perfect.perfect == pytest.approx(3 * cost.tp)
        assert perfect.null == pytest.approx(-3 * cost.fn)


def test_sweep_matches_scoring_at_every_threshold_and_picks_the_best() -> None:
    rng = np.random.default_rng(3)
    corpus = [_series("f/a.csv", 900, [(300, 359), (600, 699)]), _series("f/b.csv", 1200, [(700, 799)])]
    scores = [np.round(rng.random(len(s)) ** 8, 3) for s in corpus]
    windows = [s.windows for s in corpus]
    sweep = nab.sweep_thresholds(scores, windows, STANDARD)
    assert np.all(np.diff(sweep.thresholds) < 0)
    for threshold, raw in zip(sweep.thresholds, sweep.raw_scores, strict=True):
        direct = sum(
            nab.score_series(a, w, STANDARD, threshold).raw for a, w in zip(scores, windows, strict=True)
        )
        assert raw == pytest.approx(direct)
    assert sweep.best_raw == pytest.approx(sweep.raw_scores.max())


def test_sweep_ties_keep_the_highest_threshold() -> None:
    corpus = [_series("f/a.csv", N, [WINDOW])]
    scores = np.zeros(N)
    scores[WINDOW[0]] = 0.9
    scores[WINDOW[0] + 1] = 0.8  # adds nothing once 0.9 fired
    result = nab.score_detector(corpus, {"f/a.csv": scores}, STANDARD)
    assert result.threshold == 0.9
    assert result.score == pytest.approx(100.0)


def _series(name: str, n: int, windows: list[tuple[int, int]]) -> nab.NabSeries:
    values = np.sin(np.arange(n) / 10.0)
    return nab.NabSeries(
        name=name,
        timestamps=[f"row{i}" for i in range(n)],
        raw_values=[repr(float(v)) for v in values],
        values=values,
        windows=windows,
    )


def _write_nab_dir(root: Path, rng: np.random.Generator) -> None:
    """A tiny NAB layout: one labelled family with a spike, one unlabelled, real profiles."""
    start = np.datetime64("2014-04-01T00:00:00")
    for family, stem, spike in (("fam", "spiky", 700), ("quiet", "flat", None)):
        folder = root / "data" / family
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{stem}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "value"])
            for i in range(1000):
                stamp = str(start + np.timedelta64(5 * i, "m")).replace("T", " ")
                value = 10.0 + np.sin(i / 12.0) + 0.1 * rng.standard_normal()
                if spike is not None and spike <= i < spike + 3:
                    value += 8.0
                writer.writerow([stamp, f"{value:.4f}"])
    window = [
        str(start + np.timedelta64(5 * 650, "m")).replace("T", " ") + ".000000",
        str(start + np.timedelta64(5 * 749, "m")).replace("T", " ") + ".000000",
    ]
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(
        json.dumps({"fam/spiky.csv": [window], "quiet/flat.csv": []})
    )
    (root / "config").mkdir()
    profiles = {
        name: {"CostMatrix": {"tpWeight": c.tp, "fpWeight": c.fp, "fnWeight": c.fn, "tnWeight": 1.0}}
        for name, c in nab.DEFAULT_PROFILES.items()
    }
    (root / "config" / "profiles.json").write_text(json.dumps(profiles))


def test_loading_maps_window_timestamps_to_rows(tmp_path: Path) -> None:
    _write_nab_dir(tmp_path / "nab", np.random.default_rng(0))
    assert nab.resolve_nab_dir(tmp_path) == tmp_path / "nab"
    assert nab.resolve_nab_dir(tmp_path / "nab") == tmp_path / "nab"
    assert nab.resolve_nab_dir(tmp_path / "missing") is None
    corpus = nab.load_corpus(tmp_path / "nab")
    assert [s.name for s in corpus] == ["fam/spiky.csv", "quiet/flat.csv"]
    spiky = corpus[0]
    assert spiky.windows == [(650, 749)] and spiky.family == "fam" and spiky.stem == "spiky"
    assert spiky.labels().sum() == 100 and spiky.probation == 150
    assert nab.load_profiles(tmp_path / "nab") == nab.DEFAULT_PROFILES


def test_evaluate_nab_writes_nab_result_files_and_scores_the_spike(tmp_path: Path) -> None:
    _write_nab_dir(tmp_path / "nab", np.random.default_rng(1))
    messages: list[str] = []
    metrics = nab.evaluate_nab(tmp_path, out_dir=tmp_path / "results", progress=messages.append)
    for key in (
        "nab_score",
        "nab_score_low_fp",
        "nab_score_low_fn",
        "nab_threshold",
        "nab_series",
        "stat_nab_score",
        "gauss_nab_score",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["nab_series"] == 2.0
    assert metrics["nab_score"] > 80.0  # one obvious spike, found early, nothing else flagged
    assert messages
    path = tmp_path / "results" / univariate.DETECTOR_NAME / "fam" / f"{univariate.DETECTOR_NAME}_spiky.csv"
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(rows) == 1000
    assert sum(int(r["label"]) for r in rows) == 100
    assert all(0.0 <= float(r["anomaly_score"]) <= 1.0 for r in rows)
    assert rows[650]["timestamp"].endswith(":00") and rows[650]["label"] == "1"


def test_evaluate_nab_without_data_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        nab.evaluate_nab(tmp_path)


def _daily(days: int, period: int, seed: int) -> FloatArray:
    """Low first half of each day, high second half, a little noise."""
    rng = np.random.default_rng(seed)
    phase = np.arange(days * period) % period
    return (phase >= period // 2).astype(np.float64) + 0.05 * rng.standard_normal(days * period)


def _novelty(values: FloatArray) -> FloatArray:
    return univariate.novelty_scores(values, 150, 48)


def _gauss(values: FloatArray) -> FloatArray:
    return univariate.windowed_gaussian(values, window=300, step=50)


def _iforest(values: FloatArray) -> FloatArray:
    return univariate.isolation_forest(values, 150, refit_every=300, train=300)


ONLINE_RUNS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "novelty": _novelty,
    "gauss": _gauss,
    "stat": univariate.stat_scores,
    "iforest": _iforest,
}


@pytest.mark.parametrize("name", sorted(ONLINE_RUNS))
def test_detectors_are_online(name: str) -> None:
    """Scores of a prefix equal the same rows' scores on the whole series: nothing looks ahead."""
    if name == "iforest" and not univariate.isolation_forest_available():
        pytest.skip("scikit-learn is not installed")
    values = _daily(25, 48, seed=5)
    values[900:905] += 3.0
    run = ONLINE_RUNS[name]
    whole = run(values)
    assert whole.shape == values.shape
    assert np.all((whole >= 0.0) & (whole <= 1.0))
    np.testing.assert_allclose(run(values[:950]), whole[:950], rtol=1e-9, atol=1e-12)


def test_novelty_detector_alarms_once_on_a_spike_and_rests_after() -> None:
    values = _daily(30, 48, seed=1)
    values[1000:1003] += 4.0
    scores = univariate.novelty_scores(values, probation=216, period=48)
    assert np.all(scores[:216] == 0.0)
    alarms = np.flatnonzero(scores >= 0.5)
    assert alarms.size >= 1
    first = int(alarms[0])
    assert 1000 <= first <= 1003
    rest = round(univariate.NoveltyConfig().rest_fraction * 216)
    assert np.all(scores[first + 1 : first + rest + 1] == 0.0)
    assert np.sum((alarms < 990) | (alarms > 1003 + rest)) <= 1  # quiet on ordinary days


def test_novelty_detector_sees_a_missing_daily_jump_only_with_the_seasonal_signal() -> None:
    values = _daily(30, 48, seed=2)
    day = slice(20 * 48 + 24, 21 * 48)
    values[day] -= 1.0  # day 20 stays low all day
    with_season = univariate.novelty_scores(values, probation=216, period=48)
    without = univariate.novelty_scores(values, probation=216, period=None)
    assert with_season[day].max() >= 0.5
    assert without[day].max() < 0.5


def test_novelty_signals_match_brute_force_with_a_bounded_buffer() -> None:
    """The sliding-dot-product nearest neighbour and the seasonal lookups survive buffer trimming."""
    m, history, period = 4, 30, 10
    config = univariate.NoveltyConfig(
        window=m, neighbour_history=history, seasonal_days=2, seasonal_slack=1, recompute_every=50
    )
    detector = univariate.OnlineNoveltyDetector(20, period, config)
    values = 100.0 + np.cumsum(np.random.default_rng(7).standard_normal(400))
    for t, value in enumerate(values.tolist()):
        detector.update(value)
        pattern, seasonal, spread = detector.last_signals
        newest = values[t - m + 1 : t + 1]
        starts = range(max(0, t - 2 * m + 1 - history + 1), t - 2 * m + 2)
        if t >= 2 * m - 1:
            expected = min(float(np.sqrt(np.mean((newest - values[j : j + m]) ** 2))) for j in starts)
            assert pattern == pytest.approx(expected, rel=1e-6, abs=1e-6)
        else:
            assert pattern is None
        ends = [t - d * period + k for d in (1, 2) for k in (-1, 0, 1) if t - d * period + k >= m - 1]
        if t >= m - 1 and ends:
            expected = min(float(np.sqrt(np.mean((newest - values[e - m + 1 : e + 1]) ** 2))) for e in ends)
            assert seasonal == pytest.approx(expected, rel=1e-6, abs=1e-6)
        else:
            assert seasonal is None
        if t >= m - 1:
            assert spread == pytest.approx(float(np.std(newest)))


def test_novelty_detector_on_constant_then_step_and_nan() -> None:
    values = np.full(600, 7.0)
    values[400:] = 8.0
    values[450] = np.nan
    scores = univariate.novelty_scores(values, probation=90)
    assert np.all(scores[:400] == 0.0)
    assert scores[400:420].max() >= 0.5
    assert scores[450] == 0.0 and np.all(np.isfinite(scores))


def test_rows_per_day_and_config_validation() -> None:
    assert (
        univariate.rows_per_day(["2014-04-01 00:00:00", "2014-04-01 00:05:00", "2014-04-01 00:10:00"]) == 288
    )
    assert univariate.rows_per_day(["2011-07-01 00:00:01", "2011-07-01 01:00:01"]) == 24
    assert univariate.rows_per_day(["2011-07-01 00:00:01"]) is None
    assert univariate.rows_per_day(["row0", "row1"]) is None
    with pytest.raises(ValueError):
        univariate.NoveltyConfig(window=1)
    with pytest.raises(ValueError):
        univariate.NoveltyConfig(alarm_z=0.0)


def test_rest_period_post_processing() -> None:
    scores = np.array([0.9, 0.0, 0.6, 0.7, 0.1, 0.2, 0.55, 0.3])
    out = univariate.with_rest_period(scores, 0.5, rest=2, probation=1)
    np.testing.assert_array_equal(out, [0.9, 0.0, 0.6, 0.0, 0.0, 0.2, 0.55, 0.0])


@pytest.mark.slow
def test_real_nab_null_and_perfect_scores() -> None:
    data_dir = shared_data_dir()
    nab_dir = None if data_dir is None else nab.resolve_nab_dir(data_dir)
    if nab_dir is None:
        pytest.skip("NAB data not found (set FOEDUS_DATA_DIR to a folder holding nab/)")
    corpus = nab.load_corpus(nab_dir)
    windows = sum(len(s.windows) for s in corpus)
    assert windows > 0
    null, perfect = nab.null_and_perfect([s.windows for s in corpus], [len(s) for s in corpus], STANDARD)
    assert perfect == pytest.approx(windows)
    assert null == pytest.approx(-windows)
