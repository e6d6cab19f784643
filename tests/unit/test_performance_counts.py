"""Performance from additive counts (exact metrics, CBPE, fairness) and the agent's prediction log."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from foedus.client_sdk.agent.labels import (
    Prediction,
    PredictionLog,
    VersionOutputs,
    extract,
    normalize_label,
    totals_from_message,
)
from foedus.client_sdk.performance import (
    PerformanceTotals,
    classification_metrics,
    expected_confusion,
    fairness,
    overall_roc_auc,
    roc_auc,
)
from foedus.v1 import agent_pb2


def test_roc_auc_from_merged_counts_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) * 0.5 + y * 0.3, 2)  # rounded: many ties across classes
    halves = [PerformanceTotals(), PerformanceTotals()]
    for i, (truth, score) in enumerate(zip(y, scores, strict=True)):
        halves[i % 2].add_scores("1", [float(score)], [int(truth)], [1 - int(truth)])
    merged = PerformanceTotals()
    for half in halves:
        merged.merge(half)
    assert roc_auc(merged.scores["1"]) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_is_nan_without_both_kinds() -> None:
    assert math.isnan(roc_auc({0.3: [2, 0], 0.5: [1, 0]}))


def test_multiclass_metrics_equal_sklearn_macro_and_ovr() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[y] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    t = PerformanceTotals(task="classification")
    for truth, p, row in zip(y, pred, probs, strict=True):
        t.add_cells(t.confusion, [(str(truth), str(p), 1.0)])
        for c in range(3):
            t.add_scores(str(c), [float(row[c])], [int(truth == c)], [int(truth != c)])
    m = classification_metrics(t.confusion, t.scores)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m.precision == pytest.approx(skm.precision_score(y, pred, average="macro"), abs=1e-12)
    assert m.recall == pytest.approx(skm.recall_score(y, pred, average="macro"), abs=1e-12)
    assert m.f1 == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert overall_roc_auc(m.classes) == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12
    )


def test_cbpe_expected_confusion_of_a_known_case() -> None:
    # Two binary predictions: class 1 with p=0.8, class 0 with p(0)=0.6.
    probs = np.asarray([[0.2, 0.8], [0.6, 0.4]])
    cells = expected_confusion(probs, ["1", "0"], ["0", "1"])
    assert cells == pytest.approx({("0", "1"): 0.2, ("1", "1"): 0.8, ("0", "0"): 0.6, ("1", "0"): 0.4})
    m = classification_metrics(cells)
    # Expected accuracy (0.8 + 0.6) / 2; precision of 1: 0.8 / 1; recall of 1: 0.8 / (0.8 + 0.4).
    assert m.accuracy == pytest.approx(0.7)
    one = m.classes[1]
    assert (one.precision, one.recall) == pytest.approx((0.8, 0.8 / 1.2))
    assert one.f1 == pytest.approx(2 * 0.8 / (1.0 + 1.2))


def test_cbpe_converges_to_realised_accuracy_for_calibrated_scores() -> None:
    rng = np.random.default_rng(11)
    p1 = rng.random(20_000)
    y = (rng.random(20_000) < p1).astype(int)  # calibrated by construction
    pred = (p1 >= 0.5).astype(int)
    cells = expected_confusion(np.c_[1 - p1, p1], [str(v) for v in pred], ["0", "1"])
    estimate = classification_metrics(cells)
    assert estimate.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=0.01)
    assert estimate.f1 == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=0.01)


def test_fairness_differences_of_two_segments() -> None:
    a = {("1", "1"): 30.0, ("1", "0"): 10.0, ("0", "1"): 20.0, ("0", "0"): 40.0}
    b = {("1", "1"): 10.0, ("1", "0"): 10.0, ("0", "1"): 5.0, ("0", "0"): 75.0}
    result = fairness({"a": a, "b": b}, "1")
    assert [s.selection_rate for s in result.segments] == pytest.approx([0.5, 0.15])
    assert [s.true_positive_rate for s in result.segments] == pytest.approx([0.75, 0.5])
    assert result.demographic_parity_difference == pytest.approx(0.35)
    assert result.equal_opportunity_difference == pytest.approx(0.25)


def test_labels_normalize_integral_numbers() -> None:
    assert [normalize_label(v) for v in ("1", "1.0", 2, b"3", "cat", "0.5")] == [
        "1",
        "1",
        "2",
        "3",
        "cat",
        "0.5",
    ]


def test_extract_keys_the_rows_of_a_batch_request() -> None:
    inputs = {"input": np.asarray([[1.0, 0.0], [2.0, 1.0]], dtype=np.float32)}
    outputs = [np.asarray([1, 0], dtype=np.int64), np.asarray([[0.3, 0.7], [0.9, 0.1]], dtype=np.float32)]
    rows = extract(
        "req", "2", VersionOutputs(("no", "yes"), 1, "group"), inputs, ["label", "probabilities"], outputs
    )
    assert [(r.request_id, r.predicted, r.segment) for r in rows] == [
        ("req/0", "1", "0"),
        ("req/1", "0", "1"),
    ]
    assert rows[0].probabilities == pytest.approx({"no": 0.3, "yes": 0.7})


def _prediction(rid: str, predicted: str = "1", p1: float = 0.7, time_ms: int | None = None) -> Prediction:
    import time

    return Prediction(
        rid,
        "1",
        time_ms if time_ms is not None else int(time.time() * 1000),
        "classification",
        predicted,
        0.0,
        {"0": 1 - p1, "1": p1},
        "",
    )


def _label(seq: int, rid: str, label: str) -> agent_pb2.Label:
    return agent_pb2.Label(sequence=seq, request_id=rid, label=label)


def _reported(log: PredictionLog) -> PerformanceTotals:
    total = PerformanceTotals()
    for batch_id, request in log.outbox(1000):
        for counts in request.counts:
            total.merge(totals_from_message(counts))
        log.ack(batch_id)
    return total


def test_prediction_log_joins_across_reopen_and_counts_each_label_once(tmp_path: Path) -> None:
    path = tmp_path / "predictions.db"
    log = PredictionLog(path)
    log.record([_prediction("a"), _prediction("b", "0", 0.2)])
    assert log.join([_label(1, "a", "1"), _label(2, "zzz", "0")]) == 1
    log.close()
    log = PredictionLog(path)  # a restart: the cursor and the waiting label survive
    assert log.cursor == 2
    # "zzz" arrives later (it was in memory when the label came): the waiting label joins now.
    log.record([_prediction("zzz", "0", 0.4)])
    assert log.join([_label(3, "b", "0"), _label(4, "a", "0")]) == 2  # "a" again: ignored
    total = _reported(log)
    assert (total.predictions, total.labelled) == (3, 3)
    assert total.confusion == {("1", "1"): 1.0, ("0", "0"): 2.0}
    assert sum(total.expected.values()) == pytest.approx(0.0, abs=1e-12)  # nothing left unlabelled
    assert log.outbox() == []
    log.close()


def test_outbox_batch_ids_are_stable_until_acknowledged(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db")
    log.record([_prediction("a")])
    first = [b for b, _ in log.outbox()]
    assert first == [b for b, _ in log.outbox()]
    log.ack(first[0])
    assert log.outbox() == []
    log.close()


def test_old_predictions_and_unmatched_labels_are_pruned(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.db", retention_s=60, unmatched_retention_s=0)
    log.record([_prediction("old", time_ms=1_000), _prediction("new")])
    assert log.prune() == 1
    assert log.prediction_count() == 1
    log.join([_label(1, "nobody", "1")])  # waits no time: dropped at once
    log.record([_prediction("nobody")])
    assert log.join([]) == 0
    log.close()
