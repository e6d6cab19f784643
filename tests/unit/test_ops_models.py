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
