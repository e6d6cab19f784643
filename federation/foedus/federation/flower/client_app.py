"""Flower ClientApps: train and evaluate a :class:`~.task.FederatedTask` on the node's local data.

A SuperNode runs these on behalf of one organisation. Its data never leaves the machine: the
ClientApp reads the path from the SuperNode's node config (``flower-supernode --node-config
"data-path='/data/org1.npz'"``, optionally ``data-loader='npz'``), trains the task loaded from the
run config's ``task`` import string, and replies with weights and metrics only.

* :data:`app` — Flower's Message API (``flwr.clientapp.ClientApp``): ``train`` and ``evaluate``
  handlers. Differential privacy mods are attached to the ``train`` handler only and switched on
  by the run config: ``fixedclipping_mod`` for central DP with client-side clipping, ``LocalDpMod``
  for local DP.
* :data:`secagg_app` — the legacy ``client_fn`` ClientApp wrapped in ``secaggplus_mod``, for runs
  with SecAgg+ (Flower provides SecAgg+ only in its legacy workflow API).
"""

from __future__ import annotations

import os
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from foedus.federation.flower.task import (
    DataError,
    LocalData,
    Metrics,
    NamedArrays,
    RunSettings,
    load_local_data,
)

__all__ = [
    "DATA_LOADER_KEY",
    "DATA_PATH_KEY",
    "LOCAL_STATE_KEY",
    "UNIT_WEIGHT_KEY",
    "app",
    "from_record",
    "limit_threads",
    "node_data",
    "secagg_app",
    "to_record",
]

DATA_PATH_KEY = "data-path"
"""Node-config key: the organisation's local data (a file or a directory)."""
DATA_LOADER_KEY = "data-loader"
"""Node-config key (optional): a registered loader name or ``module:function``."""
LOCAL_STATE_KEY = "foedus-local-state"
"""Key in the node's ``Context.state`` under which a task keeps its state between rounds; it stays on
the node (the SuperNode keeps a run's context) and is never sent."""
UNIT_WEIGHT_KEY = "unit-weight"
"""Metric every node sets to 1 under central DP, so FedAvg averages updates with equal weights."""


def limit_threads() -> None:
    """Keep torch to ``FOEDUS_TORCH_THREADS`` threads (default 1): nodes share their host's CPUs."""
    try:
        import torch
    except ImportError:  # a task without torch
        return
    torch.set_num_threads(max(1, int(os.environ.get("FOEDUS_TORCH_THREADS", "1"))))


def to_record(arrays: NamedArrays) -> ArrayRecord:
    """Named arrays -> Flower ``ArrayRecord`` (names and order kept)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_record(record: ArrayRecord) -> NamedArrays:
    """Flower ``ArrayRecord`` -> named arrays."""
    return {name: array.numpy() for name, array in record.items()}


def node_data(context: Context) -> LocalData:
    """Load this node's local data as its node config describes."""
    node_config = context.node_config
    path = node_config.get(DATA_PATH_KEY)
    if not path:
        raise DataError(
            f"this SuperNode has no '{DATA_PATH_KEY}' in its node config; start it with "
            f"--node-config \"{DATA_PATH_KEY}='/path/to/data.npz'\""
        )
    loader = node_config.get(DATA_LOADER_KEY)
    return load_local_data(str(path), str(loader) if loader else None)


def _local_state(context: Context) -> dict[str, np.ndarray]:
    """What the task kept on this node in earlier rounds of the run (DP-SGD's step count, and the
    optimiser's state when the task carries it)."""
    record = context.state.array_records.get(LOCAL_STATE_KEY)
    return dict(from_record(record)) if record is not None else {}


def _checked(metrics: Metrics, loss_key: str) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {key!r} must be an int or a float, not {type(value).__name__}")
        out[key] = value
    examples = out.get("num-examples")
    if not isinstance(examples, int) or examples < 1:
        raise ValueError("a task's metrics must hold 'num-examples', a positive int")
    if loss_key not in out:
        raise ValueError(f"a task's metrics must hold {loss_key!r}")
    return out


def _metric_record(metrics: dict[str, float | int]) -> MetricRecord:
    values: dict[str, MetricRecordValues] = dict(metrics.items())
    return MetricRecord(values)


# ---------------------------------------------------------------------------------------------
# Message API ClientApp
# ---------------------------------------------------------------------------------------------

app = ClientApp()


