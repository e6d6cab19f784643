"""What a federation trains: the ``FederatedTask`` protocol, a torch adapter, local data and run settings.

The Flower apps (:mod:`.server_app`, :mod:`.client_app`) know nothing about a model's internals.
They load a task by import string (``"package.module:attribute"``, the run config's ``task`` key),
ask it for initial weights on the server, and on each SuperNode hand it the organisation's local
data with the current global weights to train or evaluate. Weights travel as *named arrays*: an
ordered ``dict`` from parameter name to NumPy array.

:class:`TorchTask` implements the protocol for any ``torch.nn.Module`` built by a factory, trained
as a regression (inputs -> targets, e.g. forecasting one metric from the others) or as an
autoencoder (inputs -> inputs), with optional FedProx proximal term.

Local data comes from a pluggable loader chosen per SuperNode (its node config): a ``.npz`` with a
``train`` matrix (rows x features) and optionally ``test`` and ``test_label``, or an agent's data
directory holding its local metric history (``history.db``).

:class:`RunSettings` is the run configuration shared by the ServerApp and the ClientApp: it is
written into the generated app's ``pyproject.toml`` by the runner and read back from
``Context.run_config`` by both apps.

torch is imported lazily and flwr not at all, so that this module (and the runner that uses its
settings) can be imported where neither is needed.
"""

from __future__ import annotations

import importlib
import json
import math
import secrets
import sqlite3
import zipfile
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DP_MODES",
    "STRATEGIES",
    "DataError",
    "DpConfig",
    "DpSgd",
    "FederatedTask",
    "LocalData",
    "Metrics",
    "NamedArrays",
    "RoundRecord",
    "RunSettings",
    "SecAggConfig",
    "TorchTask",
    "autoencoder_pairs",
    "demo_autoencoder",
    "dp_sgd_epsilon",
    "gaussian_dp_epsilon",
    "get_weights",
    "load_agent_history",
    "load_local_data",
    "load_npz",
    "load_task",
    "register_loader",
    "regression_pairs",
    "set_weights",
]

FloatArray = npt.NDArray[np.float32]
NamedArrays = dict[str, npt.NDArray[Any]]
"""Model weights: parameter name -> array, in the model's parameter order."""
Scalar = bool | int | float | str
Metrics = dict[str, float | int]
"""Per-node metrics. ``num-examples`` (the FedAvg weight) is required; ``train-loss`` /
``eval-loss`` are what the per-round records report as the round's losses."""


# ---------------------------------------------------------------------------------------------
# Local data
# ---------------------------------------------------------------------------------------------


class DataError(ValueError):
    """A SuperNode's local data is missing, unreadable or not the expected shape."""


@dataclass(frozen=True)
class LocalData:
    """One organisation's local data set. ``train`` is rows x features (float32).

    ``test`` (same number of columns) is what evaluation uses when present, else ``train``;
    ``test_label`` (one 0/1 label per ``test`` row) lets an anomaly task report a ranking metric.
    """

    train: FloatArray
    test: FloatArray | None = None
    test_label: npt.NDArray[np.int64] | None = None
    source: str = ""
    feature_names: tuple[str, ...] = ()

    @property
    def num_features(self) -> int:
        """Number of columns of the training matrix."""
        return int(self.train.shape[1])

    @property
    def eval_matrix(self) -> FloatArray:
        """The matrix evaluation runs on: ``test`` if present, else ``train``."""
        return self.test if self.test is not None else self.train


Loader = Callable[[Path], LocalData]
"""A local data loader: a path (file or directory) -> :class:`LocalData`; raises :class:`DataError`."""


def _as_matrix(value: npt.NDArray[Any], what: str) -> FloatArray:
    if value.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (rows x features), not shape {value.shape}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise DataError(f"{what} is empty (shape {value.shape})")
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        raise DataError(f"{what} must be numeric, not {value.dtype}")
    matrix = np.asarray(value, dtype=np.float32)
    if not np.all(np.isfinite(matrix)):
        raise DataError(f"{what} holds NaN or infinite values")
    return matrix


def load_npz(path: Path) -> LocalData:
    """Load ``train`` (required), ``test`` and ``test_label`` (optional) from a ``.npz`` file."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz archive: {exc}") from exc
    if "train" not in arrays:
        held = ", ".join(sorted(arrays)) or "nothing"
        raise DataError(f"{path} has no array 'train' (it holds {held})")
    train = _as_matrix(arrays["train"], f"{path}:train")
    test: FloatArray | None = None
    labels: npt.NDArray[np.int64] | None = None
    if "test" in arrays:
        test = _as_matrix(arrays["test"], f"{path}:test")
        if test.shape[1] != train.shape[1]:
            raise DataError(f"{path}:test has {test.shape[1]} columns but train has {train.shape[1]}")
    if "test_label" in arrays:
        if test is None:
            raise DataError(f"{path} has 'test_label' but no 'test'")
        raw = np.asarray(arrays["test_label"])
        if raw.ndim != 1 or raw.shape[0] != test.shape[0]:
            raise DataError(
                f"{path}:test_label must be 1-D with one label per test row "
                f"({test.shape[0]}), not shape {raw.shape}"
            )
        labels = raw.astype(np.int64)
    return LocalData(train=train, test=test, test_label=labels, source=str(path))


def load_agent_history(path: Path) -> LocalData:
    """Load an agent's data directory: its local metric history ``history.db``, oldest row first.

    The columns are the agent's interval metrics (``HISTORY_METRICS``); a metric missing from a
    row reads as 0. The database is opened read-only, so a running agent is not disturbed.
    """
    from foedus.client_sdk.agent.history import HISTORY_METRICS

    if not path.is_dir():
        raise DataError(f"{path} is not a directory")
    database = path / "history.db"
    if not database.is_file():
        raise DataError(f"{path} is a directory without an agent history (history.db)")
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT metrics FROM intervals ORDER BY start_ms").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise DataError(f"{database} is not a readable agent history: {exc}") from exc
    if not rows:
        raise DataError(f"{database} holds no intervals yet")
    names = tuple(HISTORY_METRICS)
    matrix: list[list[float]] = []
    for (text,) in rows:
        values = json.loads(text)
        matrix.append([float(values.get(name, 0.0)) for name in names])
    train = _as_matrix(np.asarray(matrix, dtype=np.float64), f"{database}")
    return LocalData(train=train, source=str(path), feature_names=names)


_LOADERS: dict[str, Loader] = {"npz": load_npz, "agent-history": load_agent_history}


def register_loader(name: str, loader: Loader) -> None:
    """Make ``loader`` selectable by ``name`` in a SuperNode's ``data-loader`` node config."""
    if not name or ":" in name:
        raise ValueError(f"invalid loader name {name!r}")
    _LOADERS[name] = loader


