"""Multivariate windowed anomaly model that Foedus agents run (torch training, ONNX inference).

Method
    A dense autoencoder reconstructs a window of the last ``w`` steps of ``F`` metrics through a
    narrow bottleneck (``code`` units). The metrics are normalised per feature with statistics of
    the training series (centre = median; scale = max(IQR / 1.349, std / 2, ``min_scale``)), clipped
    to ``±clip`` and missing values (NaN) replaced by the centre, all inside the model, so the
    agent feeds raw metrics. A member's score of step t is the mean squared reconstruction error
    of the last ``score_steps`` rows of its window ending at t, averaged over the features.

    The model is an ensemble of ``members`` such autoencoders over windows of ``window``,
    ``2 window``, ... steps (`AnomalyConfig.windows`; by default 10 and 20). Each member's score
    is divided by its own training threshold (so each contributes on the same scale) and the
    ensemble's score is their mean; the per-feature terms of that sum are `feature_scores` (they
    sum to the score). The ONNX input is the longest window, ``W``; each member reads its last
    steps. Why two: on SMD (14 machines of groups 1 and 2, seed 0 and 1, width 128 and learning
    rate 1e-3 without a search, the drift-compensated score against the block-maxima threshold,
    point-adjusted F1 / plain F1) a single network with a
    10-step window gives 0.835 / 0.328 and 0.834 / 0.337, a 20-step one 0.851 / 0.243 and
    0.876 / 0.243, the pair 0.855 / 0.323 and 0.857 / 0.317: the longer window finds more
    incidents, the shorter one raises fewer false alarms after each (an incident stays in a
    member's window for ``w`` steps after it ends), and the pair keeps most of both. Adding a
    40-step member (0.855 / 0.303) or a 5-step one (0.818 / 0.324) did not help; neither did
    taking the smaller member score instead of the mean (0.868 / 0.312, 0.869 / 0.270). With
    width and learning rate searched (bench/ops_eval.py, seed 0) the pair gives 0.846 / 0.331.

Training and model selection
    `AnomalyModel.fit` splits the (unlabelled) training series in time: the first
    ``1 - validation_fraction`` trains each candidate of a small grid (`SEARCH_SPACE`: hidden
    width and learning rate, and for a single network (``members=1``) the window, enumerated with
    scikit-learn's ``ParameterGrid``) for ``search_epochs``, every member of the ensemble with the
    candidate's parameters; the held-out tail judges it without labels (the criterion is averaged
    over the members). With ``selection="injection"``
    (default) the criterion is how well the candidate's score separates the held-out windows from
    copies with synthetic anomalies (1-3 metrics shifted by 2-5 robust scale units over the scored
    rows; the same seeded injections for every candidate): the ROC AUC of the two score sets,
    ties broken by the lower validation loss. Validation loss alone (``selection="loss"``) is
    lowest for whatever reconstructs best, which with an autoencoder also means reconstructing
    anomalies well. The chosen candidate is retrained on the whole training series for
    ``epochs``. On SMD both criteria mostly pick the shortest window of the grid (5 steps; 0.808
    point-adjusted F1 with the search's window against 0.835 with a fixed 10-step one), which is
    why an ensemble's windows are a fixed ladder rather than searched; see the evaluation notes in
    `foedus.federation.evaluation.smd`.

Threshold (no labels)
    Block maxima: the training series' scores (each member's, for its weight in the ensemble, then
    the ensemble's) are cut into consecutive blocks of
    ``calibration_block`` steps (default 1440, one day of 1-minute samples) and the threshold is
    the median of the block maxima (`block_maxima_threshold`). On normal data of the same kind a
    block's maximum exceeds it with probability 1/2: about one false alarm every other block.
    Unlike a Peaks-Over-Threshold tail fit or a high quantile, the median of block maxima does not
    move when anomalies sit in fewer than half of the blocks; unlabelled training series (SMD's
    among them) do contain anomalies, which inflate the tail that POT extrapolates from (on SMD,
    POT at risk 1e-3 on the same training scores gave a lower point-adjusted F1).

Drift compensation (online, no labels)
    Agents feed the model's per-metric terms through `DriftCompensation`
    (`foedus.client_sdk.agent.compensation`; `compensated_scores` here): a metric whose term has
    been above its training level (``feature_levels``: the median block maximum of the term on
    the training series) in each of the last ``drift_blocks`` blocks is scaled back to that
    level. A metric whose normal has moved stops raising daily alarms, while an incident that
    leaves some of those blocks alone is scored as before. On SMD it lifts the point-adjusted F1
    of the machines whose test behaviour drifts (see `foedus.federation.evaluation.smd`).

Online adaptation
    `AnomalyModel.adapt` follows a drifting normal without labels: run after each block of new
    data (a day), it flags the block, fine-tunes the network on the block's unflagged windows
    plus as many older normal ones, and recalibrates the threshold on the whole history.

Guarantees
    * Online: the score at t depends only on steps ``t - W + 1 .. t``; before step ``W - 1`` the
      window is padded with copies of the first step (`score`, `feature_scores`).
    * Federated training (`federated_task`) shares one network: `from_shared_weights` and
      `global_model` build single-member models.
    * Deterministic for a given seed (torch and numpy generators are seeded; CPU kernels).
    * The ONNX graph (`export_onnx`) computes the same score as `score` (float32).

Root cause
    `explain` ranks features for one step either by exact Shapley values of the additive score
    (``method="error"``: the score is a sum of per-feature error terms, and for an additive game
    each player's Shapley value is its own term), or by Kernel SHAP over the raw metrics
    (``method="shap"``): a player is one metric over the whole window, and an absent metric takes
    its training median at every step of the window. This also accounts for a metric's effect on
    the reconstruction of the others. An earlier variant varied only the scored step and kept the
    window's other rows; the score averages the last ``score_steps`` rows and the encoder sees
    the whole window, so that variant left most of a metric's effect out (HitRate@150% on SMD's
    detected anomalies, 3 points per anomaly averaged alike: 0.58, against 0.78 with whole-window
    players).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from foedus.client_sdk.agent.compensation import (
    BLOCK_KEY,
    BLOCKS_KEY,
    DEFAULT_BLOCKS,
    LEVELS_KEY,
    DriftCompensation,
    compensated_scores,
    reference_levels,
)

__all__ = [
    "FEATURE_OUTPUT",
    "INPUT_NAME",
    "MODEL_KIND",
    "OUTPUT_NAME",
    "SEARCH_SPACE",
    "AnomalyConfig",
    "AnomalyModel",
    "block_maxima_threshold",
    "calibration_metrics",
    "federated_task",
    "global_model",
    "normalised_series",
    "normalised_windows",
]

FloatArray = npt.NDArray[np.float64]
_Out = TypeVar("_Out")

INPUT_NAME = "metrics"
"""ONNX input: float32 [N, W, F] raw metrics, the window ending at the scored step."""
OUTPUT_NAME = "score"
"""ONNX output: float32 [N] anomaly score (an anomaly when ``>= foedus.threshold``)."""
FEATURE_OUTPUT = "feature_scores"
"""Second ONNX output: float32 [N, F] per-feature terms of the score (they sum to it)."""
MODEL_KIND = "anomaly"
SEARCH_SPACE: dict[str, list[Any]] = {
    "window": [5, 10, 20],
    "hidden": [64, 128, 256],
    "lr": [1e-3, 3e-3],
}
"""The grid `AnomalyModel.fit` searches (each combination once) when ``search=True``; for an
ensemble (``members > 1``) without ``window``: its windows are the ladder from ``config.window``."""
_SAVE_VERSION = 2
"""2: an ensemble (``nets``, ``member_weights``); 1, a single network (``net``), still loads."""
_SEARCH_VAL_STEPS = 3000
_BATCH_SCORE = 4096


@dataclass(frozen=True)
class AnomalyConfig:
    """Hyper-parameters of the model, its training and its threshold calibration."""

    window: int = 10
    """Steps per window of the ensemble's first (shortest) member; the scored step is the last."""
    members: int = 2
    """Autoencoders in the ensemble: member i sees the last ``window * 2**i`` steps (`windows`), so
    the default pair looks 10 and 20 steps back. The score is the mean of the members' scores, each
    divided by its own training threshold. 1 gives a single autoencoder (what federated training
    shares)."""
    hidden: int = 128
    """Width of the encoder's and decoder's hidden layer."""
    lr: float = 1e-3
    """Adam learning rate."""
    epochs: int = 5
    """Passes over the training windows for the final model."""
    batch_size: int = 256
    code: int = 8
    """Bottleneck width; narrow so the model cannot learn the identity."""
    score_steps: int = 3
    """The score averages the errors of this many last rows of the window (1 = the scored step only)."""
    validation_fraction: float = 0.2
    """Trailing share of the training series held out to compare the search's candidates."""
    search_epochs: int = 3
    """Passes over the training windows for each search candidate."""
    clip: float = 10.0
    """Normalised metrics are clipped to ``[-clip, clip]`` so one runaway metric stays bounded."""
    min_scale: float = 1e-2
    """Floor on a feature's scale, in the metric's unit (SMD metrics are scaled to [0, 1])."""
    calibration_block: int = 1440
    """Steps per block for the block-maxima threshold (1440 = one day at one sample a minute)."""
    drift_blocks: int = DEFAULT_BLOCKS
    """Per-metric drift compensation (`foedus.client_sdk.agent.compensation`): a metric's error
    term is scaled back to its training level once it has been above it in each of this many
    calibration blocks; 0 turns the compensation off."""
    selection: str = "injection"
    """Search criterion: ``"injection"`` (separation of synthetic anomalies) or ``"loss"`` (validation loss)."""
    weight_decay: float = 0.0
    threads: int = 1
    """torch CPU threads while fitting and scoring (restored afterwards)."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.hidden < 1 or self.code < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("window, hidden, code, epochs and batch_size must be positive")
        if not 1 <= self.members <= 4:
            raise ValueError("members must be within 1..4")
        if self.score_steps < 1:
            raise ValueError("score_steps must be positive")
        if self.score_steps > self.window:
            raise ValueError(
                f"window {self.window} is shorter than score_steps {self.score_steps} (the score averages "
                f"the errors of the window's last score_steps rows): use a window of at least {self.score_steps}"
            )
        if self.lr <= 0 or self.clip <= 0 or self.min_scale <= 0 or self.weight_decay < 0:
            raise ValueError("lr, clip and min_scale must be positive, weight_decay not negative")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be within (0, 1)")
        if self.selection not in ("injection", "loss"):
            raise ValueError("selection must be 'injection' or 'loss'")
        if self.search_epochs < 1 or self.calibration_block < 1 or self.threads < 1:
            raise ValueError("search_epochs, calibration_block and threads must be positive")
        if self.drift_blocks < 0:
            raise ValueError("drift_blocks must not be negative")

    @property
    def windows(self) -> tuple[int, ...]:
        """Each member's window length, shortest first; the last is the ONNX input's W."""
        return tuple(self.window * 2**i for i in range(self.members))


def block_maxima_threshold(scores: npt.ArrayLike, block: int) -> float:
    """Median of the maxima of consecutive `block`-step blocks of `scores` (the first, partial block dropped).

    On normal data a block's maximum exceeds the result with probability 1/2, i.e. a step with
    probability about ``ln 2 / block``; anomalies in fewer than half of the blocks leave it
    unchanged. With fewer than `block` scores the maximum is returned.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite scores")
    n = s.size // block
    if n == 0:
        return float(s.max())
    maxima = s[s.size - n * block :].reshape(n, block).max(axis=1)
    return float(np.median(maxima))


