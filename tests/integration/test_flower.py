"""Flower's deployment engine for real: a SuperLink and SuperNodes as processes on loopback, TLS and
SuperNode authentication on, each node training on its own local .npz.

One federation (SuperLink, three registered SuperNodes, one SuperNode whose key is not registered)
serves runs submitted side by side: two rounds of FedAvg, one round with central DP (server-side
clipping, little noise), one round with SecAgg+, and one that waits for a fourth node until its
timeout stops it.

Flower's SuperNodes and ServerApps poll every 3 s, every ClientApp is a fresh process and a
SuperNode handles one message at a time, so each step of a round costs several seconds even for a
tiny model, and side-by-side runs mostly save the ServerApps' start-up and polling. The module takes
about 2 to 2.5 minutes on a shared 2-core machine, and up to 5 on a slow one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("torch")

from foedus.federation.flower import (
    DpConfig,
    LocalFederation,
    NodeSpec,
    RunResult,
    RunSettings,
    SecAggConfig,
    demo_autoencoder,
    dp_sgd_epsilon,
)
from foedus.federation.flower.runner import REJECTED_EXIT_CODE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FEATURES = 6
TASK = "foedus.federation.flower.task:demo_autoencoder"
ROWS = {"org1": 240, "org2": 300, "org3": 360, "rogue": 100}


def write_node_data(directory: Path, name: str, rows: int, seed: int) -> Path:
    """Correlated ops metrics sharing one structure, each organisation with its own offsets and
    noise level, and a test split with a few labelled spikes."""
    shared = np.random.default_rng(1234).normal(size=(2, FEATURES))
    rng = np.random.default_rng(seed)
    offset = rng.normal(scale=0.3, size=FEATURES)

    def sample(n: int) -> np.ndarray:
        noise = rng.uniform(0.02, 0.1) * rng.normal(size=(n, FEATURES))
        return (rng.normal(size=(n, 2)) @ shared + offset + noise).astype(np.float32)

    test = sample(40)
    labels = np.zeros(40, dtype=np.int64)
    test[::10] += 4.0
    labels[::10] = 1
    path = directory / f"{name}.npz"
    np.savez(path, train=sample(rows), test=test, test_label=labels)
    return path


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    work = tmp_path_factory.mktemp("flower")
    data = work / "data"
    data.mkdir()
    nodes = [
        NodeSpec(name, write_node_data(data, name, rows, seed), registered=name != "rogue")
        for seed, (name, rows) in enumerate(ROWS.items())
    ]
    fed = LocalFederation(work / "federation", nodes)
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


@pytest.fixture(scope="module")
def runs(federation: LocalFederation) -> dict[str, RunResult]:
    """The runs, submitted at once; each gets the 3 registered nodes per round."""
    options = {"features": FEATURES, "hidden": 2, "lr": 0.02, "batch_size": 32}
    settings = {
        "fedavg": RunSettings(
            task=TASK, task_options=options, rounds=2, local_epochs=3, min_nodes=3, round_timeout=240
        ),
        "dp": RunSettings(
            task=TASK,
            task_options=options,
            rounds=1,
            min_nodes=3,
            evaluate=False,
            dp=DpConfig(mode="central-server", noise_multiplier=0.05, clipping_norm=5.0),
            round_timeout=240,
        ),
        "secagg": RunSettings(
            task=TASK,
            task_options=options,
            rounds=1,
            min_nodes=3,
            evaluate=False,
            secagg=SecAggConfig(num_shares=1.0, reconstruction_threshold=0.67),
            round_timeout=240,
        ),
    }
    dp_sgd = DpConfig(mode="record", noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.1)
    for name, secure in (("dp-sgd", None), ("dp-sgd-secagg", SecAggConfig(max_weight=1000.0))):
        settings[name] = RunSettings(
            task=TASK,
            task_options=options,
            rounds=2,
            min_nodes=3,
            evaluate=False,
            dp=dp_sgd,
            secagg=secure,
            round_timeout=240,
        )
    # waits for a fourth node that never comes: stopped at its timeout
    settings["starved"] = RunSettings(task=TASK, task_options=options, rounds=1, min_nodes=4)
    # Six runs share the machine's cores: on a slow or busy machine the last ones need several
    # minutes, so their limit is a safety net well above the usual 2 to 4.
    timeouts = {"starved": 30.0}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(settings)) as pool:
        futures = {
            name: pool.submit(federation.run, s, timeout=timeouts.get(name, 600.0))
            for name, s in settings.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    print(f"\n{len(results)} concurrent runs took {time.monotonic() - started:.1f}s: ", end="")
    print({name: f"{r.elapsed:.1f}s {r.status}" for name, r in results.items()})
    return results


def weights_bytes() -> int:
    arrays = demo_autoencoder(features=FEATURES, hidden=2).initial_arrays()
    return sum(a.nbytes for a in arrays.values())


def test_two_rounds_of_fedavg(federation: LocalFederation, runs: dict[str, RunResult]) -> None:
    result = runs["fedavg"]
    assert result.ok, (result.status, result.details, result.log_path)
    assert [r.round for r in result.rounds] == [1, 2]
    registered_rows = ROWS["org1"] + ROWS["org2"] + ROWS["org3"]
    for record in result.rounds:
        assert record.train_nodes == record.eval_nodes == 3
        assert record.failures == 0 and not record.errors
        # every node trained on its own file: the rows add up to the registered nodes' data
        assert record.train_examples == registered_rows
        assert record.eval_examples == 3 * 40
        assert record.train_loss is not None and math.isfinite(record.train_loss)
        assert record.eval_loss is not None and math.isfinite(record.eval_loss)
        assert 0.0 <= record.eval_metrics["eval-auroc"] <= 1.0
        # the global weights go out with the train and the evaluate messages, and come back once
        assert record.bytes_sent >= 2 * 3 * weights_bytes()
        assert record.bytes_received >= 3 * weights_bytes()
        assert record.elapsed_s > 0
    first, second = result.rounds
    assert second.eval_loss is not None and first.eval_loss is not None
    assert second.eval_loss < first.eval_loss
    assert result.bytes == sum(r.bytes_sent + r.bytes_received for r in result.rounds)
    assert result.network["total"] > result.bytes  # the wire carries more than the payload

    final = result.final_weights()
    initial = demo_autoencoder(features=FEATURES, hidden=2).initial_arrays()
    assert list(final) == list(initial)
    assert all(final[k].shape == initial[k].shape for k in initial)
    assert any(not np.allclose(final[k], initial[k]) for k in initial)
    assert result.summary["status"] == "completed"
    assert result.summary["settings"]["num-rounds"] == 2


def test_central_dp_with_server_side_clipping(runs: dict[str, RunResult]) -> None:
    result = runs["dp"]
    assert result.ok, (result.status, result.details, result.log_path)
    (record,) = result.rounds
    assert record.train_nodes == 3 and record.eval_nodes == 0
    privacy = result.privacy
    assert privacy["mode"] == "central-server"
    assert privacy["noise_multiplier"] == 0.05 and privacy["clipping_norm"] == 5.0
    assert privacy["epsilon"] is not None and privacy["epsilon"] > 0  # a tiny noise buys little privacy
    assert result.log_path is not None
    log = result.log_path.read_text(errors="replace")
    assert "central DP noise" in log and "clipped" in log


@pytest.mark.parametrize("name", ["dp-sgd", "dp-sgd-secagg"])
def test_record_level_dp_sgd_at_the_supernodes(runs: dict[str, RunResult], name: str) -> None:
    """DP-SGD inside each node's training, alone and under SecAgg+; each SuperNode counts its
    steps across the rounds in the run's context it keeps, and the run records the ε spent."""
    result = runs[name]
    assert result.ok, (result.status, result.details, result.log_path)
    assert [r.train_nodes for r in result.rounds] == [3, 3]
    steps = [10, 20]  # one local epoch of ceil(1 / 0.1) steps per round
    assert [r.train_metrics["dp-sgd-steps"] for r in result.rounds] == steps
    assert [r.privacy["steps"] for r in result.rounds] == steps
    assert result.privacy["mode"] == "record" and result.privacy["sample_rate"] == 0.1
    assert result.privacy["epsilon"] == pytest.approx(dp_sgd_epsilon(1.0, 0.1, 20, 1e-5))
    final = result.final_weights()
    assert all(np.all(np.isfinite(v)) for v in final.values())