def _import_object(ref: str) -> Any:
    """Resolve ``"package.module:attribute[.attribute]"``."""
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{ref!r} is not an import string of the form 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} (from {ref!r}): {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}") from exc
    return obj


def load_local_data(path: Path | str, loader: str | None = None) -> LocalData:
    """Load one organisation's data with the named loader.

    ``loader`` is a registered name (``"npz"``, ``"agent-history"``, or one added with
    :func:`register_loader`), an import string ``"module:function"`` of a :data:`Loader`, or
    ``None`` to choose by the path: a directory is an agent's history, a ``.npz`` file is npz.
    """
    path = Path(path).expanduser()
    if loader:
        if loader in _LOADERS:
            chosen = _LOADERS[loader]
        elif ":" in loader:
            chosen = _import_object(loader)
            if not callable(chosen):
                raise DataError(f"data loader {loader!r} is not callable")
        else:
            known = ", ".join(sorted(_LOADERS))
            raise DataError(f"unknown data loader {loader!r} (known: {known}, or 'module:function')")
    elif path.is_dir():
        chosen = load_agent_history
    elif path.suffix == ".npz":
        chosen = load_npz
    elif not path.exists():
        raise DataError(f"{path}: no such file or directory")
    else:
        raise DataError(f"{path}: cannot tell the data format; expected a .npz file or an agent directory")
    data = chosen(path)
    if not isinstance(data, LocalData):
        raise DataError(f"data loader for {path} returned {type(data).__name__}, not LocalData")
    return data


# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class FederatedTask(Protocol):
    """A model that can be trained federatedly.

    Implementations must be deterministic given their construction arguments, so that every
    process (ServerApp, each ClientApp) that loads the task by import string builds the same
    architecture.
    """

    def initial_arrays(self) -> NamedArrays:
        """The weights round 1 starts from (the ServerApp sends them to every node)."""
        ...

    def train(
        self,
        arrays: NamedArrays,
        data: LocalData,
        *,
        epochs: int,
        proximal_mu: float = 0.0,
        server_round: int = 0,
        local_state: MutableMapping[str, npt.NDArray[Any]] | None = None,
        dp_sgd: DpSgd | None = None,
    ) -> tuple[NamedArrays, Metrics]:
        """Train from ``arrays`` on ``data`` for ``epochs`` local epochs.

        With ``proximal_mu > 0`` (FedProx) the local objective adds ``mu/2 * ||w - arrays||^2``.
        ``server_round`` (1, 2, … in a federated run; 0 outside one) lets the task draw a new
        order of its rows each round. ``local_state`` is the node's own store across the rounds
        of one run (it never leaves the node): a task may read what it wrote there in an earlier
        round, such as its optimiser's moments, and write it again. With ``dp_sgd`` the training
        is record-level DP-SGD (:class:`DpSgd`); a task that cannot do it must raise ``ValueError``.
        Returns the updated weights (same names, shapes and order) and metrics with
        ``num-examples`` and ``train-loss``.
        """
        ...

    def evaluate(self, arrays: NamedArrays, data: LocalData) -> Metrics:
        """Evaluate ``arrays`` on ``data``; metrics with ``num-examples`` and ``eval-loss``."""
        ...


def load_task(ref: str, options: Mapping[str, Scalar] | None = None) -> FederatedTask:
    """Load the task an import string names.

    The attribute is either a :class:`FederatedTask` instance (``options`` must then be empty) or
    a callable returning one; the callable gets ``options`` as keyword arguments (the run
    config's ``task-options.*`` keys, without the prefix and with ``-`` turned into ``_``).
    """
    obj = _import_object(ref)
    options = dict(options or {})
    if isinstance(obj, FederatedTask) and not isinstance(obj, type):
        if options:
            raise ValueError(f"{ref!r} is a task instance; it takes no options ({', '.join(options)})")
        return obj
    if not callable(obj):
        raise ValueError(f"{ref!r} is neither a FederatedTask nor a callable that returns one")
    task = obj(**options)
    if not isinstance(task, FederatedTask):
        raise ValueError(f"{ref!r} returned {type(task).__name__}, which is not a FederatedTask")
    return task


# ---------------------------------------------------------------------------------------------
# The torch adapter
# ---------------------------------------------------------------------------------------------