def _privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Apply the DP client mod the run config asks for (train messages only)."""
    dp = RunSettings.from_run_config(context.run_config).dp
    if dp is None or dp.mode in ("central-server", "record"):  # record: DP-SGD inside the training
        return call_next(msg, context)
    if dp.mode == "central-client":
        return fixedclipping_mod(msg, context, call_next)
    local = LocalDpMod(dp.clipping_norm, dp.sensitivity, dp.local_epsilon, dp.delta)
    return local(msg, context, call_next)


@app.train(mods=[_privacy_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the task from the received global weights on local data; reply weights + metrics."""
    limit_threads()
    settings = RunSettings.from_run_config(context.run_config)
    task = settings.load_task()
    data = node_data(context)
    config = msg.content.config_records["config"]
    epochs = int(cast(int, config.get("local-epochs", settings.local_epochs)))
    proximal_mu = float(cast(float, config.get("proximal-mu", 0.0)))
    local_state = _local_state(context)
    arrays, metrics = task.train(
        from_record(msg.content.array_records["arrays"]),
        data,
        epochs=epochs,
        proximal_mu=proximal_mu,
        server_round=int(cast(int, config.get("server-round", 0))),
        local_state=local_state,
        dp_sgd=settings.dp.dp_sgd if settings.dp is not None else None,
    )
    context.state[LOCAL_STATE_KEY] = to_record(local_state)
    reply_metrics = _checked(metrics, "train-loss")
    if settings.dp is not None and settings.dp.central:
        reply_metrics[UNIT_WEIGHT_KEY] = 1
    content = RecordDict({"arrays": to_record(arrays), "metrics": _metric_record(reply_metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global weights on local data; reply metrics."""
    limit_threads()
    settings = RunSettings.from_run_config(context.run_config)
    task = settings.load_task()
    metrics = _checked(
        task.evaluate(from_record(msg.content.array_records["arrays"]), node_data(context)), "eval-loss"
    )
    if settings.dp is not None and settings.dp.central:
        metrics[UNIT_WEIGHT_KEY] = 1
    return Message(content=RecordDict({"metrics": _metric_record(metrics)}), reply_to=msg)


# ---------------------------------------------------------------------------------------------
# Legacy ClientApp for SecAgg+
# ---------------------------------------------------------------------------------------------


class _TaskClient(NumPyClient):
    """``NumPyClient`` adapter of a task, for the legacy workflow SecAgg+ needs."""

    def __init__(self, context: Context) -> None:
        self.settings = RunSettings.from_run_config(context.run_config)
        self.task = self.settings.load_task()
        self.names = list(self.task.initial_arrays())
        self.context = context

    def _named(self, parameters: list[Any]) -> NamedArrays:
        if len(parameters) != len(self.names):
            raise ValueError(f"received {len(parameters)} arrays, the task has {len(self.names)}")
        return dict(zip(self.names, parameters, strict=True))

    def get_parameters(self, config: dict[str, Any]) -> list[Any]:
        """The task's initial weights."""
        return list(self.task.initial_arrays().values())

    def fit(self, parameters: list[Any], config: dict[str, Any]) -> tuple[list[Any], int, dict[str, Any]]:
        """Local training; the weight is the number of examples (at most SecAgg+'s ``max_weight``)."""
        limit_threads()
        epochs = int(config.get("local-epochs", self.settings.local_epochs))
        # the legacy FedProx strategy sends "proximal_mu"
        proximal_mu = float(config.get("proximal_mu", config.get("proximal-mu", 0.0)))
        local_state = _local_state(self.context)
        arrays, metrics = self.task.train(
            self._named(parameters),
            node_data(self.context),
            epochs=epochs,
            proximal_mu=proximal_mu,
            server_round=int(config.get("server-round", 0)),
            local_state=local_state,
            dp_sgd=self.settings.dp.dp_sgd if self.settings.dp is not None else None,
        )
        self.context.state[LOCAL_STATE_KEY] = to_record(local_state)
        checked = _checked(metrics, "train-loss")
        weight = int(checked["num-examples"])
        if self.settings.secagg is not None:  # SecAgg+ quantises weight/max_weight: cap, never overflow
            weight = min(weight, int(self.settings.secagg.max_weight))
        return list(arrays.values()), weight, dict(checked)

    def evaluate(self, parameters: list[Any], config: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
        """Evaluation of the global weights on local data."""
        limit_threads()
        checked = _checked(self.task.evaluate(self._named(parameters), node_data(self.context)), "eval-loss")
        return float(checked["eval-loss"]), int(checked["num-examples"]), dict(checked)


def _client_fn(context: Context) -> Any:
    return _TaskClient(context).to_client()


secagg_app = ClientApp(client_fn=_client_fn, mods=[secaggplus_mod])