class _WindowAutoencoder(nn.Module):
    """Dense autoencoder of a normalised (N, W, F) window through a `code`-wide bottleneck."""

    def __init__(self, window: int, n_features: int, hidden: int, code: int) -> None:
        super().__init__()
        self.window = window
        self.n_features = n_features
        size = window * n_features
        self.encoder = nn.Sequential(nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(z.shape[0], self.window * self.n_features)
        out: torch.Tensor = self.decoder(self.encoder(flat))
        return out.reshape(z.shape[0], self.window, self.n_features)


class _Scorer(nn.Module):
    """Raw (N, W, F) window -> (score [N], per-feature terms [N, F]); what the ONNX graph holds.

    W is the longest member's window; each member reads the last steps of it that its own window
    covers. A member's per-feature terms are multiplied by its weight (1 / (members x its own
    training threshold) once fitted) and summed over the members.
    """

    def __init__(
        self,
        nets: Sequence[_WindowAutoencoder],
        center: FloatArray,
        scale: FloatArray,
        clip: float,
        score_steps: int,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not nets:
            raise ValueError("a scorer needs at least one network")
        self.nets = nn.ModuleList(nets)
        self.windows = [int(net.window) for net in nets]
        self.window = max(self.windows)
        self.n_features = int(nets[0].n_features)
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        member_weights = [1.0] * len(nets) if weights is None else [float(w) for w in weights]
        if len(member_weights) != len(nets):
            raise ValueError(f"{len(member_weights)} weights for {len(nets)} networks")
        self.register_buffer("weights", torch.tensor(member_weights, dtype=torch.float32))
        self.clip = float(clip)
        self.score_steps = int(score_steps)

    def normalise(self, metrics: torch.Tensor) -> torch.Tensor:
        center = self.get_buffer("center")
        z = (metrics - center) / self.get_buffer("scale")
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        return torch.clamp(z, -self.clip, self.clip)

    def member_terms(self, metrics: torch.Tensor) -> torch.Tensor:
        """Each member's unweighted per-feature terms of raw windows [N, W, F]: [members, N, F]."""
        z = self.normalise(metrics)
        terms = []
        for net, w in zip(self.nets, self.windows, strict=True):
            part = z[:, self.window - w :, :]
            err = (net(part) - part)[:, -self.score_steps :, :] ** 2
            terms.append(err.mean(dim=1) / float(self.n_features))
        return torch.stack(terms)

    def forward(self, metrics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.get_buffer("weights")
        features = (self.member_terms(metrics) * weights[:, None, None]).sum(dim=0)
        return features.sum(dim=1), features


class _Threads:
    """Sets torch's CPU thread count for a block and restores it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.previous = torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.previous)


def _robust_scale(train: FloatArray, min_scale: float) -> tuple[FloatArray, FloatArray]:
    center = np.nanmedian(train, axis=0)
    q25, q75 = np.nanquantile(train, [0.25, 0.75], axis=0)
    std = np.nanstd(train, axis=0)
    scale = np.maximum(np.maximum((q75 - q25) / 1.349, 0.5 * std), min_scale)
    center = np.where(np.isfinite(center), center, 0.0)
    scale = np.where(np.isfinite(scale), scale, min_scale)
    return center, scale


def _windows(x: np.ndarray, window: int, start: int, stop: int) -> np.ndarray:
    """Windows ending at steps ``start .. stop - 1`` of `x`, edge-padded before step 0: (n, W, F)."""
    lo = start - window + 1
    part = x[lo:stop] if lo >= 0 else np.concatenate([np.repeat(x[:1], -lo, axis=0), x[:stop]], axis=0)
    view = np.lib.stride_tricks.sliding_window_view(part, (window, x.shape[1]))[:, 0]
    out: np.ndarray = np.array(view, copy=True)
    return out


def _full_windows(z: np.ndarray, window: int, ends: np.ndarray | None = None) -> torch.Tensor:
    """The complete windows of a normalised series, (n, W, F) float32: every one, or those ending
    at the steps `ends` (each at least ``W - 1``)."""
    view = np.lib.stride_tricks.sliding_window_view(z, (window, z.shape[1]))[:, 0]
    if ends is not None:
        view = view[ends - (window - 1)]
    return torch.from_numpy(np.array(view, dtype=np.float32, copy=True))


def _train(
    windows: torch.Tensor,
    config: AnomalyConfig,
    n_features: int,
    epochs: int,
    seed: int,
) -> _WindowAutoencoder:
    """A network for windows of ``windows.shape[1]`` steps, trained on them."""
    torch.manual_seed(seed)
    net = _WindowAutoencoder(int(windows.shape[1]), n_features, config.hidden, config.code)
    _epochs(net, windows, config, epochs, seed)
    return net


def _epochs(
    net: _WindowAutoencoder, windows: torch.Tensor, config: AnomalyConfig, epochs: int, seed: int
) -> None:
    """`epochs` shuffled passes of Adam (``config.lr``) over normalised `windows`; leaves `net` in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(windows.shape[0], generator=generator)
            for i in range(0, order.numel(), config.batch_size):
                batch = windows[order[i : i + config.batch_size]]
                loss = torch.mean((net(batch) - batch) ** 2)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
    finally:
        net.eval()


def _injections(n_features: int, n: int, seed: int) -> torch.Tensor:
    """Synthetic anomalies for model selection: per row, 1-3 features shifted by 2-5 scale units (either sign)."""
    rng = np.random.default_rng([seed, 0x5EA7C4])
    shifts = np.zeros((n, n_features), dtype=np.float32)
    for row in range(n):
        chosen = rng.choice(n_features, size=min(int(rng.integers(1, 4)), n_features), replace=False)
        shifts[row, chosen] = rng.uniform(2.0, 5.0, size=chosen.size) * rng.choice(
            [-1.0, 1.0], size=chosen.size
        )
    return torch.from_numpy(shifts)


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive score > negative score), ties counting one half (Mann-Whitney U / (n_pos n_neg))."""
    both = np.concatenate([positive, negative])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    ranks[order] = np.arange(1, both.size + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]  # average ranks of ties
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2.0
    return float(u / (positive.size * negative.size))


def _check_series(x: np.ndarray, n_features: int | None = None) -> FloatArray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a (T, F) series, got shape {arr.shape}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"expected {n_features} features, got {arr.shape[1]}")
    return arr


class AnomalyModel:
    """A fitted window autoencoder with its normalisation, calibrated threshold and feature names.

    Build it with `fit` (or `load`); score a raw (T, F) series with `score` / `feature_scores`,
    explain a step with `explain`, ship it with `export_onnx`.
    """

    def __init__(
        self,
        nets: _WindowAutoencoder | Sequence[_WindowAutoencoder],
        *,
        config: AnomalyConfig,
        center: FloatArray,
        scale: FloatArray,
        threshold: float,
        feature_names: Sequence[str],
        search_results: Sequence[dict[str, Any]] = (),
        feature_levels: npt.ArrayLike | None = None,
        member_weights: Sequence[float] | None = None,
    ) -> None:
        members = [nets] if isinstance(nets, _WindowAutoencoder) else list(nets)
        if [net.window for net in members] != list(config.windows):
            raise ValueError(
                f"networks with windows {[net.window for net in members]} for a config of windows {config.windows}"
            )
        self.config = config
        self.window = max(config.windows)
        """Steps per scored window: the longest member's (the ONNX input's W)."""
        self.n_features = int(center.shape[0])
        if len(feature_names) != self.n_features:
            raise ValueError(f"{len(feature_names)} feature names for {self.n_features} features")
        self.feature_names = [str(n) for n in feature_names]
        self.threshold = float(threshold)
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.search_results = [dict(r) for r in search_results]
        """Each search candidate's parameters and validation loss (empty without a search)."""
        self.feature_levels: FloatArray | None = (
            None if feature_levels is None else np.asarray(feature_levels, dtype=np.float64).copy()
        )
        """Each metric's reference level for the drift compensation (None: not calibrated)."""
        self._scorer = _Scorer(
            members, self.center, self.scale, config.clip, config.score_steps, member_weights
        ).eval()

    @property
    def member_weights(self) -> list[float]:
        """Each member's weight in the score (1 / (members x its training threshold) once fitted)."""
        return [float(w) for w in self._scorer.get_buffer("weights").tolist()]

    def _nets(self) -> list[_WindowAutoencoder]:
        return [net for net in self._scorer.nets if isinstance(net, _WindowAutoencoder)]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        *,
        feature_names: Sequence[str] | None = None,
        config: AnomalyConfig | None = None,
        search: bool = True,
        seed: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> AnomalyModel:
        """Fits normalisation and autoencoder on an unlabelled (T, F) series and calibrates the threshold.

        With `search`, window, hidden width and learning rate come from `SEARCH_SPACE` (the other
        fields from `config`), chosen by ``config.selection`` on the trailing
        ``validation_fraction`` of `train` (see the module notes); without it `config` is used as
        is. No labels are involved anywhere. Needs at least ``2 * window`` training steps.
        """
        from sklearn.model_selection import ParameterGrid

        base = config or AnomalyConfig()
        x = _check_series(train)
        if not np.isfinite(x).any(axis=0).all():
            raise ValueError("every feature needs at least one finite training value")
        n_features = x.shape[1]
        names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(n_features)]
        say = progress or (lambda _msg: None)
        with _Threads(base.threads):
            center, scale = _robust_scale(x, base.min_scale)
            scorer_norm = _Scorer([_WindowAutoencoder(1, n_features, 1, 1)], center, scale, base.clip, 1)
            with torch.no_grad():
                z = scorer_norm.normalise(torch.from_numpy(x.astype(np.float32))).numpy()
            chosen = base
            results: list[dict[str, Any]] = []
            if search:
                space = (
                    SEARCH_SPACE
                    if base.members == 1
                    else {k: v for k, v in SEARCH_SPACE.items() if k != "window"}
                )
                chosen, results = cls._search(z, base, list(ParameterGrid(space)), seed, say)
            longest = max(chosen.windows)
            if z.shape[0] < 2 * longest:
                raise ValueError(f"need at least {2 * longest} training steps, got {z.shape[0]}")
            started = time.perf_counter()
            nets = [
                _train(_full_windows(z, w), chosen, n_features, chosen.epochs, seed) for w in chosen.windows
            ]
            say(
                f"final model windows={','.join(map(str, chosen.windows))} hidden={chosen.hidden} "
                f"lr={chosen.lr:g} trained in {time.perf_counter() - started:.1f}s"
            )
            model = cls(
                nets,
                config=chosen,
                center=center,
                scale=scale,
                threshold=math.inf,
                feature_names=names,
                search_results=results,
            )
            model._calibrate(x)
            say(f"threshold {model.threshold:.4g} (median of {chosen.calibration_block}-step block maxima)")
            return model

    @staticmethod
    def _search(
        z: np.ndarray,
        base: AnomalyConfig,
        grid: list[dict[str, Any]],
        seed: int,
        say: Callable[[str], None],
    ) -> tuple[AnomalyConfig, list[dict[str, Any]]]:
        """Each candidate trains every member on the leading part; its criterion is the members' mean."""
        n_fit = round(z.shape[0] * (1.0 - base.validation_fraction))
        n_val = z.shape[0] - n_fit
        steps = np.unique(
            np.linspace(n_fit, z.shape[0] - 1, min(n_val, _SEARCH_VAL_STEPS)).round().astype(int)
        )
        injected = _injections(z.shape[1], steps.size, seed)
        results: list[dict[str, Any]] = []
        best: tuple[tuple[float, float], AnomalyConfig] | None = None
        for params in grid:
            if params.get("window", base.window) < base.score_steps:
                continue
            candidate = replace(base, **params)
            k = candidate.score_steps
            if n_fit < 2 * max(candidate.windows) or n_val < 1:
                continue
            started = time.perf_counter()
            losses: list[float] = []
            aucs: list[float] = []
            for w in candidate.windows:
                net = _train(
                    _full_windows(z[:n_fit], w), candidate, z.shape[1], candidate.search_epochs, seed
                )
                val = torch.from_numpy(_windows(z.astype(np.float32), w, 0, z.shape[0])[steps])
                corrupted = val.clone()
                corrupted[:, -k:, :] += injected[:, None, :]
                corrupted = torch.clamp(corrupted, -candidate.clip, candidate.clip)
                with torch.no_grad():
                    real = ((net(val) - val)[:, -k:, :] ** 2).mean(dim=(1, 2)).numpy()
                    fake = ((net(corrupted) - corrupted)[:, -k:, :] ** 2).mean(dim=(1, 2)).numpy()
                losses.append(float(real.mean()))
                aucs.append(_auc(fake, real))
            loss, auc = float(np.mean(losses)), float(np.mean(aucs))
            results.append({**params, "val_loss": loss, "val_injection_auc": auc})
            say(
                f"search {params} val_loss={loss:.4f} injection_auc={auc:.4f} ({time.perf_counter() - started:.1f}s)"
            )
            key = (-auc, loss) if base.selection == "injection" else (loss, -auc)
            if best is None or key < best[0]:
                best = (key, candidate)
        if best is None:
            raise ValueError(f"training series of {z.shape[0]} steps is too short for the search")
        return best[1], results

    # ------------------------------------------------------------------ scoring
    def _batches(self, x: np.ndarray, run: Callable[[torch.Tensor], _Out]) -> Iterator[_Out]:
        """`run` of the raw windows ending at each step of the (T, F) series `x`, in batches."""
        data = _check_series(x, self.n_features).astype(np.float32)
        with _Threads(self.config.threads), torch.no_grad():
            for start in range(0, data.shape[0], _BATCH_SCORE):
                stop = min(start + _BATCH_SCORE, data.shape[0])
                yield run(torch.from_numpy(_windows(data, self.window, start, stop)))

    def score(self, x: np.ndarray) -> FloatArray:
        """Anomaly score per step of a raw (T, F) series; step t uses only steps up to t."""
        return np.concatenate([s.numpy() for s, _ in self._batches(x, self._scorer)]).astype(np.float64)

    def feature_scores(self, x: np.ndarray) -> FloatArray:
        """Per-step, per-feature terms of the score, (T, F); each row sums to `score` of that step."""
        return np.concatenate([f.numpy() for _, f in self._batches(x, self._scorer)]).astype(np.float64)

    def member_feature_scores(self, x: np.ndarray) -> FloatArray:
        """Each member's own, unweighted per-feature terms of a raw (T, F) series: (members, T, F);
        `feature_scores` is their sum weighted by `member_weights`."""
        batches = self._batches(x, self._scorer.member_terms)
        return np.concatenate([t.numpy() for t in batches], axis=1).astype(np.float64)

    def member_scores(self, x: np.ndarray) -> FloatArray:
        """Each member's own, unweighted score per step of a raw (T, F) series: (members, T)."""
        scores: FloatArray = self.member_feature_scores(x).sum(axis=2)
        return scores

    def _calibrate(self, x: FloatArray) -> None:
        """Member weights, threshold and reference levels from the scores of the (normal-looking)
        series `x`, in one pass over it. With several members each is weighted by 1 / (members x
        the block-maxima threshold of its own score), so that each contributes on the same scale."""
        block = self.config.calibration_block
        members = self.member_feature_scores(x)
        weights = self._scorer.get_buffer("weights")
        if members.shape[0] > 1:
            thresholds = [block_maxima_threshold(s, block) for s in members.sum(axis=2)]
            weights.copy_(torch.tensor([1.0 / (len(thresholds) * max(t, 1e-12)) for t in thresholds]))
        terms = np.tensordot(weights.numpy().astype(np.float64), members, axes=1)
        self.threshold = block_maxima_threshold(terms.sum(axis=1), block)
        self.feature_levels = reference_levels(terms, block)

    def compensation(self) -> DriftCompensation | None:
        """A fresh online drift compensation for this model's scores (`compensated_scores`), or
        None when it is turned off (``drift_blocks=0``) or the model has no reference levels."""
        if self.feature_levels is None or self.config.drift_blocks == 0:
            return None
        return DriftCompensation(
            self.feature_levels, block=self.config.calibration_block, blocks=self.config.drift_blocks
        )

    def compensated_scores(self, x: np.ndarray, *, history: np.ndarray | None = None) -> FloatArray:
        """Scores of the raw (T, F) series `x` as an agent running the model online reports them:
        per-metric terms through the drift compensation, which has first seen `history` (e.g. the
        training series, when the model has run since then). Plain `score` without compensation."""
        state = self.compensation()
        past = self.feature_scores(history) if history is not None and state is not None else None
        return compensated_scores(state, self.feature_scores(x), history=past)

    def predict(self, x: np.ndarray) -> npt.NDArray[np.bool_]:
        """Whether each step's score reaches the calibrated threshold."""
        return self.score(x) >= self.threshold

    # ------------------------------------------------------------------ online adaptation
    def adapt(
        self,
        history: np.ndarray,
        new: int,
        *,
        epochs: int = 1,
        replay: float = 1.0,
        regime_share: float = 0.5,
        seed: int = 0,
    ) -> npt.NDArray[np.bool_]:
        """Flags the newest `new` steps of a raw (T, F) `history`, then adapts the model to them; no labels.

        Meant to run once per block of new data (e.g. daily) beside the online scorer, so that a
        drifting normal (a new load level, a new daily pattern) stops raising alarms:

        1. the newest `new` steps are flagged with the current network and threshold (the
           returned flags are what the model reported for them);
        2. the network is fine-tuned for `epochs` (Adam, ``config.lr``) on the windows ending in
           the newest steps that hold no flagged step, mixed with `replay` times as many windows
           drawn from the earlier history whose steps score below the threshold, so the model
           does not forget the older normal. When at least `regime_share` of the newest steps
           are flagged, the block is taken for a change of regime (a new level that lasted the
           whole block, not an incident) and all its windows are trained on;
        3. the threshold is recalibrated (`block_maxima_threshold`) on the scores of the whole
           `history` under the adapted network.

        Normalisation (centre, scale, clip) stays as fitted: the ONNX graph's inputs keep their
        meaning. Anomalies the model missed are trained on like normal data; the block-maxima
        median keeps the threshold from following anomalies in fewer than half of the blocks.
        """
        x = _check_series(history, self.n_features)
        if not 0 < new <= x.shape[0]:
            raise ValueError(f"new must be within 1..{x.shape[0]}, got {new}")
        if epochs < 0 or replay < 0:
            raise ValueError("epochs and replay must not be negative")
        if not 0.0 < regime_share <= 1.0:
            raise ValueError("regime_share must be within (0, 1]")
        w = self.window
        scores = self.score(x)
        flagged = scores >= self.threshold
        first_new = x.shape[0] - new
        # a window is clean when none of its steps is flagged
        dirty = np.convolve(flagged.astype(np.float64), np.ones(w), mode="full")[: x.shape[0]] > 0
        if flagged[first_new:].mean() >= regime_share:
            dirty[first_new:] = False
        ends = np.arange(x.shape[0])
        usable = ~dirty & (ends >= w - 1)
        fresh = ends[usable & (ends >= first_new)]
        older = ends[usable & (ends < first_new)]
        rng = np.random.default_rng([seed, x.shape[0]])
        take = min(older.size, round(replay * fresh.size))
        picked = np.concatenate([fresh, rng.choice(older, size=take, replace=False) if take else older[:0]])
        if epochs and picked.size:
            with _Threads(self.config.threads):
                with torch.no_grad():
                    z = self._scorer.normalise(torch.from_numpy(x.astype(np.float32))).numpy()
                for net in self._nets():
                    _epochs(net, _full_windows(z, net.window, picked), self.config, epochs, seed)
        self._calibrate(x)
        out: npt.NDArray[np.bool_] = flagged[first_new:].copy()
        return out

    def copy(self) -> AnomalyModel:
        """An independent copy (weights included), e.g. to adapt without changing this model."""
        clones = []
        for net in self._nets():
            clone = _WindowAutoencoder(net.window, self.n_features, self.config.hidden, self.config.code)
            clone.load_state_dict(net.state_dict())
            clones.append(clone.eval())
        return AnomalyModel(
            clones,
            config=self.config,
            center=self.center.copy(),
            scale=self.scale.copy(),
            threshold=self.threshold,
            feature_names=self.feature_names,
            search_results=self.search_results,
            feature_levels=self.feature_levels,
            member_weights=self.member_weights,
        )

    def window_at(self, x: np.ndarray, t: int) -> np.ndarray:
        """The raw (W, F) window ending at step t (edge-padded before step 0), as the ONNX graph takes it."""
        arr = _check_series(x, self.n_features)
        if not 0 <= t < arr.shape[0]:
            raise IndexError(f"step {t} outside 0..{arr.shape[0] - 1}")
        window: np.ndarray = _windows(arr, self.window, t, t + 1)[0]
        return window

    # ------------------------------------------------------------------ explanation
    def explain(
        self,
        x: np.ndarray,
        t: int,
        k: int = 5,
        *,
        method: str = "shap",
        nsamples: int | None = None,
        seed: int = 0,
    ) -> list[tuple[int, float]]:
        """Top-`k` (feature index, attribution) pairs for step t, largest attribution first.

        ``method="error"``: each feature's term of the score (`feature_scores`), which is its exact
        Shapley value for the additive score (players = per-feature error terms). ``method="shap"``:
        Kernel SHAP (``shap.KernelExplainer``) of the score as a function of the raw metrics, one
        player per metric over the whole window ending at t; an absent metric takes its training
        median at every step. Attributions sum to ``score(x)[t]`` minus the score of a window with
        every metric at its median. `nsamples` is Kernel SHAP's coalition budget (default
        ``2 F + 2048``); sampling is seeded by `seed`.
        """
        window = self.window_at(x, t)
        if method == "error":
            with _Threads(self.config.threads), torch.no_grad():
                _, feats = self._scorer(torch.from_numpy(window[None].astype(np.float32)))
            values = feats.numpy()[0].astype(np.float64)
        elif method == "shap":
            values = self._kernel_shap(window, nsamples, seed)
        else:
            raise ValueError(f"unknown explanation method {method!r} (use 'shap' or 'error')")
        order = np.argsort(-values, kind="stable")[: max(k, 0)]
        return [(int(i), float(values[i])) for i in order]

    def _kernel_shap(self, window: np.ndarray, nsamples: int | None, seed: int) -> FloatArray:
        import shap

        context = window.astype(np.float32)
        median = self.center.astype(np.float32)

        def score_coalitions(present: np.ndarray) -> np.ndarray:
            # `present` rows are 0/1 masks over the metrics (the explained instance is all ones,
            # the background all zeros): a present metric keeps its whole window, an absent one
            # is at its training median throughout.
            keep = present[:, None, :] > 0.5
            batch = np.where(keep, context[None], median[None, None, :]).astype(np.float32)
            with _Threads(self.config.threads), torch.no_grad():
                scores, _ = self._scorer(torch.from_numpy(batch))
            out: np.ndarray = scores.numpy().astype(np.float64)
            return out

        background = np.zeros((1, self.n_features))
        budget = nsamples if nsamples is not None else 2 * self.n_features + 2048
        state = np.random.get_state()
        np.random.seed(seed % (2**32))
        try:
            explainer = shap.KernelExplainer(score_coalitions, background)
            values = explainer.shap_values(
                np.ones((1, self.n_features)), nsamples=budget, silent=True, l1_reg=False
            )
        finally:
            np.random.set_state(state)
        return np.asarray(values, dtype=np.float64).reshape(-1)[: self.n_features]

    # ------------------------------------------------------------------ export and persistence
    def export_onnx(self, path: Path | str) -> Path:
        """Writes the scorer as ONNX (opset 17) and returns the path.

        Input ``metrics`` float32 [N, W, F]: raw metrics, the window ending at the scored step.
        Outputs ``score`` float32 [N] and ``feature_scores`` float32 [N, F]. Normalisation,
        clipping and NaN handling are in the graph. Metadata: ``foedus.kind=anomaly``,
        ``foedus.window``, ``foedus.threshold``, ``foedus.features`` (comma-separated names),
        ``foedus.score_steps``, and for the drift compensation ``foedus.feature_levels``,
        ``foedus.calibration_block``, ``foedus.drift_blocks`` (`foedus.client_sdk.agent.compensation`).
        """
        import onnx

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        example = torch.as_tensor(
            np.repeat(self.center[None, None, :], self.window, axis=1), dtype=torch.float32
        )
        example = example.repeat(2, 1, 1)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                self._scorer,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME, FEATURE_OUTPUT],
                dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}, FEATURE_OUTPUT: {0: "N"}},
                opset_version=17,
                dynamo=False,
            )
        model = onnx.load(str(path))
        meta = {
            "foedus.kind": MODEL_KIND,
            "foedus.window": str(self.window),
            "foedus.windows": ",".join(str(w) for w in self.config.windows),
            "foedus.threshold": repr(self.threshold),
            "foedus.features": ",".join(self.feature_names),
            "foedus.score_steps": str(self.config.score_steps),
            BLOCK_KEY: str(self.config.calibration_block),
        }
        if self.feature_levels is not None:
            meta[LEVELS_KEY] = ",".join(repr(float(v)) for v in self.feature_levels)
            meta[BLOCKS_KEY] = str(self.config.drift_blocks)
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(path))
        return path

    def save(self, path: Path | str) -> Path:
        """Saves weights, configuration, normalisation, threshold and names (``torch.save``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "version": _SAVE_VERSION,
            "config": asdict(self.config),
            "center": torch.as_tensor(self.center),
            "scale": torch.as_tensor(self.scale),
            "threshold": self.threshold,
            "feature_names": list(self.feature_names),
            "nets": [net.state_dict() for net in self._nets()],
            "member_weights": self.member_weights,
            "search_results": self.search_results,
            "feature_levels": None if self.feature_levels is None else torch.as_tensor(self.feature_levels),
        }
        torch.save(state, str(path))
        return path

    @classmethod
    def from_shared_weights(
        cls,
        weights: Mapping[str, np.ndarray],
        train: np.ndarray,
        *,
        config: AnomalyConfig,
        feature_names: Sequence[str] | None = None,
    ) -> AnomalyModel:
        """This site's detector from a federated run's global autoencoder `weights` (names as in
        the network's state dict): centre, scale and threshold fitted on the site's own `train`.
        Federated training shares one network: the model has one member whatever ``config.members``."""
        config = replace(config, members=1)
        raw = _check_series(train)
        net = _WindowAutoencoder(config.window, raw.shape[1], config.hidden, config.code)
        net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
        center, scale = _robust_scale(raw, config.min_scale)
        names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(raw.shape[1])]
        model = cls(net, config=config, center=center, scale=scale, threshold=math.inf, feature_names=names)
        model._calibrate(raw)
        return model

    @classmethod
    def load(cls, path: Path | str) -> AnomalyModel:
        """Restores a model written by `save` (weights-only unpickling)."""
        state: dict[str, Any] = torch.load(str(path), map_location="cpu", weights_only=True)
        version = state.get("version")
        if version not in (1, _SAVE_VERSION):
            raise ValueError(f"unsupported anomaly model version {version!r}")
        if version == 1:  # a single network, saved before ensembles
            state["config"] = {**state["config"], "members": 1}
            state["nets"] = [state["net"]]
        config = AnomalyConfig(**state["config"])
        center = state["center"].numpy().astype(np.float64)
        nets = []
        for w, weights in zip(config.windows, state["nets"], strict=True):
            net = _WindowAutoencoder(w, center.shape[0], config.hidden, config.code)
            net.load_state_dict(weights)
            nets.append(net.eval())
        return cls(
            nets,
            config=config,
            center=center,
            scale=state["scale"].numpy().astype(np.float64),
            threshold=float(state["threshold"]),
            feature_names=state["feature_names"],
            search_results=state.get("search_results", []),
            feature_levels=None if state.get("feature_levels") is None else state["feature_levels"].numpy(),
            member_weights=state.get("member_weights"),
        )


# ------------------------------------------------------------------ federated training
# The network is shared across organisations; each organisation keeps its own normalisation and
# threshold. That is what the data allows: metric levels differ between sites (a busy cluster's
# normal is another's incident), so centre and scale are fitted locally and never leave the site,
# and only the autoencoder's weights are averaged. An organisation turns the global weights into
# its own detector with `AnomalyModel.from_shared_weights`.


def normalised_series(x: np.ndarray, config: AnomalyConfig) -> np.ndarray:
    """(T, F) float32: `x` normalised with its own robust centre and scale and clipped, as
    `AnomalyModel.from_shared_weights` normalises a site's series."""
    raw = _check_series(x)
    center, scale = _robust_scale(raw, config.min_scale)
    z = np.clip((np.nan_to_num(raw - center, nan=0.0)) / scale, -config.clip, config.clip)
    return z.astype(np.float32)


def normalised_windows(x: np.ndarray, config: AnomalyConfig) -> np.ndarray:
    """(T, W, F) float32 windows of `x` normalised with `x`'s own robust centre and scale, one
    window ending at each step (edge-padded before the first), as the local training data."""
    z = normalised_series(x, config)
    return _windows(z, config.window, 0, z.shape[0]).astype(np.float32)


def federated_task(
    features: int = 6,
    window: int = 10,
    hidden: int = 128,
    code: int = 8,
    lr: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    normalise: bool = True,
    carry_optimizer: bool = False,
) -> Any:
    """The anomaly model as a Flower task (`foedus.federation.flower.task.FederatedTask`).

    Import string ``foedus.federation.anomaly:federated_task``; run-config options
    ``task-options.features``, ``.window``, ``.hidden``, ``.code``, ``.lr``, ``.batch-size``,
    ``.seed``, ``.normalise``, ``.carry-optimizer`` (each node keeps its Adam state between rounds,
    see `TorchTask`). Each node normalises its own rows (see `normalised_windows`) and
    trains the shared window autoencoder on them; evaluation reports the mean reconstruction error
    and, with labels, the AUROC of the per-window error, and the site's calibration for the global
    weights (`calibration_metrics`: its centre, scale and threshold; the ServerApp averages them,
    weighted by rows, into the calibration of the platform's model). With ``normalise=False`` the rows are
    taken as already normalised (an organisation with several machines normalises each machine's
    series on its own, as `AnomalyModel.from_shared_weights` does, and stacks them); they are
    only clipped.
    """
    from foedus.federation.flower.task import LocalData, Metrics, NamedArrays, TorchTask

    config = AnomalyConfig(window=window, members=1, hidden=hidden, code=code, lr=lr, batch_size=batch_size)

    class AnomalyTask(TorchTask):
        def evaluate(self, arrays: NamedArrays, data: LocalData) -> Metrics:
            metrics = super().evaluate(arrays, data)
            if normalise:
                site = AnomalyModel.from_shared_weights(arrays, data.train, config=config)
                metrics.update(
                    calibration_metrics(site.center, site.scale, site.threshold, site.feature_levels)
                )
            return metrics

    def factory() -> nn.Module:
        return _WindowAutoencoder(window, features, hidden, code)

    def pairs(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if matrix.shape[1] != features:
            raise ValueError(f"the task is set up for {features} metrics; the data has {matrix.shape[1]}")
        if normalise:
            windows = normalised_windows(matrix, config)
        else:
            z = np.clip(np.nan_to_num(np.asarray(matrix, dtype=np.float32)), -config.clip, config.clip)
            windows = _windows(z, window, 0, z.shape[0]).astype(np.float32)
        return windows, windows

    return AnomalyTask(
        factory, pairs=pairs, lr=lr, batch_size=batch_size, seed=seed, carry_optimizer=carry_optimizer
    )


CALIBRATION_PREFIX = "calib-"
"""Evaluation metrics of the anomaly task that carry a site's calibration (see `calibration_metrics`)."""


def calibration_metrics(
    center: npt.ArrayLike,
    scale: npt.ArrayLike,
    threshold: float,
    levels: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """A site's calibration of the global weights as flat metrics: ``calib-center-<i>``,
    ``calib-scale-<i>`` per feature, ``calib-threshold``, and with `levels` the per-metric
    reference levels of the drift compensation, ``calib-level-<i>``.

    Flower averages evaluation metrics over the nodes weighted by their rows, so the run's
    aggregate is the example-weighted mean of the sites' calibrations; no site's own figures
    reach the other sites.
    """
    out = {f"{CALIBRATION_PREFIX}center-{i}": float(v) for i, v in enumerate(np.ravel(center))}
    out.update({f"{CALIBRATION_PREFIX}scale-{i}": float(v) for i, v in enumerate(np.ravel(scale))})
    out[f"{CALIBRATION_PREFIX}threshold"] = float(threshold)
    if levels is not None:
        out.update({f"{CALIBRATION_PREFIX}level-{i}": float(v) for i, v in enumerate(np.ravel(levels))})
    return out


def global_model(
    weights: Mapping[str, np.ndarray],
    metrics: Mapping[str, float],
    *,
    config: AnomalyConfig,
    feature_names: Sequence[str] | None = None,
) -> AnomalyModel:
    """The platform's detector from a federated run: the global autoencoder `weights` with the
    run's aggregated calibration (`metrics`: the last round's evaluation metrics, holding
    `calibration_metrics` averaged over the sites). A site that wants its own normalisation and
    threshold uses `AnomalyModel.from_shared_weights` on its own history instead. With the sites'
    averaged reference levels (``calib-level-*``) the model carries them and agents score it
    through the drift compensation; without them it has none and they score it plainly."""
    n = sum(1 for key in metrics if key.startswith(f"{CALIBRATION_PREFIX}center-"))
    config = replace(config, members=1)  # federated training shares one network
    if n == 0 or f"{CALIBRATION_PREFIX}threshold" not in metrics:
        raise ValueError("the metrics hold no calibration (calib-center-*, calib-scale-*, calib-threshold)")
    try:
        center = np.array([metrics[f"{CALIBRATION_PREFIX}center-{i}"] for i in range(n)], dtype=np.float64)
        scale = np.array([metrics[f"{CALIBRATION_PREFIX}scale-{i}"] for i in range(n)], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(f"the calibration metrics are incomplete: {exc} is missing") from None
    level_keys = [f"{CALIBRATION_PREFIX}level-{i}" for i in range(n)]
    levels = np.array([metrics[k] for k in level_keys]) if all(k in metrics for k in level_keys) else None
    net = _WindowAutoencoder(config.window, n, config.hidden, config.code)
    net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(n)]
    return AnomalyModel(
        net,
        config=config,
        center=center,
        scale=np.maximum(scale, config.min_scale),
        threshold=float(metrics[f"{CALIBRATION_PREFIX}threshold"]),
        feature_names=names,
        feature_levels=levels,
    )