def test_secagg_plus(runs: dict[str, RunResult]) -> None:
    result = runs["secagg"]
    assert result.ok, (result.status, result.details, result.log_path)
    (record,) = result.rounds
    assert record.train_nodes == 3
    assert record.train_examples == ROWS["org1"] + ROWS["org2"] + ROWS["org3"]
    assert record.train_loss is not None and math.isfinite(record.train_loss)
    final = result.final_weights()
    assert all(np.all(np.isfinite(v)) for v in final.values())
    assert result.log_path is not None
    assert "Secure aggregation completed" in result.log_path.read_text(errors="replace")


def test_a_run_past_its_timeout_is_stopped(runs: dict[str, RunResult]) -> None:
    result = runs["starved"]
    assert result.status == "timeout" and not result.ok
    assert "stopped with flwr stop" in result.details
    assert result.rounds == [] and result.final_weights_path is None
    assert 30 <= result.elapsed < 90


def test_unregistered_supernode_is_rejected(federation: LocalFederation, runs: dict[str, RunResult]) -> None:
    """After the runs (which had to wait for the three registered nodes), the fourth is long gone."""
    rogue = federation.supernodes["rogue"]
    assert rogue.wait(90) is not None, "the SuperNode with an unregistered key should give up"
    assert rogue.returncode != 0
    log = rogue.log_text()
    assert f"Exit Code: {REJECTED_EXIT_CODE}" in log
    assert "Failed to activate SuperNode" in log
    assert federation.superlink is not None
    assert "No SuperNode found with the given public key" in federation.superlink.log_text()
    assert federation.wait_connected(90) == []
    listed = federation.superlink.nodes()
    assert len(listed) == 3  # only the registered keys exist on the SuperLink
    assert {int(n["node-id"]) for n in listed} == set(federation.superlink.registered.values())


def test_stop_leaves_no_process_behind(federation: LocalFederation, runs: dict[str, RunResult]) -> None:
    assert federation.superlink is not None
    processes = [federation.superlink, *federation.supernodes.values()]
    for process in processes:
        process.remember_descendants()
    assert any(process.leftovers() for process in processes)  # the SuperExecs Flower started
    federation.stop()
    assert all(not p.alive() for p in processes)
    assert [p.leftovers() for p in processes] == [[] for _ in processes]
