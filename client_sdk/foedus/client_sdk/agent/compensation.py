"""Per-metric drift compensation of an additive anomaly score (numpy only).

A windowed anomaly model's score is a sum of per-metric error terms (the ``feature_scores``
output of Foedus's anomaly scorer). When one metric's normal behaviour moves away from what the
model was trained on (a new load level, a changed daily pattern), that metric's term stays high
and the model raises an alarm every day although nothing is wrong. Retraining fixes that later;
`DriftCompensation` follows it online, without labels:

* it keeps the largest value of each metric's term over every block of ``block`` steps (a day
  at one sample a minute);
* a metric's **level** is the smallest of its last ``blocks`` block maxima; its **reference** is
  the median of its block maxima on the training series (`reference_levels`), the same statistic
  the model's threshold is calibrated with;
* while the level is above the reference, the metric's term is scaled by ``reference / level``,
  so the metric counts as it did in training; terms are never scaled up.

A metric is down-weighted only when its term has been above its training level in *every* one
of the last ``blocks`` blocks: an incident that leaves some of those blocks alone does not
lower it. The price is that an incident lasting ``blocks`` blocks or more on one metric is
taken for its new normal, as a retrained model would take it. Weights change only when a block
completes, and a step is always scored with the weights of the blocks before its own.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCKS_KEY",
    "BLOCK_KEY",
    "DEFAULT_BLOCKS",
    "LEVELS_KEY",
    "DriftCompensation",
    "compensated_scores",
    "from_metadata",
    "reference_levels",
]

FloatArray = npt.NDArray[np.float64]

DEFAULT_BLOCKS = 5
"""Blocks a metric must stay above its training level before it is down-weighted."""


def _block_maxima(terms: FloatArray, block: int) -> FloatArray:
    """(k, F) maxima of the trailing complete `block`-step blocks (the partial first block dropped)."""
    k = terms.shape[0] // block
    tail = terms[terms.shape[0] - k * block :]
    maxima: FloatArray = tail.reshape(k, block, terms.shape[1]).max(axis=1)
    return maxima


def reference_levels(terms: npt.ArrayLike, block: int) -> FloatArray:
    """Each metric's reference level, (F,): the median over the complete `block`-step blocks of
    the metric's block maximum in the (T, F) training `terms` (the maximum of all `terms` when
    they are shorter than one block)."""
    arr = np.asarray(terms, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected (T, F) per-metric terms, got shape {arr.shape}")
    if block < 1:
        raise ValueError("block must be positive")
    arr = np.where(np.isfinite(arr), arr, 0.0)
    if arr.shape[0] < block:
        out: FloatArray = arr.max(axis=0)
        return out
    median: FloatArray = np.median(_block_maxima(arr, block), axis=0)
    return median


class DriftCompensation:
    """Online state of the compensation for one scorer: feed it the per-metric terms of each new
    step (`update`) and compare what it returns with the scorer's threshold.

    `reference`: the metrics' reference levels (`reference_levels` of the training terms);
    `block`: steps per block; `blocks`: how many block maxima make a level (at least 1).
    """

    def __init__(self, reference: npt.ArrayLike, *, block: int, blocks: int = DEFAULT_BLOCKS) -> None:
        ref = np.asarray(reference, dtype=np.float64).ravel()
        if ref.size == 0 or not np.isfinite(ref).all() or (ref < 0).any():
            raise ValueError("reference levels must be finite, non-negative and not empty")
        if block < 1 or blocks < 1:
            raise ValueError("block and blocks must be positive")
        self.reference = ref
        self.block = int(block)
        self.blocks = int(blocks)
        self._maxima: deque[FloatArray] = deque(maxlen=self.blocks)
        self._current = np.zeros(ref.size)
        self._filled = 0
        self._weights = np.ones(ref.size)

    @property
    def n_features(self) -> int:
        return int(self.reference.size)

    @property
    def weights(self) -> FloatArray:
        """The current factor of each metric's term, within [0, 1] (a copy)."""
        return self._weights.copy()

    def update(self, terms: npt.ArrayLike) -> FloatArray:
        """Compensated scores of the new steps' (T, F) per-metric terms (a 1-D row is one step),
        oldest first; the state moves on by those steps."""
        arr = np.asarray(terms, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_features:
            raise ValueError(f"expected (T, {self.n_features}) per-metric terms, got shape {arr.shape}")
        arr = np.where(np.isfinite(arr), arr, 0.0)
        out = np.empty(arr.shape[0])
        start = 0
        while start < arr.shape[0]:
            stop = min(arr.shape[0], start + self.block - self._filled)
            part = arr[start:stop]
            out[start:stop] = part @ self._weights
            self._current = np.maximum(self._current, part.max(axis=0))
            self._filled += stop - start
            if self._filled == self.block:
                self._close_block()
            start = stop
        return out

    def _close_block(self) -> None:
        self._maxima.append(self._current)
        self._current = np.zeros(self.n_features)
        self._filled = 0
        if len(self._maxima) == self.blocks:
            level = np.min(np.stack(self._maxima), axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(level > self.reference, self.reference / level, 1.0)
            self._weights = np.clip(ratio, 0.0, 1.0)


def compensated_scores(
    state: DriftCompensation | None, terms: npt.ArrayLike, *, history: npt.ArrayLike | None = None
) -> FloatArray:
    """Scores of the (T, F) per-metric `terms` through `state`, after it has seen the `history`
    terms (e.g. the training period's); their plain sums when `state` is None."""
    if state is None:
        sums: FloatArray = np.asarray(terms, dtype=np.float64).sum(axis=1)
        return sums
    if history is not None:
        state.update(history)
    return state.update(terms)


LEVELS_KEY = "foedus.feature_levels"
"""ONNX metadata: the metrics' reference levels, comma-separated, in the model's feature order."""
BLOCK_KEY = "foedus.calibration_block"
"""ONNX metadata: steps per block of the threshold calibration and of the compensation."""
BLOCKS_KEY = "foedus.drift_blocks"
"""ONNX metadata: the compensation's `blocks` (0 or absent: no compensation)."""


def from_metadata(metadata: dict[str, str], n_features: int) -> DriftCompensation | None:
    """The compensation an exported anomaly model asks for in its ONNX metadata (`LEVELS_KEY`,
    `BLOCK_KEY`, `BLOCKS_KEY`), or None when it asks for none. Raises ValueError when the
    metadata is there but unreadable or does not match the model's `n_features` metrics."""
    raw_levels = metadata.get(LEVELS_KEY, "").strip()
    try:
        blocks = int(metadata.get(BLOCKS_KEY, "0") or 0)
        if not raw_levels or blocks <= 0:
            return None
        levels = [float(v) for v in raw_levels.split(",")]
        block = int(metadata.get(BLOCK_KEY, "") or 0)
    except ValueError:
        raise ValueError(f"{LEVELS_KEY} / {BLOCK_KEY} / {BLOCKS_KEY} are not numbers") from None
    if len(levels) != n_features:
        raise ValueError(f"{LEVELS_KEY} has {len(levels)} levels for {n_features} metrics")
    return DriftCompensation(levels, block=block, blocks=blocks)
