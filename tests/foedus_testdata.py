"""Real models and data for tests, built from data that ships with scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def iris_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


def iris_onnx(directory: Path, *, c: float = 1.0, name: str = "iris.onnx") -> Path:
    """Logistic regression on iris (4 float features), converted with skl2onnx."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = iris_data()
    clf = LogisticRegression(C=c, max_iter=500).fit(x, y)
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path = directory / name
    path.write_bytes(onx.SerializeToString())
    return path
