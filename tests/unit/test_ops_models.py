"""Ops models: what an assigned version must look like, and what the agent gets from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from foedus_testdata import distance_scorer_onnx, iris_onnx, resource_predictor_onnx

ort = pytest.importorskip("onnxruntime")

from foedus.client_sdk.agent.ops_models import AnomalyScorer, OpsModelError, ResourcePredictor  # noqa: E402
from foedus.client_sdk.agent.serving import LoadedModel  # noqa: E402


def loaded(path: Path) -> LoadedModel:
    return LoadedModel.from_session(
        "ops", "1", ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    )


def test_scorer_scores_and_explains_the_metric_that_moved(tmp_path: Path) -> None:
    scorer = AnomalyScorer(
        loaded(distance_scorer_onnx(tmp_path, np.zeros(6), np.ones(6))), "ops", {"threshold": "10"}
    )
    assert scorer.threshold == 10.0
    row = np.array([0.0, 0.0, 5.0, 0.0, 0.0, 0.0])
    assert scorer.score(row) == pytest.approx(25.0)
    background = np.random.default_rng(0).normal(scale=0.1, size=(30, 6))
    top = scorer.explain(row, background)
    assert top[0][0] == "latency_p50_ms"
    assert top[0][1] > 20


def test_scorer_needs_a_threshold_and_the_vector_input(tmp_path: Path) -> None:
    model = loaded(distance_scorer_onnx(tmp_path, np.zeros(6), np.ones(6)))
    with pytest.raises(OpsModelError, match="threshold"):
        _ = AnomalyScorer(model, "ops", {}).threshold
    with pytest.raises(OpsModelError, match=r"\[N, 6\]"):
        AnomalyScorer(loaded(iris_onnx(tmp_path)), "iris", {"threshold": "1"})


def test_resource_predictor_outputs_become_named_scores(tmp_path: Path) -> None:
    predictor = ResourcePredictor(loaded(resource_predictor_onnx(tmp_path)), "ops", {})
    got = predictor.predict(np.array([1.0, 0.0, 0.1, 0.2, 50.0, 1000.0]))
    assert got == pytest.approx({"cpu_p90_next": 55.0, "memory_p90_next": 1100.0})


def windowed_scorer_onnx(
    path: Path, window: int, features: list[str], *, threshold: float | None = 3.0, dynamic: bool = False
) -> Path:
    """A windowed scorer: the squared change of the newest interval from the window's mean,
    summed over its features; the window, features and threshold in the metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = len(features)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["metrics", "axis1"], ["mean"], keepdims=0),
            helper.make_node("Gather", ["metrics", "last"], ["newest"], axis=1),
            helper.make_node("Sub", ["newest", "mean"], ["d"]),
            helper.make_node("Mul", ["d", "d"], ["d2"]),
            helper.make_node("ReduceSum", ["d2", "axis1"], ["score"], keepdims=0),
        ],
        "windowed_scorer",
        [helper.make_tensor_value_info("metrics", TensorProto.FLOAT, [None, None if dynamic else window, f])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        [
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(window - 1, dtype=np.int64), "last"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = {"foedus.kind": "anomaly", "foedus.features": ",".join(features), "foedus.window": str(window)}
    if threshold is not None:
        meta["foedus.threshold"] = str(threshold)
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_windowed_scorer_gets_the_last_intervals_of_its_features(tmp_path: Path) -> None:
    features = ["latency_p99_ms", "error_rate"]
    scorer = AnomalyScorer(loaded(windowed_scorer_onnx(tmp_path / "w.onnx", 4, features)), "ops", {})
    assert (scorer.window, scorer.features, scorer.threshold) == (4, tuple(features), 3.0)
    rows = np.zeros((10, 6))
    rows[:, 3] = 10.0  # latency_p99_ms steady...
    rows[-1, 3] = 14.0  # ...then up by 4 in the newest interval
    # window mean of the last 4: (10+10+10+14)/4 = 11; (14-11)^2 = 9
    assert scorer.score(rows) == pytest.approx(9.0)
    # fewer intervals than the window: padded with the first, so a single row scores 0
    assert scorer.score(rows[-1:]) == pytest.approx(0.0)
    # a tag overrides the metadata's threshold
    assert AnomalyScorer(scorer.model, "ops", {"threshold": "7"}).threshold == 7.0
    background = np.tile(rows[0], (20, 1)) + np.random.default_rng(1).normal(scale=0.01, size=(20, 6))
    top = scorer.explain(rows, background)
    assert top[0][0] == "latency_p99_ms"


def test_explanation_covers_the_whole_window(tmp_path: Path) -> None:
    # A spike two intervals back moves the window's mean, so the newest interval scores high
    # although it is normal itself; SHAP's players are whole metrics of the window, so the spiking
    # metric gets the score (varying only the newest interval would have credited nothing).
    features = ["latency_p99_ms", "error_rate"]
    scorer = AnomalyScorer(loaded(windowed_scorer_onnx(tmp_path / "w.onnx", 4, features)), "ops", {})
    rows = np.zeros((10, 6))
    rows[:, 3] = 10.0
    rows[-3, 3] = 30.0  # window 10, 30, 10, 10: mean 15, newest 10 -> score 25
    assert scorer.score(rows) == pytest.approx(25.0)
    background = np.tile(rows[0], (20, 1))
    top = scorer.explain(rows, background)
    assert top[0][0] == "latency_p99_ms"
    assert top[0][1] == pytest.approx(25.0, rel=1e-3)  # the background window scores 0
    assert abs(top[1][1]) < 1e-3


def test_windowed_model_contract_is_checked(tmp_path: Path) -> None:
    with pytest.raises(OpsModelError, match="do not measure"):
        AnomalyScorer(loaded(windowed_scorer_onnx(tmp_path / "a.onnx", 4, ["cpu_temperature"])), "ops", {})
    dynamic = AnomalyScorer(
        loaded(windowed_scorer_onnx(tmp_path / "b.onnx", 5, ["requests"], dynamic=True)), "ops", {}
    )
    assert dynamic.window == 5  # from foedus.window when the shape leaves it open
    no_threshold = AnomalyScorer(
        loaded(windowed_scorer_onnx(tmp_path / "c.onnx", 3, ["requests"], threshold=None)), "ops", {}
    )
    with pytest.raises(OpsModelError, match="threshold"):
        _ = no_threshold.threshold


def two_output_scorer_onnx(path: Path, meta: dict[str, str], *, one_term: bool = False) -> Path:
    """An interval scorer with the anomaly model's two outputs: per-metric terms (each metric
    squared) and their sum, plus the given metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["metrics", "metrics"], ["squares" if one_term else "feature_scores"]),
            *(
                [helper.make_node("ReduceSum", ["squares", "axis1"], ["feature_scores"], keepdims=1)]
                if one_term
                else []
            ),
            helper.make_node("ReduceSum", ["feature_scores", "axis1"], ["score"], keepdims=0),
        ],
        "two_output_scorer",
        [helper.make_tensor_value_info("metrics", TensorProto.FLOAT, [None, 6])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("feature_scores", TensorProto.FLOAT, [None, 1 if one_term else 6]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.helper.set_model_props(model, {"foedus.kind": "anomaly", "foedus.threshold": "2.0", **meta})
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def test_scorer_compensates_a_metric_that_moved_for_good(tmp_path: Path) -> None:
    meta = {
        "foedus.feature_levels": "1,1,1,1,1,1",
        "foedus.calibration_block": "3",
        "foedus.drift_blocks": "2",
    }
    scorer = AnomalyScorer(loaded(two_output_scorer_onnx(tmp_path / "c.onnx", meta)), "ops", {})
    assert scorer.compensation is not None
    moved = np.array([2.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # metric 0's term is 4, its level 1
    # two blocks of three intervals alarm; then the metric counts at its training level
    assert [scorer.score(moved) for _ in range(6)] == pytest.approx([4.0] * 6)
    assert scorer.score(moved) == pytest.approx(1.0) and scorer.threshold > 1.0
    fault = moved + np.array([0.0, 3.0, 0.0, 0.0, 0.0, 0.0])  # another metric's fault still counts
    assert scorer.score(fault) == pytest.approx(10.0)
    # without the metadata (or with it off) the score is the plain sum
    plain = AnomalyScorer(loaded(two_output_scorer_onnx(tmp_path / "p.onnx", {})), "ops", {})
    assert plain.compensation is None
    assert [plain.score(moved) for _ in range(8)] == pytest.approx([4.0] * 8)
    off = {**meta, "foedus.drift_blocks": "0"}
    assert (
        AnomalyScorer(loaded(two_output_scorer_onnx(tmp_path / "o.onnx", off)), "ops", {}).compensation
        is None
    )
    bad = {**meta, "foedus.feature_levels": "1,1"}
    with pytest.raises(OpsModelError, match="2 levels for 6 metrics"):
        AnomalyScorer(loaded(two_output_scorer_onnx(tmp_path / "b.onnx", bad)), "ops", {})
    with pytest.raises(OpsModelError, match=r"second output feature_scores is \[-1, 1\]"):
        AnomalyScorer(loaded(two_output_scorer_onnx(tmp_path / "s.onnx", meta, one_term=True)), "ops", {})


def test_ops_score_compensates_like_the_agent_unless_told_not_to(tmp_path: Path) -> None:
    from foedus.client_sdk.cli.ops import onnx_scores

    meta = {
        "foedus.feature_levels": "1,1,1,1,1,1",
        "foedus.calibration_block": "3",
        "foedus.drift_blocks": "2",
    }
    path = two_output_scorer_onnx(tmp_path / "c.onnx", meta)
    rows = np.zeros((10, 6))
    rows[:, 0] = 2.0  # metric 0's term is 4 throughout, its level 1
    compensated, got_meta = onnx_scores(path, rows)
    assert got_meta["foedus.drift_blocks"] == "2"
    np.testing.assert_allclose(compensated, [4.0] * 6 + [1.0] * 4)
    plain, _ = onnx_scores(path, rows, compensate=False)
    np.testing.assert_allclose(plain, [4.0] * 10)
