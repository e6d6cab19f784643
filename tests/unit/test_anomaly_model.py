"""The agents' anomaly model: detection, ONNX parity, determinism, online scoring, calibration, root cause."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from testkit import shared_data_dir

from foedus.federation.anomaly import (
    FEATURE_OUTPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    SEARCH_SPACE,
    AnomalyConfig,
    AnomalyModel,
    block_maxima_threshold,
)
from foedus.federation.evaluation.metrics import average_precision

F = 8
QUICK = AnomalyConfig(window=8, hidden=64, code=4, epochs=8, lr=3e-3, calibration_block=200)
NAMES = ["cpu", "mem", "rps", "p50", "p99", "errors", "net_in", "net_out"]


def _series(n: int, seed: int, start: int = 0) -> np.ndarray:
    """Eight correlated raw metrics driven by two latent daily-like cycles, in very different units."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + n)
    latent = np.stack([np.sin(2 * np.pi * t / 60), np.cos(2 * np.pi * t / 23)], axis=1)
    mixing = np.random.default_rng(99).normal(size=(2, F))
    x = latent @ mixing + 0.05 * rng.standard_normal((n, F))
    units = np.array([1.0, 1e3, 50.0, 0.01, 0.1, 2.0, 1e6, 1e6])
    offsets = np.array([50.0, 8e3, 400.0, 0.2, 1.5, 3.0, 5e7, 4e7])
    return offsets + units * x


def _inject(x: np.ndarray, start: int, length: int, feature: int, sigmas: float = 8.0) -> np.ndarray:
    out = x.copy()
    out[start : start + length, feature] += sigmas * x[:, feature].std()
    return out


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return _series(2400, seed=1)


@pytest.fixture(scope="module")
def model(train: np.ndarray) -> AnomalyModel:
    return AnomalyModel.fit(train, feature_names=NAMES, config=QUICK, search=False, seed=0)


@pytest.fixture(scope="module")
def test_series() -> np.ndarray:
    return _series(800, seed=2, start=2400)


def test_detects_injected_anomalies_with_few_false_alarms(
    model: AnomalyModel, test_series: np.ndarray
) -> None:
    x = _inject(_inject(test_series, 300, 15, feature=2), 600, 10, feature=5)
    label = np.zeros(len(x), dtype=int)
    label[300:315] = label[600:610] = 1
    flags = model.predict(x)
    assert flags[300:315].any() and flags[600:610].any()
    # an anomaly stays in the longest member's window for W steps after it ends, and before W
    # steps have been seen the window is padded with copies of the first row: both are allowed
    # to alarm, nothing else may more than rarely
    w = model.window
    near = np.zeros(len(x), dtype=bool)
    near[: w - 1] = near[300 : 315 + w] = near[600 : 610 + w] = True
    assert flags[~near].mean() < 0.01
    assert not flags[315 + w : 330 + w].any() and not flags[610 + w : 620 + w].any()
    assert average_precision(model.score(x), label) > 0.8


def test_a_single_network_alarms_on_few_steps_beside_the_anomalies(
    train: np.ndarray, test_series: np.ndarray
) -> None:
    single = AnomalyModel.fit(train, config=replace(QUICK, members=1), search=False, seed=0)
    assert single.window == QUICK.window and len(single.member_weights) == 1
    x = _inject(_inject(test_series, 300, 15, feature=2), 600, 10, feature=5)
    label = np.zeros(len(x), dtype=int)
    label[300:315] = label[600:610] = 1
    flags = single.predict(x)
    assert flags[300:315].any() and flags[600:610].any()
    assert flags[label == 0].mean() < 0.02


def test_ensemble_members_are_weighed_by_their_own_training_threshold(
    model: AnomalyModel, train: np.ndarray, test_series: np.ndarray
) -> None:
    assert QUICK.windows == (QUICK.window, 2 * QUICK.window) and model.window == 2 * QUICK.window
    members = model.member_scores(train)
    assert members.shape == (2, len(train))
    expected = [1.0 / (2 * block_maxima_threshold(s, QUICK.calibration_block)) for s in members]
    np.testing.assert_allclose(model.member_weights, expected, rtol=1e-6)
    # the score is the weighted sum of the members' own scores, on the test series too
    weighted = np.asarray(model.member_weights) @ model.member_scores(test_series)
    np.testing.assert_allclose(model.score(test_series), weighted, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="windows"):
        AnomalyModel(
            model._nets()[:1],
            config=model.config,
            center=model.center,
            scale=model.scale,
            threshold=1.0,
            feature_names=NAMES,
        )


