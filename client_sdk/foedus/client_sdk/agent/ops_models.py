"""Learned ops models the agent runs on its interval metric vectors: anomaly scorer, resource predictor.

Both are ONNX versions from the registry, assigned to the agent through a deployment like any model
(federated versions arrive the same way). Their one input is either the current interval, float32
`[N, F]`, or a window of the last W intervals ending at the current one, float32 `[N, W, F]`, of
the metrics the model names in its ONNX metadata `foedus.features` (comma-separated, a subset of
`HISTORY_METRICS`; all six, in that order, when absent). W comes from the input's shape or from the
metadata `foedus.window`. Before W intervals exist, the window is padded with its first row; an
anomaly scorer's score of such an interval is recorded, but raises no alert.

- An anomaly scorer's first output is a score per row; its version's tag `threshold` (or else the
  ONNX metadata `foedus.threshold`) says from which score on an interval is anomalous. An alert
  carries the metrics that contributed most, by SHAP (Kernel SHAP over the scorer, one player per
  metric over the whole window, against a background of recent normal intervals). A model whose
  metadata carries per-metric reference levels (``foedus.feature_levels``, ``foedus.drift_blocks``)
  and whose second output holds the per-metric terms of the score is scored through an online
  drift compensation (`foedus.client_sdk.agent.compensation`).
- A resource predictor's outputs are named after what they predict (e.g. `cpu_p90_next`); each
  becomes a score of the interval under that name.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from foedus.client_sdk.agent.compensation import DriftCompensation, from_metadata
from foedus.client_sdk.agent.history import HISTORY_METRICS
from foedus.client_sdk.agent.serving import LoadedModel

MAX_WINDOW = 1024


class OpsModelError(ValueError):
    """The assigned version cannot serve as this kind of ops model; the message says why."""


@dataclass(frozen=True)
class OpsModel:
    model: LoadedModel
    model_name: str
    tags: Mapping[str, str]
    metadata: dict[str, str] = field(init=False)
    features: tuple[str, ...] = field(init=False)
    columns: tuple[int, ...] = field(init=False)
    window: int = field(init=False)
    """1 for a model of the current interval `[N, F]`; W for a windowed model `[N, W, F]`."""

    def __post_init__(self) -> None:
        if len(self.model.inputs) != 1:
            raise OpsModelError(f"{self.label} must take one input, the interval metric vector")
        meta = _metadata(self.model)
        object.__setattr__(self, "metadata", meta)
        names = tuple(n.strip() for n in meta.get("foedus.features", "").split(",") if n.strip())
        names = names or HISTORY_METRICS
        unknown = [n for n in names if n not in HISTORY_METRICS]
        if unknown:
            raise OpsModelError(
                f"{self.label} expects metric(s) {', '.join(unknown)} that agents do not measure; "
                f"agents measure {', '.join(HISTORY_METRICS)}"
            )
        object.__setattr__(self, "features", names)
        object.__setattr__(self, "columns", tuple(HISTORY_METRICS.index(n) for n in names))
        shape = self.model.inputs[0].shape
        f = len(names)
        if len(shape) == 2 and shape[1] in (-1, f):
            window = 1
        elif len(shape) == 3 and shape[2] in (-1, f):
            window = shape[1] if shape[1] > 0 else _int(meta.get("foedus.window"))
            if not 1 <= window <= MAX_WINDOW:
                raise OpsModelError(
                    f"{self.label} takes a window of intervals but says not how long (foedus.window)"
                )
        else:
            raise OpsModelError(
                f"{self.label} must take [N, {f}] or [N, W, {f}] ({', '.join(names)}), not {list(shape)}"
            )
        object.__setattr__(self, "window", window)

    @property
    def label(self) -> str:
        return f"{self.model_name}:v{self.model.version}"

    def inputs(self, recent: np.ndarray) -> np.ndarray:
        """The model's input for the newest interval of `recent` (rows of HISTORY_METRICS, oldest
        first): its columns, and for a windowed model the last W rows, padded with the first."""
        rows = np.asarray(recent, dtype=np.float64).reshape(-1, len(HISTORY_METRICS))[:, self.columns]
        if self.window == 1:
            return rows[-1:]
        rows = rows[-self.window :]
        if len(rows) < self.window:
            rows = np.concatenate([np.repeat(rows[:1], self.window - len(rows), axis=0), rows])
        return rows[None, :, :]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.model.outputs]
        outputs = self.model.run(names, {self.model.inputs[0].name: np.asarray(batch, dtype=np.float32)})
        return {
            n: np.asarray(o, dtype=np.float64).reshape(len(batch), -1)[:, 0]
            for n, o in zip(names, outputs, strict=True)
        }


def _metadata(model: LoadedModel) -> dict[str, str]:
    try:
        return dict(model.session.get_modelmeta().custom_metadata_map)
    except Exception:  # a session without metadata (or a stand-in in tests)
        return {}


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class AnomalyScorer(OpsModel):
    _lock: threading.Lock
    compensation: DriftCompensation | None
    """Online per-metric drift compensation, when the model's metadata asks for one and it has a
    second output of per-metric terms (`foedus.client_sdk.agent.compensation`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "compensation", None)
        object.__setattr__(self, "_lock", threading.Lock())
        if len(self.model.outputs) < 2:
            return
        try:
            state = from_metadata(self.metadata, len(self.features))
        except ValueError as exc:
            raise OpsModelError(f"{self.label}: {exc}") from None
        terms = self.model.outputs[1].shape
        if state is not None and (len(terms) != 2 or terms[1] not in (-1, state.n_features)):
            raise OpsModelError(
                f"{self.label} asks for drift compensation, but its second output {self.model.outputs[1].name} "
                f"is {list(terms)}, not the [N, {state.n_features}] per-metric terms of its score"
            )
        object.__setattr__(self, "compensation", state)

    @property
    def threshold(self) -> float:
        raw = self.tags.get("threshold", self.metadata.get("foedus.threshold"))
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise OpsModelError(
                f"{self.label} has no numeric 'threshold' tag (nor foedus.threshold metadata)"
            ) from None
        if not math.isfinite(value):
            raise OpsModelError(f"{self.label} has a non-finite threshold")
        return value

    def score(self, recent: np.ndarray) -> float:
        """Score of the newest interval; `recent` holds the last intervals (a 1-D array: just it).

        With a drift compensation, each call is the next interval: its per-metric terms move the
        compensation on and the compensated score is returned."""
        if self.compensation is None:
            first = self.model.outputs[0].name
            return float(self.run(self.inputs(recent))[first][0])
        terms_name = self.model.outputs[1].name
        batch = np.asarray(self.inputs(recent), dtype=np.float32)
        (terms,) = self.model.run([terms_name], {self.model.inputs[0].name: batch})
        row = np.asarray(terms, dtype=np.float64).reshape(1, -1)
        with self._lock:  # the state moves on by one interval per call, whichever thread calls
            return float(self.compensation.update(row)[0])

    def explain(
        self, recent: np.ndarray, background: np.ndarray, *, nsamples: int = 200
    ) -> list[tuple[str, float]]:
        """SHAP attribution of each metric to the newest interval's score, largest first.

        One player per metric: present, the metric keeps its values over the whole input (the
        window of the last W intervals, or the newest interval); absent, it takes a background
        interval's value at every step. `background` are recent normal intervals (rows of
        HISTORY_METRICS; the last 50 are used). Attributions add up to the score minus its mean
        over the background.
        """
        import shap

        first = self.model.outputs[0].name
        base = self.inputs(recent)
        cols = list(self.columns)
        bg = np.asarray(background, dtype=np.float64).reshape(-1, len(HISTORY_METRICS))[-50:, cols]
        n_features = len(cols)

        def predict(codes: np.ndarray) -> np.ndarray:
            # Kernel SHAP mixes the explained row (all 1: every metric as observed) with the
            # background rows (row k coded -(k + 1)); a code says where each metric comes from.
            batch = np.repeat(base, len(codes), axis=0)
            for j in range(n_features):
                absent = codes[:, j] < 0
                if absent.any():
                    source = bg[(-codes[absent, j] - 1).round().astype(int), j]
                    if batch.ndim == 3:
                        batch[absent, :, j] = source[:, None]
                    else:
                        batch[absent, j] = source
            return self.run(batch)[first]

        coded_background = -np.repeat(
            np.arange(1, len(bg) + 1, dtype=np.float64)[:, None], n_features, axis=1
        )
        explainer = shap.KernelExplainer(predict, coded_background)
        values = np.asarray(
            explainer.shap_values(np.ones((1, n_features)), nsamples=nsamples, silent=True)
        ).reshape(-1)
        order = np.argsort(-np.abs(values))
        return [(self.features[i], float(values[i])) for i in order]


class ResourcePredictor(OpsModel):
    def predict(self, recent: np.ndarray) -> dict[str, float]:
        """Named predictions for the newest interval of `recent`."""
        return {name: float(v[0]) for name, v in self.run(self.inputs(recent)).items()}
