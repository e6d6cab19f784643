"""Learned ops models the agent runs on its interval metric vector: anomaly scorer, resource predictor.

Both are ONNX versions from the registry, assigned to the agent through a deployment like any model
(federated versions arrive the same way). Their input is one row per interval: the metrics of
`HISTORY_METRICS`, in that order, as float32 `[N, 6]`.

- An anomaly scorer's first output is a score per row; its version's tag `threshold` says from
  which score on an interval is anomalous. An alert carries the metrics that contributed most,
  by SHAP (Kernel SHAP over the scorer, against a background of recent normal intervals).
- A resource predictor's outputs are named after what they predict (e.g. `cpu_p90_next`); each
  becomes a score of the interval under that name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from foedus.client_sdk.agent.history import HISTORY_METRICS
from foedus.client_sdk.agent.serving import LoadedModel


class OpsModelError(ValueError):
    """The assigned version cannot serve as this kind of ops model; the message says why."""


@dataclass(frozen=True)
class OpsModel:
    model: LoadedModel
    model_name: str
    tags: Mapping[str, str]

    def __post_init__(self) -> None:
        if len(self.model.inputs) != 1:
            raise OpsModelError(f"{self.label} must take one input, the interval metric vector")
        shape = self.model.inputs[0].shape
        if len(shape) != 2 or shape[1] not in (-1, len(HISTORY_METRICS)):
            raise OpsModelError(
                f"{self.label} must take [N, {len(HISTORY_METRICS)}] ({', '.join(HISTORY_METRICS)}), "
                f"not {list(shape)}"
            )

    @property
    def label(self) -> str:
        return f"{self.model_name}:v{self.model.version}"

    def run(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.model.outputs]
        outputs = self.model.run(names, {self.model.inputs[0].name: np.asarray(rows, dtype=np.float32)})
        return {
            n: np.asarray(o, dtype=np.float64).reshape(len(rows), -1)[:, 0]
            for n, o in zip(names, outputs, strict=True)
        }


class AnomalyScorer(OpsModel):
    @property
    def threshold(self) -> float:
        try:
            value = float(self.tags["threshold"])
        except (KeyError, ValueError):
            raise OpsModelError(f"{self.label} has no numeric 'threshold' tag") from None
        if not math.isfinite(value):
            raise OpsModelError(f"{self.label} has a non-finite threshold")
        return value

    def score(self, vector: np.ndarray) -> float:
        first = self.model.outputs[0].name
        return float(self.run(vector.reshape(1, -1))[first][0])

    def explain(
        self, vector: np.ndarray, background: np.ndarray, *, nsamples: int = 200
    ) -> list[tuple[str, float]]:
        """SHAP attribution of each metric to this interval's score, largest first."""
        import shap

        first = self.model.outputs[0].name

        def predict(rows: np.ndarray) -> np.ndarray:
            return self.run(rows)[first]

        if len(background) > 50:
            background = background[-50:]
        explainer = shap.KernelExplainer(predict, background)
        values = np.asarray(
            explainer.shap_values(vector.reshape(1, -1), nsamples=nsamples, silent=True)
        ).reshape(-1)
        order = np.argsort(-np.abs(values))
        return [(HISTORY_METRICS[i], float(values[i])) for i in order]


class ResourcePredictor(OpsModel):
    def predict(self, vector: np.ndarray) -> dict[str, float]:
        return {name: float(v[0]) for name, v in self.run(vector.reshape(1, -1)).items()}
