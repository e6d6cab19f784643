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


def slow_iris_onnx(directory: Path, *, name: str = "slow-iris.onnx") -> Path:
    """A model with iris's signature that is deliberately slow (see `slow_classifier_onnx`)."""
    from foedus.client_sdk.testing import slow_classifier_onnx

    return slow_classifier_onnx(directory / name, features=4, classes=3)


def distance_scorer_onnx(
    directory: Path, mean: np.ndarray, scale: np.ndarray, name: str = "scorer.onnx"
) -> Path:
    """An anomaly scorer: the squared standardized distance of an interval vector from normal."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["metrics", "mean"], ["centered"]),
            helper.make_node("Div", ["centered", "scale"], ["z"]),
            helper.make_node("Mul", ["z", "z"], ["z2"]),
            helper.make_node("ReduceSum", ["z2", "axes"], ["score"], keepdims=0),
        ],
        "distance_scorer",
        [helper.make_tensor_value_info("metrics", TensorProto.FLOAT, [None, len(mean)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        [
            numpy_helper.from_array(mean.astype(np.float32), "mean"),
            numpy_helper.from_array(scale.astype(np.float32), "scale"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = directory / name
    path.write_bytes(model.SerializeToString())
    return path


def resource_predictor_onnx(directory: Path, name: str = "resources.onnx") -> Path:
    """A resource predictor over the interval metric vector: next-interval CPU and memory as 110 %
    of the current (columns 4 and 5 of the vector), a stand-in for a trained quantile model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    outputs = []
    for column, out in ((4, "cpu_p90_next"), (5, "memory_p90_next")):
        nodes += [
            helper.make_node("Gather", ["metrics", f"col{column}"], [f"g{column}"], axis=1),
            helper.make_node("Mul", [f"g{column}", "margin"], [out]),
        ]
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [None]))
    graph = helper.make_graph(
        nodes,
        "resource_predictor",
        [helper.make_tensor_value_info("metrics", TensorProto.FLOAT, [None, 6])],
        outputs,
        [
            numpy_helper.from_array(np.array(4, dtype=np.int64), "col4"),
            numpy_helper.from_array(np.array(5, dtype=np.int64), "col5"),
            numpy_helper.from_array(np.array(1.1, dtype=np.float32), "margin"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = directory / name
    path.write_bytes(model.SerializeToString())
    return path