def get_weights(model: nn.Module) -> NamedArrays:
    """The model's floating-point state (parameters and float buffers) as named NumPy arrays.

    Integer buffers (e.g. BatchNorm's ``num_batches_tracked``) stay local: averaging them is
    meaningless.
    """
    return {
        name: tensor.detach().cpu().numpy().copy()
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }


def set_weights(model: nn.Module, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Load named arrays into the model; names (in any order) and shapes must match :func:`get_weights`."""
    import torch

    state = model.state_dict()
    expected = [name for name, tensor in state.items() if tensor.is_floating_point()]
    if set(arrays) != set(expected):
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        raise ValueError(f"weights do not match the model: missing {missing}, unexpected {extra}")
    update: dict[str, torch.Tensor] = {}
    for name in expected:
        value = np.asarray(arrays[name])
        if tuple(value.shape) != tuple(state[name].shape):
            raise ValueError(
                f"{name}: shape {value.shape} does not match the model's {tuple(state[name].shape)}"
            )
        update[name] = torch.as_tensor(value, dtype=state[name].dtype)
    model.load_state_dict(update, strict=False)


_OPTIMIZER_PREFIX = "optimizer/"
_DP_STEPS_KEY = "dp-sgd-steps"
_DP_SGD_CHUNK = 256
"""Rows whose gradients DP-SGD computes at once (bounds its memory on large samples)."""


ElementwiseLoss = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def _row_losses_of(loss: ElementwiseLoss, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    per_element = loss(prediction, target)
    return per_element.reshape(per_element.shape[0], -1).mean(dim=1)


def _only_linear(model: nn.Module) -> bool:
    """Whether every trainable parameter belongs to an ``nn.Linear`` (then per-row gradient norms
    follow from the layers' inputs and output gradients, see :func:`_linear_clipped_sum`)."""
    from torch import nn

    linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    return all(id(p) in linear for p in model.parameters() if p.requires_grad)


def _linear_clipped_sum(
    model: nn.Module, loss: ElementwiseLoss, x: torch.Tensor, y: torch.Tensor, clip: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Σ_i min(1, clip / ‖∇L_i‖) ∇L_i over the rows (L_i: row i's loss), and the rows' losses.

    For a model whose parameters are all in ``nn.Linear`` layers applied to (rows, features)
    inputs, without one gradient per row: a row's weight gradient in a layer is the outer product
    of its output gradient and its input, so its squared norm is ``‖g_i‖² ‖a_i‖²`` (+ ``‖g_i‖²``
    for the bias); a second backward pass of the rows' losses weighted by their clipping factors
    gives the sum. Rows must not interact in the forward pass (no batch normalisation). Falls back
    to :func:`_vmap_clipped_sum` where a layer sees inputs of another rank or runs more than once
    in a forward pass (shared weights: the norms would miss the cross terms)."""
    import torch
    from torch import nn

    seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []

    def keep(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(module, nn.Linear)
        seen.append((module, inputs[0].detach(), output))

    trained = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and any(p.requires_grad for p in m.parameters())
    ]
    hooks = [m.register_forward_hook(keep) for m in trained]
    try:
        losses = _row_losses_of(loss, model(x), y)
    finally:
        for hook in hooks:
            hook.remove()
    if any(inp.dim() != 2 for _, inp, _ in seen) or len({id(m) for m, _, _ in seen}) < len(seen):
        return _vmap_clipped_sum(model, loss, x, y, clip)
    out_grads = torch.autograd.grad(losses.sum(), [out for _, _, out in seen], retain_graph=True)
    squared = torch.zeros(x.shape[0], dtype=losses.dtype)
    for (module, inp, _), g in zip(seen, out_grads, strict=True):
        g_sq = g.pow(2).sum(dim=1)
        if module.weight.requires_grad:
            squared += g_sq * inp.pow(2).sum(dim=1)
        if module.bias is not None and module.bias.requires_grad:
            squared += g_sq
    factor = torch.clamp(clip / (squared.sqrt() + 1e-12), max=1.0).detach()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad((losses * factor).sum(), [p for _, p in named])
    return {name: g for (name, _), g in zip(named, grads, strict=True)}, losses.detach()


def _vmap_clipped_sum(
    model: nn.Module, loss: ElementwiseLoss, x: torch.Tensor, y: torch.Tensor, clip: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """What :func:`_linear_clipped_sum` computes, for any model, from one gradient per row
    (``torch.func.vmap``): slower, and memory grows with rows times parameters."""
    import torch
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def row_loss(
        params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        value = _row_losses_of(loss, out, yi.unsqueeze(0))[0]
        return value, value.detach()

    grads, losses = vmap(grad(row_loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads.values()))
    factor = torch.clamp(clip / (norms + 1e-12), max=1.0)
    return {name: torch.tensordot(factor, g, dims=1) for name, g in grads.items()}, losses


def _prefixed(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> dict[str, npt.NDArray[Any]]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, npt.NDArray[Any]]:
    """An optimiser's per-parameter state as flat named arrays (``<parameter index>/<name>``)."""
    out: dict[str, npt.NDArray[Any]] = {}
    for index, entries in opt.state_dict()["state"].items():
        for name, value in entries.items():
            out[f"{index}/{name}"] = np.asarray(
                value.detach().cpu().numpy() if hasattr(value, "detach") else value
            )
    return out


def _load_optimizer_state(opt: torch.optim.Optimizer, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Restore what :func:`_optimizer_state` saved into an optimiser built for the same parameters."""
    import torch

    current = opt.state_dict()
    shapes = {i: tuple(p.shape) for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        index_text, _, name = key.partition("/")
        index = int(index_text) if index_text.isdigit() else -1
        if index not in shapes or not name:
            raise ValueError(f"the saved optimiser state does not fit this model ({key!r})")
        tensor = torch.as_tensor(np.asarray(value))
        if name == "step":  # a scalar (records may carry it as shape (1,))
            tensor = tensor.reshape(())
        if tensor.dim() > 0 and tuple(tensor.shape) != shapes[index]:
            raise ValueError(
                f"the saved optimiser state does not fit this model ({key!r}: {tuple(tensor.shape)})"
            )
        state.setdefault(index, {})[name] = tensor
    opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})


Pairs = Callable[[FloatArray], tuple[FloatArray, FloatArray]]
"""Turns a data matrix into (inputs, targets) for supervised training."""


def autoencoder_pairs(matrix: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Reconstruct each row from itself."""
    return matrix, matrix


def regression_pairs(target_columns: list[int] | tuple[int, ...]) -> Pairs:
    """Predict the ``target_columns`` of each row from its other columns."""
    targets = list(target_columns)
    if not targets:
        raise ValueError("regression needs at least one target column")

    def pairs(matrix: FloatArray) -> tuple[FloatArray, FloatArray]:
        width = matrix.shape[1]
        if any(not -width <= c < width for c in targets):
            raise DataError(f"target columns {targets} are out of range for {width} features")
        chosen = {c % width for c in targets}
        inputs = [c for c in range(width) if c not in chosen]
        if not inputs:
            raise DataError("regression needs at least one input column")
        return matrix[:, inputs], matrix[:, sorted(chosen)]

    return pairs


def _auroc(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); None with one class."""
    positive = labels > 0
    n_pos = int(positive.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < scores.size:
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


class TorchTask:
    """:class:`FederatedTask` for a torch ``nn.Module`` built by ``factory``.

    ``pairs`` turns a data matrix into (inputs, targets): :func:`autoencoder_pairs` (the default)
    or :func:`regression_pairs`. ``loss`` maps (predictions, targets) to a per-element loss
    tensor (default squared error); the training objective is its mean. Optimiser: Adam with
    learning rate ``lr`` (or any ``optimizer(params) -> torch.optim.Optimizer``), a fresh one each
    round unless ``carry_optimizer``. Mini-batches of ``batch_size`` rows are shuffled by a
    generator seeded with ``seed`` (and the federated round, so each round draws its own order);
    ``factory`` is called after ``torch.manual_seed(seed)`` so every process builds the same
    initial weights. With :class:`DpSgd`, training is record-level DP-SGD instead.

    Evaluation reports ``eval-loss`` (mean loss over the evaluation rows) and, when the data has
    ``test_label``, ``eval-auroc``: how well the per-row loss (the reconstruction or forecast
    error) ranks the labelled anomalies first.
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        *,
        pairs: Pairs = autoencoder_pairs,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
        lr: float = 1e-2,
        batch_size: int = 32,
        seed: int = 0,
        carry_optimizer: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if lr <= 0:
            raise ValueError("lr must be positive")
        self.factory = factory
        self.pairs = pairs
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.carry_optimizer = carry_optimizer

    def build(self) -> nn.Module:
        """A fresh model, seeded so every process gets the same initial weights."""
        import torch

        torch.manual_seed(self.seed)
        return self.factory()

    def initial_arrays(self) -> NamedArrays:
        """Weights of a freshly built model."""
        return get_weights(self.build())

    def _elementwise_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.loss is not None:
            return self.loss(prediction, target)
        return (prediction - target) ** 2

    def _tensors(self, matrix: FloatArray) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        inputs, targets = self.pairs(matrix)
        return torch.as_tensor(np.ascontiguousarray(inputs)), torch.as_tensor(np.ascontiguousarray(targets))

    def _row_losses(self, model: nn.Module, matrix: FloatArray) -> npt.NDArray[np.float64]:
        import torch

        x, y = self._tensors(matrix)
        model.eval()
        with torch.no_grad():
            losses = _row_losses_of(self._elementwise_loss, model(x), y)
        return losses.double().numpy()

    def train(
        self,
        arrays: NamedArrays,
        data: LocalData,
        *,
        epochs: int,
        proximal_mu: float = 0.0,
        server_round: int = 0,
        local_state: MutableMapping[str, npt.NDArray[Any]] | None = None,
        dp_sgd: DpSgd | None = None,
    ) -> tuple[NamedArrays, Metrics]:
        """Local training from the global ``arrays`` (FedProx term when ``proximal_mu > 0``).

        Each ``server_round`` shuffles the rows in an order of its own (the same seed and round
        give the same order). ``local_state`` keeps DP-SGD's count of steps (for the node's ε)
        and, with ``carry_optimizer``, the optimiser's state (Adam's moment estimates and step
        count) from one round to the next, as one optimiser does through the epochs of pooled
        training; by default each round starts a fresh optimiser.
        """
        import torch

        if epochs < 1:
            raise ValueError("epochs must be at least 1")
        if proximal_mu < 0:
            raise ValueError("proximal_mu must be non-negative")
        if server_round < 0:
            raise ValueError("server_round must be non-negative")
        model = self.build()
        set_weights(model, arrays)
        x, y = self._tensors(data.train)
        rows = int(x.shape[0])
        initial_loss = float(self._row_losses(model, data.train).mean())
        anchors = [p.detach().clone() for p in model.parameters()]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = self.optimizer(params) if self.optimizer else torch.optim.Adam(params, lr=self.lr)
        if local_state and self.carry_optimizer:
            _load_optimizer_state(opt, _prefixed(local_state, _OPTIMIZER_PREFIX))
        seed = (
            self.seed
            if server_round == 0
            else int(np.random.SeedSequence([self.seed, server_round]).generate_state(1)[0])
        )
        generator = torch.Generator().manual_seed(seed)
        model.train()
        epoch_loss = 0.0
        proximal = 0.0
        for _ in range(epochs):
            if dp_sgd is None:
                epoch_loss, proximal = self._epoch(model, opt, x, y, generator, anchors, proximal_mu)
            else:
                epoch_loss = self._dp_sgd_epoch(model, opt, x, y, dp_sgd, anchors, proximal_mu)
        metrics: Metrics = {
            "num-examples": rows,
            "train-loss": epoch_loss,
            "train-loss-initial": initial_loss,
        }
        if proximal_mu > 0:
            metrics["proximal-term"] = proximal
        if dp_sgd is not None:
            steps = epochs * dp_sgd.steps_per_epoch
            if local_state is not None:
                steps += int(np.asarray(local_state.get(_DP_STEPS_KEY, 0)).reshape(-1)[0])
            metrics["dp-sgd-steps"] = steps
        if local_state is not None:
            for key in [k for k in local_state if k.startswith(_OPTIMIZER_PREFIX)]:
                del local_state[key]
            if self.carry_optimizer:
                local_state.update({_OPTIMIZER_PREFIX + k: v for k, v in _optimizer_state(opt).items()})
            if dp_sgd is not None:
                local_state[_DP_STEPS_KEY] = np.asarray(metrics["dp-sgd-steps"], dtype=np.int64)
        return get_weights(model), metrics

    def _epoch(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        anchors: list[torch.Tensor],
        proximal_mu: float,
    ) -> tuple[float, float]:
        """One pass over the rows in shuffled mini-batches; (mean data loss, last proximal term)."""
        import torch

        rows = int(x.shape[0])
        order = torch.randperm(rows, generator=generator)
        total = 0.0
        proximal = 0.0
        for start in range(0, rows, self.batch_size):
            batch = order[start : start + self.batch_size]
            opt.zero_grad()
            data_loss = self._elementwise_loss(model(x[batch]), y[batch]).mean()
            objective = data_loss
            if proximal_mu > 0:
                term = torch.zeros(())
                for param, anchor in zip(model.parameters(), anchors, strict=True):
                    term = term + ((param - anchor) ** 2).sum()
                objective = data_loss + (proximal_mu / 2.0) * term
                proximal = float(term.detach().item())
            objective.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(data_loss.detach().item()) * int(batch.shape[0])
        return total / rows, proximal

    def _dp_sgd_epoch(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        dp: DpSgd,
        anchors: list[torch.Tensor],
        proximal_mu: float,
    ) -> float:
        """One epoch of DP-SGD (:class:`DpSgd`); the mean data loss of the sampled rows."""
        import torch

        rows = int(x.shape[0])
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        clipped_sum = _linear_clipped_sum if _only_linear(model) else _vmap_clipped_sum
        rng = torch.Generator().manual_seed(secrets.randbits(63))  # not the run's seed: see DpSgd
        expected = dp.sample_rate * rows
        total, seen = 0.0, 0
        for _ in range(dp.steps_per_epoch):
            sample = torch.nonzero(torch.rand(rows, generator=rng) < dp.sample_rate).squeeze(1)
            summed = {name: torch.zeros_like(p) for name, p in named}
            for start in range(0, int(sample.shape[0]), _DP_SGD_CHUNK):
                chunk = sample[start : start + _DP_SGD_CHUNK]
                grads, losses = clipped_sum(
                    model, self._elementwise_loss, x[chunk], y[chunk], dp.clipping_norm
                )
                for name, g in grads.items():
                    summed[name] += g
                total += float(losses.sum())
                seen += int(chunk.shape[0])
            opt.zero_grad()
            for (name, p), anchor in zip(model.named_parameters(), anchors, strict=True):
                if not p.requires_grad:
                    continue
                noise = torch.normal(0.0, dp.noise_multiplier * dp.clipping_norm, size=p.shape, generator=rng)
                p.grad = (summed[name] + noise) / expected
                if proximal_mu > 0:
                    p.grad += proximal_mu * (p.detach() - anchor)
            opt.step()
        return total / max(1, seen)

    def evaluate(self, arrays: NamedArrays, data: LocalData) -> Metrics:
        """Mean loss on the evaluation rows (and AUROC of the per-row loss against labels)."""
        model = self.build()
        set_weights(model, arrays)
        matrix = data.eval_matrix
        losses = self._row_losses(model, matrix)
        metrics: Metrics = {"num-examples": int(matrix.shape[0]), "eval-loss": float(losses.mean())}
        if data.test is not None and data.test_label is not None:
            auroc = _auroc(losses, data.test_label)
            if auroc is not None:
                metrics["eval-auroc"] = auroc
        return metrics


def demo_autoencoder(
    features: int = 6, hidden: int = 3, lr: float = 0.01, batch_size: int = 32, seed: int = 0
) -> TorchTask:
    """A small dense autoencoder over ``features`` metrics: the plumbing's end-to-end test task.

    Import string: ``foedus.federation.flower.task:demo_autoencoder``; run-config options
    ``task-options.features``, ``.hidden``, ``.lr``, ``.batch-size``, ``.seed``.
    """
    if features < 1 or hidden < 1:
        raise ValueError("features and hidden must be positive")

    def factory() -> nn.Module:
        from torch import nn

        return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, features))

    return TorchTask(factory, lr=lr, batch_size=batch_size, seed=seed)


# ---------------------------------------------------------------------------------------------
# Run settings: the run config both apps read
# ---------------------------------------------------------------------------------------------

STRATEGIES = ("fedavg", "fedprox", "fedadam")
DP_MODES = ("central-server", "central-client", "local", "record")
DpMode = Literal["central-server", "central-client", "local", "record"]


@dataclass(frozen=True)
class DpConfig:
    """Differential privacy for a run.

    * ``central-server``: the server clips each node's update to ``clipping_norm`` (L2, relative
      to the global weights) and adds Gaussian noise of std ``noise_multiplier * clipping_norm /
      nodes`` to the average (Flower's ``DifferentialPrivacyServerSideFixedClipping``).
    * ``central-client``: the same noise, but each node clips its own update
      (``DifferentialPrivacyClientSideFixedClipping`` + the ``fixedclipping_mod`` client mod).
    * ``local``: each node clips to ``clipping_norm`` and adds its own Gaussian noise calibrated to
      (``local_epsilon``, ``delta``) per round with ``local_sensitivity`` (default: the clipping
      norm) (Flower's ``LocalDpMod``).
    * ``record``: record-level DP-SGD at each node (:class:`DpSgd`): every step takes a Poisson
      sample of the node's rows with probability ``sample_rate``, clips each row's gradient to
      ``clipping_norm`` and adds Gaussian noise of std ``noise_multiplier * clipping_norm`` to
      their sum. The weights that leave a node are then already private, with respect to any one
      row of its data; ε is accounted with Rényi DP over every step of every round
      (:func:`dp_sgd_epsilon`). The guarantee covers the training replies only: evaluation
      replies (losses, and the anomaly task's calibration figures) are not noised.

    Central modes average node updates with equal weights (the sensitivity analysis assumes it).
    """

    mode: DpMode = "central-server"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    delta: float = 1e-5
    local_epsilon: float = 1.0
    local_sensitivity: float | None = None
    sample_rate: float = 0.002

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise ValueError(f"dp mode must be one of {', '.join(DP_MODES)}, not {self.mode!r}")
        if self.clipping_norm <= 0:
            raise ValueError("dp clipping_norm must be positive")
        if self.noise_multiplier < 0:
            raise ValueError("dp noise_multiplier must be non-negative")
        if not 0 < self.delta < 1:
            raise ValueError("dp delta must be in (0, 1)")
        if self.mode == "local" and self.local_epsilon <= 0:
            raise ValueError("local dp needs a positive local_epsilon")
        if not 0 < self.sample_rate <= 1:
            raise ValueError("dp sample_rate must be in (0, 1]")
        if self.mode == "record" and self.noise_multiplier <= 0:
            raise ValueError("record-level dp (DP-SGD) needs a positive noise_multiplier")
        if self.local_sensitivity is None:
            object.__setattr__(self, "local_sensitivity", self.clipping_norm)
        elif self.local_sensitivity < 0:
            raise ValueError("dp local_sensitivity must be non-negative")

    @property
    def sensitivity(self) -> float:
        """The local-DP sensitivity (the clipping norm unless set)."""
        return self.clipping_norm if self.local_sensitivity is None else self.local_sensitivity

    @property
    def central(self) -> bool:
        """Whether the server adds the noise (a central mode)."""
        return self.mode.startswith("central")

    @property
    def dp_sgd(self) -> DpSgd | None:
        """What a node's training needs in ``record`` mode (None in the other modes)."""
        if self.mode != "record":
            return None
        return DpSgd(self.noise_multiplier, self.clipping_norm, self.sample_rate)


@dataclass(frozen=True)
class DpSgd:
    """Record-level DP-SGD of a node's local training (Abadi et al., 2016).

    Each step draws a Poisson sample of the rows (each row independently with probability
    ``sample_rate``; ``ceil(1 / sample_rate)`` steps make an epoch), clips every sampled row's
    gradient to L2 norm ``clipping_norm``, sums them, adds Gaussian noise of standard deviation
    ``noise_multiplier * clipping_norm`` and divides by the expected sample size. The samples and
    the noise come from the operating system's randomness, never from the run's seed, so that
    nobody who knows the run config can replay the noise.
    """

    noise_multiplier: float
    clipping_norm: float
    sample_rate: float

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(1.0 / self.sample_rate))

    def epsilon(self, steps: int, delta: float) -> float:
        """ε after ``steps`` steps, at ``delta``."""
        return dp_sgd_epsilon(self.noise_multiplier, self.sample_rate, steps, delta)


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ parameters (Flower's ``SecAggPlusWorkflow``).

    ``num_shares`` / ``reconstruction_threshold``: a float in (0, 1] is a fraction of the sampled
    nodes / of the shares, an int is an absolute count. Updates are clipped to
    ``[-clipping_range, clipping_range]`` and quantised to ``quantization_range`` levels; each
    node's weight (its number of examples) is capped at ``max_weight``. Each node scales its
    weights by ``examples / max_weight`` before quantising, so ``max_weight`` should be at least
    the largest node's number of examples (else the weights are capped and the average is no
    longer weighted by examples: nodes above it count as equals) and not far above it (the
    quantisation step is fixed, so small scaled weights lose precision). Set it to the largest
    node's rows when they are known.
    """

    num_shares: float | int = 1.0
    reconstruction_threshold: float | int = 0.67
    max_weight: float = 10_000.0
    clipping_range: float = 8.0
    quantization_range: int = 2**22

    def __post_init__(self) -> None:
        if self.max_weight <= 0 or self.clipping_range <= 0 or self.quantization_range <= 0:
            raise ValueError("secagg max_weight, clipping_range and quantization_range must be positive")


TASK_OPTIONS_PREFIX = "task-options."
"""Run-config keys under this prefix are the task factory's keyword arguments."""


def _flat_options(options: Mapping[str, Scalar]) -> dict[str, Scalar]:
    return {f"{TASK_OPTIONS_PREFIX}{key.replace('_', '-')}": value for key, value in options.items()}


@dataclass(frozen=True)
class RunSettings:
    """Everything a federated run needs to know, as one flat Flower run config.

    ``to_run_config()`` gives the ``[tool.flwr.app.config]`` table the runner writes; the apps
    rebuild the settings with ``from_run_config(context.run_config)``. Task options are the
    ``task-options.*`` keys (``[tool.flwr.app.config.task-options]``), passed to the task factory
    as keyword arguments.
    """

    task: str = "foedus.federation.flower.task:demo_autoencoder"
    task_options: Mapping[str, Scalar] = field(default_factory=dict)
    rounds: int = 3
    strategy: str = "fedavg"
    local_epochs: int = 1
    proximal_mu: float = 0.0
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    evaluate: bool = True
    server_lr: float = 0.1
    round_timeout: float = 600.0
    result_dir: str = ""
    dp: DpConfig | None = None
    secagg: SecAggConfig | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")
        if self.local_epochs < 1:
            raise ValueError("local_epochs must be at least 1")
        if self.proximal_mu < 0:
            raise ValueError("proximal_mu must be non-negative")
        if self.strategy == "fedprox" and self.proximal_mu == 0:
            raise ValueError("fedprox needs a positive proximal_mu")
        if not 0 < self.fraction_train <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise ValueError("fraction_train must be in (0, 1] and fraction_evaluate in [0, 1]")
        if self.min_nodes < 1:
            raise ValueError("min_nodes must be at least 1")
        if self.secagg is not None:
            if self.dp is not None and self.dp.mode != "record":
                raise ValueError(
                    "SecAgg+ runs on Flower's legacy workflow API; combining it with DP other than "
                    "record-level DP-SGD (which happens inside each node's training) is not supported"
                )
            if self.strategy == "fedadam":
                raise ValueError("SecAgg+ runs support fedavg and fedprox only")
            if self.min_nodes < 2:
                raise ValueError("SecAgg+ needs at least 2 nodes")
        if ":" not in self.task:
            raise ValueError(f"task must be an import string 'package.module:attribute', not {self.task!r}")

    def to_run_config(self) -> dict[str, Scalar]:
        """The flat run config (TOML scalars) both apps read back."""
        config: dict[str, Scalar] = {
            "task": self.task,
            "num-rounds": self.rounds,
            "strategy": self.strategy,
            "local-epochs": self.local_epochs,
            "proximal-mu": float(self.proximal_mu),
            "fraction-train": float(self.fraction_train),
            "fraction-evaluate": float(self.fraction_evaluate),
            "min-nodes": self.min_nodes,
            "evaluate": self.evaluate,
            "server-lr": float(self.server_lr),
            "round-timeout": float(self.round_timeout),
            "result-dir": self.result_dir,
            "dp-mode": self.dp.mode if self.dp else "none",
            "secagg": self.secagg is not None,
        }
        if self.dp is not None:
            config.update(
                {
                    "dp-noise-multiplier": float(self.dp.noise_multiplier),
                    "dp-clipping-norm": float(self.dp.clipping_norm),
                    "dp-delta": float(self.dp.delta),
                    "dp-local-epsilon": float(self.dp.local_epsilon),
                    "dp-local-sensitivity": float(self.dp.sensitivity),
                    "dp-sample-rate": float(self.dp.sample_rate),
                }
            )
        if self.secagg is not None:
            config.update(
                {
                    "secagg-num-shares": self.secagg.num_shares,
                    "secagg-reconstruction-threshold": self.secagg.reconstruction_threshold,
                    "secagg-max-weight": float(self.secagg.max_weight),
                    "secagg-clipping-range": float(self.secagg.clipping_range),
                    "secagg-quantization-range": int(self.secagg.quantization_range),
                }
            )
        config.update(_flat_options(self.task_options))
        return config

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Rebuild the settings from a Flower ``Context.run_config``."""

        def get(key: str, default: Any) -> Any:
            return run_config.get(key, default)

        defaults = {f.name: getattr(_DEFAULT_SETTINGS, f.name) for f in fields(cls)}
        dp: DpConfig | None = None
        mode = str(get("dp-mode", "none"))
        if mode != "none":
            dp = DpConfig(
                mode=mode,  # type: ignore[arg-type]  # validated in DpConfig
                noise_multiplier=float(get("dp-noise-multiplier", 1.0)),
                clipping_norm=float(get("dp-clipping-norm", 1.0)),
                delta=float(get("dp-delta", 1e-5)),
                local_epsilon=float(get("dp-local-epsilon", 1.0)),
                local_sensitivity=float(get("dp-local-sensitivity", get("dp-clipping-norm", 1.0))),
                sample_rate=float(get("dp-sample-rate", DpConfig.sample_rate)),
            )
        secagg: SecAggConfig | None = None
        if bool(get("secagg", False)):
            secagg = SecAggConfig(
                num_shares=get("secagg-num-shares", 1.0),
                reconstruction_threshold=get("secagg-reconstruction-threshold", 0.67),
                max_weight=float(get("secagg-max-weight", SecAggConfig.max_weight)),
                clipping_range=float(get("secagg-clipping-range", 8.0)),
                quantization_range=int(get("secagg-quantization-range", 2**22)),
            )
        options = {
            key[len(TASK_OPTIONS_PREFIX) :].replace("-", "_"): value
            for key, value in run_config.items()
            if key.startswith(TASK_OPTIONS_PREFIX)
        }
        return cls(
            task=str(get("task", defaults["task"])),
            task_options=options,
            rounds=int(get("num-rounds", defaults["rounds"])),
            strategy=str(get("strategy", defaults["strategy"])),
            local_epochs=int(get("local-epochs", defaults["local_epochs"])),
            proximal_mu=float(get("proximal-mu", defaults["proximal_mu"])),
            fraction_train=float(get("fraction-train", defaults["fraction_train"])),
            fraction_evaluate=float(get("fraction-evaluate", defaults["fraction_evaluate"])),
            min_nodes=int(get("min-nodes", defaults["min_nodes"])),
            evaluate=bool(get("evaluate", defaults["evaluate"])),
            server_lr=float(get("server-lr", defaults["server_lr"])),
            round_timeout=float(get("round-timeout", defaults["round_timeout"])),
            result_dir=str(get("result-dir", "")),
            dp=dp,
            secagg=secagg,
        )

    def load_task(self) -> FederatedTask:
        """Load the task with its options."""
        return load_task(self.task, self.task_options)


_DEFAULT_SETTINGS = RunSettings()


@dataclass
class RoundRecord:
    """What happened in one round, as the ServerApp saw it.

    ``train_nodes`` / ``eval_nodes``: nodes that replied without error; ``*_examples``: the rows
    they trained / evaluated on, summed over the nodes (their ``num-examples``); ``failures``:
    error replies (their reasons in ``errors``).
    ``bytes_sent`` / ``bytes_received``: payload bytes of the records (weights, configs,
    metrics) in the messages of the round, server to nodes and back, as Flower counts them
    (``count_bytes``); transport overhead (TLS, HTTP, serialisation) is not included.
    """

    round: int
    train_loss: float | None = None
    eval_loss: float | None = None
    train_nodes: int = 0
    eval_nodes: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    failures: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    elapsed_s: float = 0.0
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Rebuild a record from its ``summary.json`` form (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def gaussian_dp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Exact ε of ``releases`` composed Gaussian mechanisms with ``noise_multiplier``, at ``delta``.

    Composing ``T`` Gaussian mechanisms with noise multiplier ``s`` is ``μ``-Gaussian DP with
    ``μ = √T / s`` (Dong, Roth & Su, 2019), whose (ε, δ) curve is
    ``δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)``; this inverts it by bisection. No amplification by
    sampling is assumed (every round samples all nodes). ``inf`` without noise.
    """
    if releases < 1:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    mu = math.sqrt(releases) / noise_multiplier

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    def delta_of(eps: float) -> float:
        tail = phi(-eps / mu - mu / 2.0)
        second = math.exp(min(eps + math.log(tail), 700.0)) if tail > 0 else 0.0
        return phi(-eps / mu + mu / 2.0) - second

    if delta_of(0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while delta_of(high) > delta:
        high *= 2.0
        if high > 1e6:
            return math.inf
    for _ in range(200):
        mid = (low + high) / 2.0
        if delta_of(mid) > delta:
            low = mid
        else:
            high = mid
    return high


_RDP_ORDERS = tuple(range(2, 257))


def _log_add(a: float, b: float) -> float:
    high, low = max(a, b), min(a, b)
    if low == -math.inf:
        return high
    return high + math.log1p(math.exp(low - high))


def _sampled_gaussian_rdp(noise_multiplier: float, sample_rate: float, order: int) -> float:
    """Rényi DP of order ``order`` (an integer ≥ 2) of one Poisson-subsampled Gaussian mechanism.

    ``log A(a) / (a - 1)`` with ``A(a) = Σ_k C(a, k) (1 - q)^(a - k) q^k exp((k² - k) / (2 s²))``
    for order ``a``, sample rate ``q`` and noise multiplier ``s`` (Mironov, Talwar & Zhang, 2019,
    section 3.3), summed in log space.
    """
    if sample_rate >= 1.0:
        return order / (2.0 * noise_multiplier**2)
    log_a = -math.inf
    log_q, log_1q = math.log(sample_rate), math.log1p(-sample_rate)
    for k in range(order + 1):
        log_binom = math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
        term = log_binom + k * log_q + (order - k) * log_1q + (k * k - k) / (2.0 * noise_multiplier**2)
        log_a = _log_add(log_a, term)
    return log_a / (order - 1)


def dp_sgd_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` DP-SGD steps (Poisson sampling with ``sample_rate``, Gaussian noise with
    ``noise_multiplier``) at ``delta``, by the Rényi DP accountant.

    The steps' RDP adds up; the conversion to (ε, δ) is Balle et al.'s (2020) ``ε = RDP(a) +
    log((a - 1) / a) - (log δ + log a) / (a - 1)``, minimised over the integer orders 2 to 256
    (the accountant Opacus and TensorFlow Privacy use, on integer orders only, so a little
    looser). ``inf`` without noise, 0 for no step.
    """
    if steps < 1:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    if not 0 < sample_rate <= 1 or not 0 < delta < 1:
        raise ValueError("sample_rate must be in (0, 1] and delta in (0, 1)")
    best = math.inf
    for order in _RDP_ORDERS:
        rdp = steps * _sampled_gaussian_rdp(noise_multiplier, sample_rate, order)
        eps = rdp + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)
        best = min(best, eps)
    return max(0.0, best)
