"""Offline evaluation of ONNX versions on a labelled dataset: the metrics a quality gate compares.

Runs here, in the SDK (the data never leaves the caller): `client.models.evaluate(...)` downloads
the versions, scores them with onnxruntime on the same rows and records the result in the
candidate's lineage, where a rollout's quality gate finds it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foedus.client_sdk.errors import InvalidArgument

CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "auc")
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


def fingerprint(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> str:
    """sha256 of the rows and labels (dtype, shape and bytes), to tell datasets apart."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _per_class(y: npt.NDArray[Any], pred: npt.NDArray[Any]) -> tuple[float, float, float]:
    precisions, recalls, f1s = [], [], []
    for label in np.unique(np.concatenate([y, pred])):
        tp = float(np.sum((pred == label) & (y == label)))
        fp = float(np.sum((pred == label) & (y != label)))
        fn = float(np.sum((pred != label) & (y == label)))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(precisions)), float(np.mean(recalls)), float(np.mean(f1s))


def _auc(y: npt.NDArray[Any], score: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve of a binary task by the rank statistic (ties averaged)."""
    positive = y == np.max(y)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    y: npt.NDArray[Any], pred: npt.NDArray[Any], scores: npt.NDArray[np.float64] | None = None
) -> dict[str, float]:
    y = np.asarray(y).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if y.shape != pred.shape:
        raise InvalidArgument(f"{len(pred)} predictions for {len(y)} labels")
    precision, recall, f1 = _per_class(y, pred)
    out = {
        "accuracy": float(np.mean(pred == y)),
        "f1_macro": f1,
        "precision_macro": precision,
        "recall_macro": recall,
    }
    if scores is not None and len(np.unique(y)) == 2:
        auc = _auc(y, np.asarray(scores, dtype=np.float64).reshape(-1))
        if np.isfinite(auc):
            out["auc"] = auc
    return out


def regression_metrics(y: npt.NDArray[Any], pred: npt.NDArray[Any]) -> dict[str, float]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    if y.shape != pred.shape:
        raise InvalidArgument(f"{len(pred)} predictions for {len(y)} targets")
    err = pred - y
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.sum(err**2)) / total if total else float("nan"),
    }


def onnx_predictor(
    path: Path,
) -> Callable[[npt.NDArray[Any]], tuple[npt.NDArray[Any], npt.NDArray[Any] | None]]:
    """(predictions, positive-class scores or None) of an ONNX model with one input, on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InvalidArgument(
            "evaluating ONNX models needs onnxruntime: pip install 'foedus[agent]'"
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidArgument(f"evaluation needs a model with one input; {path.name} has {len(inputs)}")
    name = inputs[0].name
    dtype = np.float32 if "float" in inputs[0].type and "double" not in inputs[0].type else np.float64

    def predict(x: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        outputs = session.run(None, {name: np.asarray(x, dtype=dtype)})
        pred = np.asarray(outputs[0])
        scores = None
        if len(outputs) > 1:
            second = outputs[1]
            if isinstance(second, np.ndarray) and second.ndim == 2 and second.shape[1] == 2:
                scores = second[:, 1]
            elif isinstance(second, list) and second and isinstance(second[0], dict):
                keys = sorted(second[0])
                if len(keys) == 2:
                    scores = np.asarray([row[keys[1]] for row in second], dtype=np.float64)
        return pred, scores

    return predict


def evaluate_arrays(
    predict: Callable[[npt.NDArray[Any]], tuple[npt.NDArray[Any], npt.NDArray[Any] | None]],
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    task: str,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    pred, scores = predict(x)
    if task == "classification":
        out = classification_metrics(y, pred.reshape(-1), scores)
    elif task == "regression":
        out = regression_metrics(y, pred)
    else:
        raise InvalidArgument(f"task must be classification or regression, not {task!r}")
    if metrics:
        missing = [m for m in metrics if m not in out]
        if missing:
            raise InvalidArgument(f"metric(s) {', '.join(missing)} not available for this {task} task")
        out = {m: out[m] for m in metrics}
    return out


def infer_task(y: npt.NDArray[Any]) -> str:
    y = np.asarray(y)
    if y.dtype.kind in "iubUSO":
        return "classification"
    return "regression"