def test_feature_scores_sum_to_the_score(model: AnomalyModel, test_series: np.ndarray) -> None:
    scores = model.score(test_series)
    parts = model.feature_scores(test_series)
    assert parts.shape == (len(test_series), F)
    np.testing.assert_allclose(parts.sum(axis=1), scores, rtol=1e-5, atol=1e-7)
    assert (parts >= 0).all()


def test_onnx_graph_matches_torch_including_normalisation(
    model: AnomalyModel, test_series: np.ndarray, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    path = model.export_onnx(tmp_path / "anomaly.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME, FEATURE_OUTPUT]
    x = _inject(test_series, 100, 5, feature=0)
    steps = list(range(0, len(x), 3))
    windows = np.stack([model.window_at(x, t) for t in steps]).astype(np.float32)  # raw metrics
    score, parts = session.run(None, {INPUT_NAME: windows})
    np.testing.assert_allclose(score, model.score(x)[steps], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(parts, model.feature_scores(x)[steps], rtol=1e-4, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["foedus.kind"] == "anomaly"
    assert int(meta["foedus.window"]) == model.window == windows.shape[1]
    assert meta["foedus.windows"] == ",".join(str(w) for w in model.config.windows)
    assert float(meta["foedus.threshold"]) == model.threshold
    assert meta["foedus.features"].split(",") == NAMES


def test_same_seed_same_model_other_seed_other_model(train: np.ndarray, test_series: np.ndarray) -> None:
    config = AnomalyConfig(window=5, hidden=32, code=4, epochs=2, calibration_block=200)
    a = AnomalyModel.fit(train, config=config, search=False, seed=7)
    b = AnomalyModel.fit(train, config=config, search=False, seed=7)
    c = AnomalyModel.fit(train, config=config, search=False, seed=8)
    np.testing.assert_array_equal(a.score(test_series), b.score(test_series))
    assert a.threshold == b.threshold
    assert not np.array_equal(a.score(test_series), c.score(test_series))


def test_online_score_at_t_ignores_later_data(model: AnomalyModel, test_series: np.ndarray) -> None:
    full = model.score(test_series)
    for t in [0, 1, model.window - 2, model.window - 1, 250]:
        prefix = model.score(test_series[: t + 1])
        np.testing.assert_allclose(prefix, full[: t + 1], rtol=1e-6, atol=1e-9)
        altered = test_series.copy()
        altered[t + 1 :] = altered[t + 1 :] * 3.0 + 17.0
        np.testing.assert_allclose(model.score(altered)[: t + 1], full[: t + 1], rtol=1e-6, atol=1e-9)
    # before a full window, the window is padded with copies of the first step
    padded = np.repeat(test_series[:1], model.window, axis=0)
    padded[-2:] = test_series[:2]
    np.testing.assert_array_equal(model.window_at(test_series, 1), padded)


def test_threshold_is_calibrated_on_training_scores_only(model: AnomalyModel, train: np.ndarray) -> None:
    # fit takes no labels; the threshold is the median of the training scores' block maxima
    expected = block_maxima_threshold(model.score(train), QUICK.calibration_block)
    assert model.threshold == pytest.approx(expected)
    assert (model.score(train) >= model.threshold).mean() < 0.01


def test_block_maxima_threshold_ignores_anomalies_in_a_minority_of_blocks() -> None:
    rng = np.random.default_rng(5)
    clean = rng.standard_normal(100 * 50)
    dirty = clean.copy()
    for b in (3, 17, 40):  # huge anomalies in 3 of 50 blocks
        dirty[b * 100 + 10 : b * 100 + 30] += 50.0
    clean_maxima = clean.reshape(50, 100).max(axis=1)
    assert block_maxima_threshold(clean, 100) == pytest.approx(np.median(clean_maxima))
    shift = abs(block_maxima_threshold(dirty, 100) - block_maxima_threshold(clean, 100))
    assert shift < 0.2  # the order statistics around the median move by one place at most
    assert np.quantile(dirty, 0.999) - np.quantile(clean, 0.999) > 40.0  # a high quantile does not cope
    assert block_maxima_threshold([1.0, 3.0], 100) == 3.0  # shorter than a block: the maximum


@pytest.mark.parametrize("method", ["error", "shap"])
def test_explain_ranks_the_faulty_feature_first(
    model: AnomalyModel, test_series: np.ndarray, method: str
) -> None:
    x = _inject(test_series, 400, 12, feature=4)
    top = model.explain(x, 405, k=3, method=method)
    assert len(top) == 3
    assert top[0][0] == 4
    assert top[0][1] > 0 and top[0][1] >= top[1][1] >= top[2][1]


def test_error_attributions_are_exact_shapley_values_of_the_additive_score(
    model: AnomalyModel, test_series: np.ndarray
) -> None:
    # The score is v(S) = sum of the error terms of the features in S; Shapley values by enumeration.
    x = _inject(test_series, 200, 5, feature=1)
    terms = model.feature_scores(x)[202]

    def v(coalition: tuple[int, ...]) -> float:
        return float(sum(terms[i] for i in coalition))

    shapley = np.zeros(F)
    for i in range(F):
        others = [j for j in range(F) if j != i]
        for size in range(F):
            weight = math.factorial(size) * math.factorial(F - size - 1) / math.factorial(F)
            for subset in itertools.combinations(others, size):
                shapley[i] += weight * (v((*subset, i)) - v(subset))
    np.testing.assert_allclose(shapley, terms, rtol=1e-9, atol=1e-12)
    explained = dict(model.explain(x, 202, k=F, method="error"))
    np.testing.assert_allclose([explained[i] for i in range(F)], terms, rtol=1e-5, atol=1e-6)
    assert sum(explained.values()) == pytest.approx(model.score(x)[202], rel=1e-5)


def test_adapt_follows_a_new_normal_and_still_flags_faults(model: AnomalyModel, train: np.ndarray) -> None:
    # From step 2400 on, the 'cpu' metric runs 3 standard deviations higher for good: a new
    # normal. The fitted model alarms on it throughout; adapted block by block without labels,
    # it stops alarming on the new level and still flags a fault on another metric.
    drifted = _series(1600, seed=3, start=2400)
    drifted[:, 0] += 3.0 * train[:, 0].std()
    static_flags = model.predict(np.concatenate([train, drifted]))[2400:]
    assert static_flags[-200:].mean() > 0.5
    adapted = model.copy()
    history = train
    returned = []
    for start in range(0, 1400, 200):
        history = np.concatenate([history, drifted[start : start + 200]])
        returned.append(adapted.adapt(history, 200, seed=0))
    assert returned[0].mean() > 0.5  # the first drifted block is flagged by the model as fitted
    last = _inject(drifted, 1500, 10, feature=5)
    flags = adapted.predict(np.concatenate([train, last]))[2400:]
    assert flags[1400:1500].mean() < 0.05  # the new level is normal now
    assert flags[1500:1510].any()  # a fault is still a fault
    # the copy was adapted, the original model was not
    np.testing.assert_array_equal(model.predict(np.concatenate([train, drifted]))[2400:], static_flags)
    with pytest.raises(ValueError, match="new"):
        adapted.adapt(history, 0)


def test_drift_compensation_stops_daily_alarms_on_a_moved_metric_and_keeps_faults(
    model: AnomalyModel, train: np.ndarray, tmp_path: Path
) -> None:
    # 'cpu' runs 3 standard deviations higher for good from step 2400 on. The plain score alarms
    # throughout; the compensated score, after drift_blocks blocks, no longer does, and a fault
    # on another metric is still flagged.
    import onnx

    block, blocks = QUICK.calibration_block, QUICK.drift_blocks
    assert model.feature_levels is not None and model.feature_levels.shape == (F,)
    drifted = _series((blocks + 2) * block, seed=3, start=2400)
    drifted[:, 0] += 3.0 * train[:, 0].std()
    fault = blocks * block + 100
    drifted = _inject(drifted, fault, 10, feature=5)
    plain = model.score(drifted)
    compensated = model.compensated_scores(drifted, history=train)
    settled = slice(blocks * block, (blocks + 2) * block)
    normal = np.ones(len(drifted), dtype=bool)
    normal[fault : fault + 10] = False
    assert (plain[: blocks * block] >= model.threshold).mean() > 0.5
    assert (plain[settled][normal[settled]] >= model.threshold).mean() > 0.5
    assert (compensated[settled][normal[settled]] >= model.threshold).mean() < 0.02
    assert (compensated[fault : fault + 10] >= model.threshold).any()
    assert (compensated <= plain * (1 + 1e-5)).all()  # never scaled up
    # turned off, the compensated scores are the plain ones; the levels travel with the model
    off = AnomalyModel.load(model.save(tmp_path / "m.pt"))
    np.testing.assert_array_equal(off.feature_levels, model.feature_levels)
    off.config = replace(off.config, drift_blocks=0)
    np.testing.assert_allclose(off.compensated_scores(drifted, history=train), plain, rtol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(model.export_onnx(tmp_path / "m.onnx"))).metadata_props}
    assert [float(v) for v in meta["foedus.feature_levels"].split(",")] == model.feature_levels.tolist()
    assert (meta["foedus.drift_blocks"], meta["foedus.calibration_block"]) == (str(blocks), str(block))


def test_shap_players_are_whole_metrics_of_the_window(model: AnomalyModel, test_series: np.ndarray) -> None:
    # Kernel SHAP's attributions add up to the score minus the score of the window with every
    # metric at its training median; a fault that ended two steps before the scored step is
    # still attributed to its metric (varying only the scored step's metrics would miss it).
    x = _inject(test_series, 300, 3, feature=2)
    t = 304  # faulty rows 300..302; the score averages rows 302..304
    values = dict(model.explain(x, t, k=F, method="shap", nsamples=4096))
    at_medians = np.repeat(model.center[None, :], model.window, axis=0)
    baseline = float(model.score(at_medians)[-1])
    assert sum(values.values()) == pytest.approx(model.score(x)[t] - baseline, rel=1e-3, abs=1e-6)
    assert max(values, key=lambda i: values[i]) == 2


@pytest.mark.parametrize(("selection", "members"), [("injection", 1), ("loss", 1), ("injection", 2)])
def test_search_picks_the_best_candidate_by_its_unsupervised_criterion(
    train: np.ndarray, selection: str, members: int
) -> None:
    config = AnomalyConfig(
        code=4, epochs=1, search_epochs=1, calibration_block=200, selection=selection, members=members
    )
    fitted = AnomalyModel.fit(train[:1200], config=config, seed=0)
    results = fitted.search_results
    if members == 1:  # window, hidden width and learning rate
        assert len(results) == math.prod(len(v) for v in SEARCH_SPACE.values())
    else:  # an ensemble's windows are its ladder; hidden width and learning rate are searched
        assert len(results) == len(SEARCH_SPACE["hidden"]) * len(SEARCH_SPACE["lr"])
        assert all("window" not in r for r in results) and fitted.config.windows == config.windows
    if selection == "injection":
        best = min(results, key=lambda r: (-r["val_injection_auc"], r["val_loss"]))
    else:
        best = min(results, key=lambda r: r["val_loss"])
    assert (fitted.config.window, fitted.config.hidden, fitted.config.lr) == (
        best.get("window", config.window),
        best["hidden"],
        best["lr"],
    )
    assert all(math.isfinite(r["val_loss"]) and 0.5 < r["val_injection_auc"] <= 1.0 for r in results)


def test_save_and_load_round_trip(model: AnomalyModel, test_series: np.ndarray, tmp_path: Path) -> None:
    loaded = AnomalyModel.load(model.save(tmp_path / "model.pt"))
    assert loaded.threshold == model.threshold and loaded.feature_names == NAMES
    assert loaded.config == model.config and loaded.member_weights == model.member_weights
    np.testing.assert_array_equal(loaded.score(test_series), model.score(test_series))


def test_a_single_network_saved_in_the_first_format_still_loads(
    train: np.ndarray, test_series: np.ndarray, tmp_path: Path
) -> None:
    import torch

    single = AnomalyModel.fit(train, config=replace(QUICK, members=1, epochs=1), search=False, seed=0)
    state = torch.load(str(single.save(tmp_path / "v2.pt")), weights_only=True)
    config = {k: v for k, v in state["config"].items() if k != "members"}
    first = {**state, "version": 1, "config": config, "net": state["nets"][0]}
    for key in ("nets", "member_weights"):
        del first[key]
    torch.save(first, str(tmp_path / "v1.pt"))
    loaded = AnomalyModel.load(tmp_path / "v1.pt")
    assert loaded.config == single.config and loaded.config.members == 1
    np.testing.assert_array_equal(loaded.score(test_series), single.score(test_series))
    torch.save({**state, "version": 9}, str(tmp_path / "v9.pt"))
    with pytest.raises(ValueError, match="version 9"):
        AnomalyModel.load(tmp_path / "v9.pt")


def test_missing_values_score_as_typical_and_bad_shapes_are_refused(
    model: AnomalyModel, test_series: np.ndarray
) -> None:
    x = test_series.copy()
    x[50, 3] = np.nan
    assert np.isfinite(model.score(x)).all()
    with pytest.raises(ValueError, match="features"):
        model.score(test_series[:, :3])
    with pytest.raises(ValueError, match="method"):
        model.explain(test_series, 5, method="lime")
    with pytest.raises(ValueError, match="score_steps"):
        AnomalyConfig(window=2, score_steps=3)
    with pytest.raises(ValueError, match="members"):
        AnomalyConfig(members=0)


def test_smd_evaluation_on_one_truncated_real_machine() -> None:
    from foedus.federation.evaluation.smd import evaluate_smd, load_machine, smd_dir

    data_dir = shared_data_dir()
    try:
        smd_dir(data_dir or Path("/nonexistent"))
    except FileNotFoundError as exc:
        pytest.skip(f"SMD data absent: {exc}")
    assert data_dir is not None
    config = AnomalyConfig(epochs=2)
    result = evaluate_smd(
        data_dir, machines=["machine-1-2"], config=config, search=False, limit=8000, shap_points=2
    )
    for prefix in ("smd_", "iforest_smd_", "pca_smd_", "stat_smd_"):
        for figure in ("f1_pa", "f1", "auc_pr"):
            assert 0.0 <= result[prefix + figure] <= 1.0, prefix + figure
    pairs = [
        ("smd_hitrate_100", "smd_hitrate_150"),  # Kernel SHAP at detected points
        ("smd_hitrate_100_all", "smd_hitrate_150_all"),  # error terms at every labelled point
        ("smd_error_hitrate_100", "smd_error_hitrate_150"),
        ("pca_smd_hitrate_100", "pca_smd_hitrate_150"),
    ]
    for at_100, at_150 in pairs:
        assert 0.0 <= result[at_100] <= result[at_150] <= 1.0, at_150
    anomalies = load_machine(data_dir, "machine-1-2", limit=8000).interpretation
    assert 1 <= result["smd_shap_points"] <= 2 * len(anomalies)  # at most 2 explained per anomaly
    assert result["smd_f1_pa"] > 0.5
    assert result["smd_machines"] == 1.0


def test_federated_task_trains_a_shared_network_and_each_site_keeps_its_normalisation(tmp_path: Path) -> None:
    """Two sites with the same behaviour at different levels: FedAvg over the real task lowers both
    sites' reconstruction error, and each site's detector from the global weights (its own centre,
    scale and threshold) flags an injected fault; the ONNX export matches torch."""
    import onnxruntime as ort

    from foedus.federation.anomaly import AnomalyConfig, AnomalyModel, federated_task
    from foedus.federation.flower.task import LocalData

    rng = np.random.default_rng(11)
    t = np.arange(1500)
    base = np.column_stack([np.sin(t / 15), np.cos(t / 15), np.sin(t / 15) * 0.5])

    def site(level: float, spread: float) -> np.ndarray:
        return (level + spread * base + rng.normal(0, 0.05 * spread, base.shape)).astype(np.float32)

    sites = [site(10.0, 1.0), site(500.0, 40.0)]  # the same pattern, at very different levels
    task = federated_task(features=3, window=8, hidden=32, code=4, lr=3e-3, batch_size=64, seed=1)
    weights = task.initial_arrays()
    data = [LocalData(train=x) for x in sites]
    before = [task.evaluate(weights, d)["eval-loss"] for d in data]
    for _ in range(3):  # FedAvg, weighted by the number of examples
        updates = [task.train(weights, d, epochs=1) for d in data]
        total = sum(m["num-examples"] for _, m in updates)
        weights = {k: sum(u[k] * (m["num-examples"] / total) for u, m in updates) for k in weights}
    after = [task.evaluate(weights, d)["eval-loss"] for d in data]
    assert all(a < 0.7 * b for a, b in zip(after, before, strict=True)), (before, after)

    config = AnomalyConfig(window=8, hidden=32, code=4, calibration_block=200)
    for x in sites:
        model = AnomalyModel.from_shared_weights(weights, x, config=config)
        test = x[-300:].copy()
        test[150:160, 1] += 8 * np.std(x[:, 1])
        scores = model.score(test)
        assert scores[150:160].max() > model.threshold > float(np.median(scores))
        path = model.export_onnx(tmp_path / f"site-{int(x[0, 0])}.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        window = test[150 - 7 : 151][None].astype(np.float32)
        got = session.run(["score"], {"metrics": window})[0][0]
        assert got == pytest.approx(float(scores[150]), rel=1e-4, abs=1e-5)
