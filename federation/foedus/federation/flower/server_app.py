"""Flower ServerApps: federated training of a :class:`~.task.FederatedTask`, recorded round by round.

* :data:`app` — Flower's Message API (``flwr.serverapp.ServerApp`` with a
  ``flwr.serverapp.strategy`` strategy): FedAvg, FedProx or FedAdam, optionally wrapped in
  central differential privacy with fixed clipping (server- or client-side).
* :data:`secagg_app` — the legacy workflow API (``DefaultWorkflow`` + ``SecAggPlusWorkflow`` over a
  ``LegacyContext`` with a legacy FedAvg/FedProx strategy), for runs with SecAgg+.

Both read :class:`~.task.RunSettings` from the run config, take the initial weights from the
task, and, when the run config names a ``result-dir``, keep ``summary.json`` there up to date
after every round (per-round train/eval loss, nodes, failures, bytes of the records exchanged,
privacy parameters) and write the final global weights to ``final_weights.npz``. The runner
reads both back (:class:`~.runner.RunResult`).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from foedus.federation.flower.client_app import UNIT_WEIGHT_KEY, from_record, limit_threads, to_record
from foedus.federation.flower.task import NamedArrays, RoundRecord, RunSettings, gaussian_dp_epsilon

__all__ = [
    "FINAL_WEIGHTS_FILE",
    "SUMMARY_FILE",
    "CountingGrid",
    "RecordingStrategy",
    "RunRecorder",
    "app",
    "build_strategy",
    "secagg_app",
]

SUMMARY_FILE = "summary.json"
FINAL_WEIGHTS_FILE = "final_weights.npz"
_HIDDEN_METRICS = {UNIT_WEIGHT_KEY, "num-examples"}


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8  # ints and floats travel as 64-bit values


def _record_bytes(record: Any) -> int:
    """Payload bytes of one record: array data, or config/metric keys and values.

    Flower's ``count_bytes`` does the same but fails on empty lists (SecAgg+ sends some).
    """
    if isinstance(record, ArrayRecord):
        return sum(len(key) + len(array.data) for key, array in record.items())
    return sum(len(str(key)) + _value_bytes(value) for key, value in dict(record).items())


def _payload_bytes(message: Message) -> int:
    if not message.has_content():
        return 0
    return sum(_record_bytes(record) for record in message.content.values())


class CountingGrid(Grid):
    """A ``Grid`` that forwards everything, counting payload bytes, replying nodes and errors per round.

    A message's round is its ``group_id`` when that is a number (the legacy workflows set it),
    else :attr:`round` (set by :class:`RecordingStrategy` when a round starts).
    """

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.round = 0
        self.sent: dict[int, int] = defaultdict(int)
        self.received: dict[int, int] = defaultdict(int)
        self.repliers: dict[tuple[int, str], set[int]] = defaultdict(set)
        self.errors: dict[int, list[str]] = defaultdict(list)

    def _round_of(self, message: Message) -> int:
        group = message.metadata.group_id
        return int(group) if isinstance(group, str) and group.isdigit() else self.round

    def _count_out(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        for message in out:
            self.sent[self._round_of(message)] += _payload_bytes(message)
        return out

    def _count_in(self, replies: Iterable[Message]) -> list[Message]:
        got = list(replies)
        for reply in got:
            rnd = self._round_of(reply)
            self.received[rnd] += _payload_bytes(reply)
            if reply.has_error():
                reason = str(reply.error.reason or f"error code {reply.error.code}").strip()
                if len(reason) > 2000:  # a stack trace: keep its end, where the exception is
                    reason = "..." + reason[-2000:]
                self.errors[rnd].append(f"node {reply.metadata.src_node_id}: {reason}")
            else:
                kind = str(reply.metadata.message_type).split(".")[0]
                self.repliers[(rnd, kind)].add(int(reply.metadata.src_node_id))
        return got

    def set_run(self, run: Any) -> None:
        """Forwarded."""
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        """Forwarded."""
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        """Forwarded."""
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        """Forwarded."""
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        """Forwarded."""
        return cast(Iterable[Any], self.inner.get_nodes())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Forwarded, counting the messages' payload."""
        return self.inner.push_messages(self._count_out(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Forwarded, counting the replies' payload."""
        return self._count_in(self.inner.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Forwarded, counting both directions."""
        return self._count_in(self.inner.send_and_receive(self._count_out(messages), timeout=timeout))

    def nodes(self, rnd: int, kind: str) -> int:
        """How many distinct nodes replied with content to ``kind`` (train/evaluate) messages."""
        return len(self.repliers.get((rnd, kind), set()))


def _examples(replies: list[Message]) -> int:
    """Sum of the ``num-examples`` metric over the replies without error."""
    total = 0
    for reply in replies:
        if reply.has_error():
            continue
        for record in reply.content.metric_records.values():
            value = record.get("num-examples")
            if isinstance(value, int | float) and not isinstance(value, bool):
                total += int(value)
    return total


def _clean(metrics: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in dict(metrics or {}).items():
        if key in _HIDDEN_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[str(key)] = float(value)
    return out


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


class RunRecorder:
    """Collects :class:`RoundRecord` s and keeps ``summary.json`` / ``final_weights.npz`` current."""

    def __init__(self, settings: RunSettings, run_id: int | None = None) -> None:
        self.settings = settings
        self.run_id = run_id
        self.rounds: list[RoundRecord] = []
        self.started = time.time()
        self._round_started = self.started
        self.status = "running"
        self.error: str | None = None
        self.directory = Path(settings.result_dir) if settings.result_dir else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._flush()

    def begin_round(self) -> None:
        """Mark the start of a round (for its elapsed time)."""
        self._round_started = time.time()

    def privacy_for(self, rnd: int) -> dict[str, Any]:
        """The privacy parameters of the run and what they amount to after ``rnd`` rounds."""
        dp = self.settings.dp
        if dp is None:
            return {}
        record: dict[str, Any] = {
            "mode": dp.mode,
            "clipping_norm": dp.clipping_norm,
            "delta": dp.delta,
            "rounds": rnd,
        }
        if dp.central:
            record["noise_multiplier"] = dp.noise_multiplier
            record["epsilon"] = gaussian_dp_epsilon(dp.noise_multiplier, rnd, dp.delta)
            record["accounting"] = (
                "node-level (add/remove one organisation), Gaussian mechanism composed over the "
                "rounds as mu-GDP, exact conversion to (epsilon, delta); no amplification by sampling"
            )
        elif dp.mode == "record":
            sgd = dp.dp_sgd
            assert sgd is not None
            steps = rnd * self.settings.local_epochs * sgd.steps_per_epoch
            record["noise_multiplier"] = dp.noise_multiplier
            record["sample_rate"] = dp.sample_rate
            record["steps"] = steps
            record["epsilon"] = sgd.epsilon(steps, dp.delta)
            record["accounting"] = (
                "record-level (add/remove one row of one node's data), DP-SGD at every node: "
                "Poisson-subsampled Gaussian mechanism over every local step of every round, "
                "Renyi DP accountant (integer orders 2-256)"
            )
        else:
            record["local_epsilon_per_round"] = dp.local_epsilon
            record["local_delta_per_round"] = dp.delta
            record["sensitivity"] = dp.sensitivity
            record["epsilon"] = dp.local_epsilon * rnd
            record["delta_total"] = min(1.0, dp.delta * rnd)
            record["accounting"] = "local DP per round (LocalDpMod), basic composition over the rounds"
        if not math.isfinite(float(record["epsilon"])):
            record["epsilon"] = None
        return record

    def end_round(self, record: RoundRecord) -> None:
        """Add a finished round and rewrite the summary."""
        record.elapsed_s = time.time() - self._round_started
        record.privacy = self.privacy_for(record.round)
        self.rounds.append(record)
        self._flush()

    def finish(self, arrays: NamedArrays | None) -> None:
        """Store the final global weights and mark the run completed."""
        if arrays is not None and self.directory is not None:
            tmp = self.directory / f".{FINAL_WEIGHTS_FILE}"
            with tmp.open("wb") as out:
                np.savez(out, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, self.directory / FINAL_WEIGHTS_FILE)
        self.status = "completed"
        self._flush(final=arrays is not None)

    def fail(self, exc: BaseException) -> None:
        """Mark the run failed with the exception (``stopped`` when it was told to exit)."""
        self.status = "stopped" if isinstance(exc, SystemExit | KeyboardInterrupt) else "failed"
        self.error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self._flush()

    def summary(self, final: bool = False) -> dict[str, Any]:
        """The summary as written to ``summary.json``."""
        return {
            "status": self.status,
            "error": self.error,
            "run_id": self.run_id,
            "settings": self.settings.to_run_config(),
            "started": self.started,
            "elapsed_s": time.time() - self.started,
            "rounds": [asdict(r) for r in self.rounds],
            "privacy": self.rounds[-1].privacy if self.rounds else self.privacy_for(0),
            "final_weights": FINAL_WEIGHTS_FILE if final else None,
        }

    def _flush(self, final: bool = False) -> None:
        if self.directory is not None:
            _write_json(self.directory / SUMMARY_FILE, self.summary(final))


class RecordingStrategy(Strategy):
    """Wraps a strategy (DP wrappers included) and records every round into a :class:`RunRecorder`."""

    def __init__(self, inner: Strategy, recorder: RunRecorder, grid: CountingGrid) -> None:
        self.inner = inner
        self.recorder = recorder
        self.grid = grid
        self._current: RoundRecord | None = None

    def summary(self) -> None:
        """Forwarded."""
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Start the round's record, then forward."""
        self.recorder.begin_round()
        self.grid.round = server_round
        self._current = RoundRecord(round=server_round)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Forward, then note the nodes, failures and train metrics."""
        got = list(replies)
        arrays, metrics = self.inner.aggregate_train(server_round, got)
        record = self._current or RoundRecord(round=server_round)
        record.train_nodes = sum(1 for m in got if not m.has_error())
        record.train_examples = _examples(got)
        record.failures += sum(1 for m in got if m.has_error())
        record.train_metrics = _clean(metrics)
        record.train_loss = record.train_metrics.get("train-loss")
        self._current = record
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Forwarded."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Forward, then close the round's record."""
        got = list(replies)
        metrics = self.inner.aggregate_evaluate(server_round, got)
        record = self._current or RoundRecord(round=server_round)
        record.eval_nodes = sum(1 for m in got if not m.has_error())
        record.eval_examples = _examples(got)
        record.failures += sum(1 for m in got if m.has_error())
        record.eval_metrics = _clean(metrics)
        record.eval_loss = record.eval_metrics.get("eval-loss")
        record.bytes_sent = self.grid.sent.get(server_round, 0)
        record.bytes_received = self.grid.received.get(server_round, 0)
        record.errors = list(self.grid.errors.get(server_round, []))
        self.recorder.end_round(record)
        self._current = None
        return metrics


def build_strategy(settings: RunSettings) -> Strategy:
    """The Message-API strategy the settings ask for, DP wrapper included."""
    central_dp = settings.dp is not None and settings.dp.central
    common: dict[str, Any] = {
        "fraction_train": settings.fraction_train,
        "fraction_evaluate": settings.fraction_evaluate if settings.evaluate else 0.0,
        "min_train_nodes": settings.min_nodes,
        "min_evaluate_nodes": settings.min_nodes if settings.evaluate else 0,
        "min_available_nodes": settings.min_nodes,
        "weighted_by_key": UNIT_WEIGHT_KEY if central_dp else "num-examples",
    }
    strategy: Strategy
    if settings.strategy == "fedprox":
        strategy = FedProx(proximal_mu=settings.proximal_mu, **common)
    elif settings.strategy == "fedadam":
        strategy = FedAdam(eta=settings.server_lr, **common)
    else:
        strategy = FedAvg(**common)
    dp = settings.dp
    if dp is not None and dp.mode == "central-server":
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, settings.min_nodes
        )
    elif dp is not None and dp.mode == "central-client":
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, dp.noise_multiplier, dp.clipping_norm, settings.min_nodes
        )
    return strategy


# ---------------------------------------------------------------------------------------------
# Message API ServerApp
# ---------------------------------------------------------------------------------------------

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` rounds of the configured strategy and record them."""
    limit_threads()
    settings = RunSettings.from_run_config(context.run_config)
    recorder = RunRecorder(settings, run_id=context.run_id)
    try:
        initial = settings.load_task().initial_arrays()
        counting = CountingGrid(grid)
        strategy = RecordingStrategy(build_strategy(settings), recorder, counting)
        train_config = ConfigRecord({"local-epochs": settings.local_epochs})
        result = strategy.start(
            grid=counting,
            initial_arrays=to_record(initial),
            num_rounds=settings.rounds,
            timeout=settings.round_timeout,
            train_config=train_config,
            evaluate_config=ConfigRecord(),
        )
        final = from_record(result.arrays) if result.arrays is not None and len(result.arrays) else None
        recorder.finish(final)
    except BaseException as exc:
        recorder.fail(exc)
        raise


# ---------------------------------------------------------------------------------------------
# Legacy-workflow ServerApp with SecAgg+
# ---------------------------------------------------------------------------------------------

secagg_app = ServerApp()


def _weighted_average(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Legacy metrics aggregation: numeric metrics averaged, weighted by examples."""
    total = sum(n for n, _ in results)
    if total <= 0:
        return {}
    keys = {
        k for _, m in results for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    averaged = {key: sum(n * float(m.get(key, 0.0)) for n, m in results) / total for key in sorted(keys)}
    averaged["num-examples"] = total
    return averaged


def _last(history: dict[str, list[tuple[int, Any]]], rnd: int) -> dict[str, Any]:
    return {key: value for key, points in history.items() for r, value in points if r == rnd}


@secagg_app.main()
def secagg_main(grid: Grid, context: Context) -> None:
    """Run ``num-rounds`` rounds of FedAvg/FedProx whose fit rounds use SecAgg+, and record them."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.strategy import FedProx as LegacyFedProx
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.default_workflows import default_evaluate_workflow

    limit_threads()
    settings = RunSettings.from_run_config(context.run_config)
    secagg = settings.secagg
    if secagg is None:  # the runner only points here with secagg on
        raise ValueError("the SecAgg+ ServerApp needs 'secagg = true' in the run config")
    recorder = RunRecorder(settings, run_id=context.run_id)
    try:
        initial = settings.load_task().initial_arrays()
        names = list(initial)

        def fit_config(server_round: int) -> dict[str, Any]:
            recorder.begin_round()
            return {"local-epochs": settings.local_epochs, "server-round": server_round}

        common: dict[str, Any] = {
            "fraction_fit": settings.fraction_train,
            "fraction_evaluate": settings.fraction_evaluate if settings.evaluate else 0.0,
            "min_fit_clients": settings.min_nodes,
            "min_evaluate_clients": settings.min_nodes if settings.evaluate else 0,
            "min_available_clients": settings.min_nodes,
            "initial_parameters": ndarrays_to_parameters(list(initial.values())),
            "on_fit_config_fn": fit_config,
            "fit_metrics_aggregation_fn": _weighted_average,
            "evaluate_metrics_aggregation_fn": _weighted_average,
        }
        strategy = (
            LegacyFedProx(proximal_mu=settings.proximal_mu, **common)
            if settings.strategy == "fedprox"
            else LegacyFedAvg(**common)
        )
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=settings.rounds, round_timeout=settings.round_timeout),
            strategy=strategy,
        )
        counting = CountingGrid(grid)

        def evaluate_and_record(workflow_grid: Grid, workflow_context: Context) -> None:
            if settings.evaluate:
                default_evaluate_workflow(workflow_grid, workflow_context)
            rnd = cast(int, legacy.state.config_records[MAIN_CONFIGS_RECORD]["current_round"])
            raw_train = _last(legacy.history.metrics_distributed_fit, rnd)
            raw_eval = _last(legacy.history.metrics_distributed, rnd)
            train_metrics, eval_metrics = _clean(raw_train), _clean(raw_eval)
            recorder.end_round(
                RoundRecord(
                    round=rnd,
                    train_loss=train_metrics.get("train-loss"),
                    eval_loss=eval_metrics.get("eval-loss"),
                    train_nodes=counting.nodes(rnd, "train"),
                    eval_nodes=counting.nodes(rnd, "evaluate"),
                    train_examples=int(raw_train.get("num-examples", 0)),
                    eval_examples=int(raw_eval.get("num-examples", 0)),
                    failures=len(counting.errors.get(rnd, [])),
                    bytes_sent=counting.sent.get(rnd, 0),
                    bytes_received=counting.received.get(rnd, 0),
                    train_metrics=train_metrics,
                    eval_metrics=eval_metrics,
                    errors=list(counting.errors.get(rnd, [])),
                )
            )

        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(
                num_shares=secagg.num_shares,
                reconstruction_threshold=secagg.reconstruction_threshold,
                max_weight=secagg.max_weight,
                clipping_range=secagg.clipping_range,
                quantization_range=secagg.quantization_range,
                timeout=settings.round_timeout,
            ),
            evaluate_workflow=evaluate_and_record,
        )
        workflow(counting, legacy)
        final_record = legacy.state.array_records.get(MAIN_PARAMS_RECORD)
        final: NamedArrays | None = None
        if final_record is not None:
            from flwr.compat.common.recorddict_compat import arrayrecord_to_parameters

            values = parameters_to_ndarrays(arrayrecord_to_parameters(final_record, keep_input=True))
            final = dict(zip(names, values, strict=True))
        recorder.finish(final)
    except BaseException as exc:
        recorder.fail(exc)
        raise
