"""The federated-task plumbing without processes: the torch adapter, local data, run settings, key material."""

from __future__ import annotations

import math
import ssl
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from foedus.federation.flower.certs import generate_node_keys, generate_tls  # noqa: E402
from foedus.federation.flower.task import (  # noqa: E402
    DataError,
    DpConfig,
    DpSgd,
    FederatedTask,
    LocalData,
    RunSettings,
    SecAggConfig,
    TorchTask,
    demo_autoencoder,
    dp_sgd_epsilon,
    gaussian_dp_epsilon,
    get_weights,
    load_local_data,
    load_task,
    register_loader,
    regression_pairs,
    set_weights,
)


def low_rank(rows: int, features: int = 6, seed: int = 0) -> np.ndarray:
    """Correlated metrics: a rank-2 signal plus a little noise (an autoencoder can learn it)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(rows, 2)) @ rng.normal(size=(2, features))
    return (signal + 0.05 * rng.normal(size=(rows, features))).astype(np.float32)


def linear_task(lr: float, rows: int) -> TorchTask:
    """A linear autoencoder trained by plain full-batch SGD (one step per epoch)."""
    return TorchTask(
        lambda: torch.nn.Linear(4, 4),
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
        batch_size=rows,
        seed=3,
    )


# --- torch adapter --------------------------------------------------------------------------


def test_weights_round_trip_between_models() -> None:
    torch.manual_seed(1)
    source = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    torch.manual_seed(2)
    target = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    weights = get_weights(source)
    assert "1.num_batches_tracked" not in weights  # integer buffers stay local
    assert list(weights) == [k for k, v in source.state_dict().items() if v.is_floating_point()]
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    set_weights(target, dict(reversed(list(weights.items()))))  # order does not matter
    for name, value in get_weights(target).items():
        np.testing.assert_array_equal(value, weights[name])
    weights["0.weight"][0, 0] += 1.0  # a copy, not a view of the model
    assert source.state_dict()["0.weight"][0, 0] != weights["0.weight"][0, 0]


def test_set_weights_rejects_foreign_weights() -> None:
    model = torch.nn.Linear(3, 2)
    good = get_weights(model)
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        set_weights(model, {"weight": good["weight"]})
    with pytest.raises(ValueError, match="shape"):
        set_weights(model, {"weight": np.zeros((2, 4), np.float32), "bias": good["bias"]})


def test_task_is_deterministic_and_a_federated_task() -> None:
    a, b = demo_autoencoder(features=6, hidden=2), demo_autoencoder(features=6, hidden=2)
    assert isinstance(a, FederatedTask)
    for (name, left), (other, right) in zip(
        a.initial_arrays().items(), b.initial_arrays().items(), strict=True
    ):
        assert name == other
        np.testing.assert_array_equal(left, right)
    assert demo_autoencoder(features=6, hidden=2, seed=1).initial_arrays()["0.weight"].tolist() != (
        a.initial_arrays()["0.weight"].tolist()
    )


def test_local_training_reduces_the_loss() -> None:
    task = demo_autoencoder(features=6, hidden=2, lr=0.02, batch_size=16)
    rows = low_rank(320)
    data = LocalData(train=rows[:256], test=rows[256:])
    start = task.initial_arrays()
    before = task.evaluate(start, data)
    trained, metrics = task.train(start, data, epochs=15)
    after = task.evaluate(trained, data)
    assert metrics["num-examples"] == 256
    assert before["num-examples"] == after["num-examples"] == 64
    assert metrics["train-loss"] < metrics["train-loss-initial"]
    assert after["eval-loss"] < 0.5 * before["eval-loss"]
    assert list(trained) == list(start)
    assert all(trained[k].shape == start[k].shape for k in start)


def test_each_round_draws_its_own_order_and_the_same_round_the_same() -> None:
    task = demo_autoencoder(features=6, hidden=2, lr=0.02, batch_size=16)
    data = LocalData(train=low_rank(128))
    start = task.initial_arrays()

    def trained(server_round: int) -> np.ndarray:
        return task.train(start, data, epochs=1, server_round=server_round)[0]["0.weight"]

    np.testing.assert_array_equal(trained(2), trained(2))
    assert not np.array_equal(trained(1), trained(2))
    assert not np.array_equal(trained(0), trained(1))
    with pytest.raises(ValueError, match="server_round"):
        task.train(start, data, epochs=1, server_round=-1)


def test_the_optimiser_state_is_carried_between_rounds_only_when_asked() -> None:
    rows = low_rank(64)
    data = LocalData(train=rows)
    steps = 64 // 16

    def task(carry: bool) -> TorchTask:
        return TorchTask(lambda: torch.nn.Linear(6, 6), lr=0.01, batch_size=16, carry_optimizer=carry)

    carrying, state = task(True), {}
    first, _ = carrying.train(carrying.initial_arrays(), data, epochs=1, server_round=1, local_state=state)
    assert float(state["optimizer/0/step"]) == steps and state["optimizer/0/exp_avg"].shape == (6, 6)
    # as a SuperNode keeps it between messages: through a Flower ArrayRecord
    pytest.importorskip("flwr")
    from foedus.federation.flower.client_app import from_record, to_record

    kept = from_record(to_record(state))
    carried, _ = carrying.train(first, data, epochs=1, server_round=2, local_state=state)
    assert float(state["optimizer/0/step"]) == 2 * steps  # Adam went on counting
    again, _ = carrying.train(first, data, epochs=1, server_round=2, local_state=kept)
    np.testing.assert_allclose(again["weight"], carried["weight"], rtol=1e-6)
    fresh, fresh_state = task(False), {}
    afresh, _ = fresh.train(first, data, epochs=1, server_round=2, local_state=fresh_state)
    assert fresh_state == {}
    assert not np.allclose(carried["weight"], afresh["weight"])  # bias correction and moments differ
    other = TorchTask(
        lambda: torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Linear(3, 6)),
        lr=0.01,
        batch_size=16,
        carry_optimizer=True,
    )
    with pytest.raises(ValueError, match="does not fit"):
        other.train(other.initial_arrays(), data, epochs=1, local_state=dict(state))


# --- record-level DP-SGD --------------------------------------------------------------------


def _clipped_sums(model: torch.nn.Module, x: torch.Tensor, clip: float):  # type: ignore[no-untyped-def]
    from foedus.federation.flower.task import _linear_clipped_sum, _vmap_clipped_sum

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b) ** 2

    return _linear_clipped_sum(model, loss, x, x, clip), _vmap_clipped_sum(model, loss, x, x, clip)


def test_dp_sgd_clips_each_rows_gradient_without_one_gradient_per_row() -> None:
    from foedus.federation.anomaly import federated_task

    torch.manual_seed(0)
    x = torch.randn(40, 10, 6)
    net = federated_task(features=6, window=10, hidden=16, code=4).build()
    for clip in (0.01, 1e6):  # every row clipped / none
        (fast, fast_losses), (slow, slow_losses) = _clipped_sums(net, x, clip)
        torch.testing.assert_close(fast_losses, slow_losses)
        for name in slow:
            torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-7)
    # one row: the clipped gradient's norm is the clipping norm
    (one, _), _ = _clipped_sums(net, x[:1], 0.01)
    assert math.sqrt(sum(float((g**2).sum()) for g in one.values())) == pytest.approx(0.01, rel=1e-4)
    # a frozen layer: only the trainable ones count, alike on both paths
    frozen = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh(), torch.nn.Linear(3, 6))
    frozen[0].requires_grad_(False)
    (fast, _), (slow, _) = _clipped_sums(frozen, x[:, 0, :], 0.05)
    assert set(fast) == set(slow) == {"2.weight", "2.bias"}
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-7)
    # a layer that runs twice in a forward pass: the per-row path is taken
    shared = torch.nn.Linear(6, 6)
    twice = torch.nn.Sequential(shared, torch.nn.Tanh(), shared)
    (fast, _), (slow, _) = _clipped_sums(twice, x[:, 0, :], 0.05)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-7)
    # a layer that sees (rows, steps, features) inputs: the per-row path is taken
    seq = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh(), torch.nn.Linear(3, 6))
    (fast, _), (slow, _) = _clipped_sums(seq, x, 0.05)
    for name in slow:
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-7)


def test_dp_sgd_training_is_noisy_counts_its_steps_and_still_learns() -> None:
    task = demo_autoencoder(features=6, hidden=2, lr=0.02, batch_size=16)
    data = LocalData(train=low_rank(2000))
    dp = DpSgd(noise_multiplier=0.5, clipping_norm=1.0, sample_rate=0.05)
    start = task.initial_arrays()
    state: dict[str, np.ndarray] = {}
    first, metrics = task.train(start, data, epochs=2, server_round=1, local_state=state, dp_sgd=dp)
    assert metrics["dp-sgd-steps"] == 2 * dp.steps_per_epoch == 40
    second, metrics = task.train(first, data, epochs=3, server_round=2, local_state=state, dp_sgd=dp)
    assert metrics["dp-sgd-steps"] == 100 and int(state["dp-sgd-steps"]) == 100
    assert task.evaluate(second, data)["eval-loss"] < 0.8 * task.evaluate(start, data)["eval-loss"]
    # the noise does not come from the run's seed: the same call twice gives two models
    again, _ = task.train(start, data, epochs=2, server_round=1, dp_sgd=dp)
    assert not np.allclose(again["0.weight"], first["0.weight"])


def test_dp_sgd_with_a_frozen_layer_and_the_proximal_term() -> None:
    """Frozen parameters get no gradient and no noise; the proximal term pulls each trainable
    parameter towards its own global value."""

    def factory() -> torch.nn.Module:
        net = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Tanh(), torch.nn.Linear(3, 6))
        net[0].requires_grad_(False)
        return net

    task = TorchTask(factory, lr=0.02, batch_size=16)
    start = task.initial_arrays()
    dp = DpSgd(noise_multiplier=0.5, clipping_norm=1.0, sample_rate=0.1)
    trained, metrics = task.train(start, LocalData(train=low_rank(200)), epochs=1, proximal_mu=0.5, dp_sgd=dp)
    assert metrics["dp-sgd-steps"] == 10
    np.testing.assert_array_equal(trained["0.weight"], start["0.weight"])
    assert not np.allclose(trained["2.weight"], start["2.weight"])


def test_dp_sgd_epsilon_is_the_renyi_accountant() -> None:
    from foedus.federation.flower.task import _sampled_gaussian_rdp

    q, steps, delta = 256 / 60_000, 14_063, 1e-5  # MNIST, batch 256, 60 epochs, sigma 1.1
    # with the classic RDP -> (epsilon, delta) conversion: TensorFlow Privacy's published 3.01
    classic = min(steps * _sampled_gaussian_rdp(1.1, q, a) - math.log(delta) / (a - 1) for a in range(2, 257))
    assert classic == pytest.approx(3.01, abs=0.01)
    eps = dp_sgd_epsilon(1.1, q, steps, delta)
    assert 2.4 < eps < classic  # Balle et al.'s conversion is tighter
    # without subsampling one step is the Gaussian mechanism: RDP a / (2 sigma^2)
    assert _sampled_gaussian_rdp(2.0, 1.0, 5) == pytest.approx(5 / 8)
    assert dp_sgd_epsilon(1.0, 0.01, 2000, delta) > dp_sgd_epsilon(1.0, 0.01, 500, delta)
    assert dp_sgd_epsilon(2.0, 0.01, 500, delta) < dp_sgd_epsilon(1.0, 0.01, 500, delta)
    assert dp_sgd_epsilon(1.0, 0.01, 0, delta) == 0.0 and dp_sgd_epsilon(0.0, 0.01, 5, delta) == math.inf
    with pytest.raises(ValueError, match="sample_rate"):
        dp_sgd_epsilon(1.0, 0.0, 5, delta)


def test_fedprox_term_pulls_the_update_back_exactly() -> None:
    """Full-batch SGD: step 1 is the same with or without mu (w = w_global there); step 2 differs by
    exactly -lr * mu * (w1 - w_global), the gradient of mu/2 * ||w - w_global||^2."""
    rows, lr, mu = 32, 0.05, 3.0
    data = LocalData(train=low_rank(rows, features=4))
    task = linear_task(lr, rows)
    start = task.initial_arrays()
    one_step, _ = task.train(start, data, epochs=1)
    plain, plain_metrics = task.train(start, data, epochs=2)
    prox, prox_metrics = task.train(start, data, epochs=2, proximal_mu=mu)
    assert "proximal-term" not in plain_metrics
    assert prox_metrics["proximal-term"] > 0
    for name in start:
        expected = plain[name] - lr * mu * (one_step[name] - start[name])
        np.testing.assert_allclose(prox[name], expected, rtol=1e-4, atol=1e-6)


def test_fedprox_keeps_the_local_model_closer_to_the_global_one() -> None:
    task = demo_autoencoder(features=6, hidden=2, lr=0.05, batch_size=16)
    data = LocalData(train=low_rank(128))
    start = task.initial_arrays()

    def drift(mu: float) -> float:
        trained, _ = task.train(start, data, epochs=5, proximal_mu=mu)
        return math.sqrt(sum(float(((trained[k] - start[k]) ** 2).sum()) for k in start))

    free, held, pinned = drift(0.0), drift(1.0), drift(100.0)
    assert free > held > pinned
    with pytest.raises(ValueError, match="proximal_mu"):
        task.train(start, data, epochs=1, proximal_mu=-1.0)


def test_regression_pairs_and_auroc() -> None:
    matrix = low_rank(100, features=5)
    inputs, targets = regression_pairs([4])(matrix)
    assert inputs.shape == (100, 4) and targets.shape == (100, 1)
    np.testing.assert_array_equal(targets[:, 0], matrix[:, 4])
    with pytest.raises(DataError, match="out of range"):
        regression_pairs([7])(matrix)
    task = TorchTask(lambda: torch.nn.Linear(4, 1), pairs=regression_pairs([-1]), lr=0.05)
    test = matrix[:40].copy()
    labels = np.zeros(40, dtype=np.int64)
    test[:4, 4] += 25.0  # four rows whose target breaks the learned relation
    labels[:4] = 1
    trained, _ = task.train(task.initial_arrays(), LocalData(train=matrix), epochs=30)
    metrics = task.evaluate(trained, LocalData(train=matrix, test=test, test_label=labels))
    assert metrics["eval-auroc"] == pytest.approx(1.0)


# --- local data -----------------------------------------------------------------------------


def test_npz_loader_reads_train_test_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "org.npz"
    np.savez(path, train=np.ones((10, 3)), test=np.zeros((4, 3)), test_label=np.array([0, 1, 0, 1]))
    data = load_local_data(path)
    assert data.train.dtype == np.float32 and data.train.shape == (10, 3)
    assert data.test is not None and data.test.shape == (4, 3)
    assert data.test_label is not None and data.test_label.tolist() == [0, 1, 0, 1]
    assert data.num_features == 3 and data.source == str(path)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"other": np.ones((3, 2))}, "no array 'train' \\(it holds other\\)"),
        ({"train": np.ones(5)}, "2-D"),
        ({"train": np.ones((0, 3))}, "empty"),
        ({"train": np.array([[1.0, np.nan]])}, "NaN"),
        ({"train": np.array([["a", "b"]])}, "numeric"),
        ({"train": np.ones((3, 2)), "test": np.ones((3, 3))}, "3 columns but train has 2"),
        ({"train": np.ones((3, 2)), "test_label": np.ones(3)}, "'test_label' but no 'test'"),
        (
            {"train": np.ones((3, 2)), "test": np.ones((3, 2)), "test_label": np.ones(2)},
            "one label per test row",
        ),
    ],
)
def test_npz_loader_rejects_bad_contents(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_local_data(path)


def test_loader_errors_on_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_local_data(tmp_path / "absent.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_local_data(garbage)
    text = tmp_path / "data.txt"
    text.write_text("1,2,3\n")
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_local_data(text)
    with pytest.raises(DataError, match="without an agent history"):
        load_local_data(tmp_path)
    with pytest.raises(DataError, match="unknown data loader 'parquet'"):
        load_local_data(garbage, "parquet")


def test_agent_history_directory_and_custom_loaders(tmp_path: Path) -> None:
    from foedus.client_sdk.agent.history import HISTORY_METRICS, LocalHistory

    history = LocalHistory(tmp_path / "agent" / "history.db", retention_s=10**10)
    for i in range(5):
        history.append(1000 * (5 - i), "v1", {"requests": float(i), "error_rate": 0.5}, {})
    history.close()
    data = load_local_data(tmp_path / "agent")
    assert data.feature_names == HISTORY_METRICS
    assert data.train.shape == (5, len(HISTORY_METRICS))
    assert data.train[:, 0].tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]  # oldest interval first
    assert data.train[:, 2].tolist() == [0.0] * 5  # a metric the rows lack reads as 0

    register_loader(
        "constant", lambda path: LocalData(train=np.full((2, 2), 7, np.float32), source=str(path))
    )
    assert load_local_data(tmp_path / "anything", "constant").train.tolist() == [[7, 7], [7, 7]]
    imported = load_local_data(tmp_path / "x.npz", "test_flower_task:_loader_for_tests")
    assert imported.source == "imported"
    with pytest.raises(DataError, match="returned str"):
        load_local_data(tmp_path / "x.npz", "test_flower_task:_bad_loader_for_tests")


def _loader_for_tests(path: Path) -> LocalData:
    return LocalData(train=np.zeros((1, 1), np.float32), source="imported")


def _bad_loader_for_tests(path: Path) -> str:
    return "not data"


# --- task references and run settings -------------------------------------------------------


def test_load_task_by_import_string() -> None:
    task = load_task("foedus.federation.flower.task:demo_autoencoder", {"features": 4, "hidden": 2})
    assert isinstance(task, TorchTask)
    assert task.initial_arrays()["0.weight"].shape == (2, 4)
    with pytest.raises(ValueError, match="import string"):
        load_task("foedus.federation.flower.task")
    with pytest.raises(ValueError, match="cannot import"):
        load_task("foedus.no_such_module:task")
    with pytest.raises(ValueError, match="has no attribute"):
        load_task("foedus.federation.flower.task:no_such_task")
    with pytest.raises(ValueError, match="not a FederatedTask"):
        load_task("foedus.federation.flower.task:get_weights", {"model": torch.nn.Linear(1, 1)})


def test_run_settings_round_trip_through_the_run_config() -> None:
    cases = [
        RunSettings(task_options={"features": 6, "batch_size": 8}, rounds=2, min_nodes=3),
        RunSettings(strategy="fedprox", proximal_mu=0.5, dp=DpConfig(mode="local", local_epsilon=2.0)),
        RunSettings(strategy="fedadam", server_lr=0.05, dp=DpConfig(noise_multiplier=0.5, clipping_norm=2.0)),
        RunSettings(secagg=SecAggConfig(num_shares=3, reconstruction_threshold=2), evaluate=False),
        RunSettings(
            secagg=SecAggConfig(), dp=DpConfig(mode="record", sample_rate=0.05, noise_multiplier=0.7)
        ),
    ]
    for settings in cases:
        config = settings.to_run_config()
        assert all(isinstance(v, bool | int | float | str) for v in config.values())
        assert RunSettings.from_run_config(config) == settings
    assert cases[0].to_run_config()["task-options.batch-size"] == 8
    assert cases[0].load_task().initial_arrays()["0.weight"].shape == (3, 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "fedsgd"}, "strategy must be one of"),
        ({"strategy": "fedprox"}, "positive proximal_mu"),
        ({"rounds": 0}, "rounds"),
        ({"fraction_train": 0.0}, "fraction_train"),
        ({"secagg": SecAggConfig(), "dp": DpConfig()}, "not supported"),
        ({"secagg": SecAggConfig(), "strategy": "fedadam"}, "fedavg and fedprox"),
        ({"task": "demo_autoencoder"}, "import string"),
    ],
)
def test_run_settings_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunSettings(**kwargs)  # type: ignore[arg-type]


def test_dp_config_validation_and_epsilon() -> None:
    with pytest.raises(ValueError, match="dp mode"):
        DpConfig(mode="global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clipping_norm"):
        DpConfig(clipping_norm=0.0)
    assert DpConfig(clipping_norm=2.5).sensitivity == 2.5
    # One Gaussian release with noise multiplier 1 at delta 1e-5: the analytic Gaussian mechanism's ~4.38.
    assert gaussian_dp_epsilon(1.0, 1, 1e-5) == pytest.approx(4.377, abs=0.01)
    # mu-GDP composition: 4 releases at sigma = 2 cost as much as 1 release at sigma = 1.
    assert gaussian_dp_epsilon(2.0, 4, 1e-5) == pytest.approx(gaussian_dp_epsilon(1.0, 1, 1e-5), rel=1e-6)
    assert gaussian_dp_epsilon(1.0, 10, 1e-5) > gaussian_dp_epsilon(1.0, 2, 1e-5)
    assert gaussian_dp_epsilon(4.0, 2, 1e-5) < gaussian_dp_epsilon(1.0, 2, 1e-5)
    assert gaussian_dp_epsilon(0.0, 1, 1e-5) == math.inf
    with pytest.raises(ValueError, match="positive noise_multiplier"):
        DpConfig(mode="record", noise_multiplier=0.0)
    with pytest.raises(ValueError, match="sample_rate"):
        DpConfig(mode="record", sample_rate=1.5)
    record = DpConfig(mode="record", noise_multiplier=1.2, clipping_norm=0.5, sample_rate=0.01)
    assert not record.central and record.dp_sgd == DpSgd(1.2, 0.5, 0.01)
    assert record.dp_sgd.steps_per_epoch == 100 and DpConfig().dp_sgd is None


# --- key material and the app directory -----------------------------------------------------


def test_development_key_material_is_what_flower_reads(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    tls = generate_tls(tmp_path / "tls")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    client = ssl.create_default_context(cafile=str(tls.ca_cert))
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert (tls.server_key.stat().st_mode & 0o777) == 0o600
    pair = generate_node_keys(tmp_path / "keys", "org1")
    private = load_ssh_private_key(pair.private_key.read_bytes(), None)
    public = load_ssh_public_key(pair.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert pair.public_key_line.startswith("ecdsa-sha2-nistp384 ")


def test_app_directory_is_a_valid_flower_app(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    from flwr.cli.config_utils import load_and_validate

    from foedus.federation.flower.runner import _node_config_arg, write_app_dir

    settings = RunSettings(task_options={"features": 6}, secagg=SecAggConfig())
    app_dir = write_app_dir(tmp_path / "app", settings)
    config, _ = load_and_validate(app_dir / "pyproject.toml")
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"].endswith("client_app:secagg_app")
    from flwr.common.config import flatten_dict

    assert RunSettings.from_run_config(flatten_dict(config["tool"]["flwr"]["app"]["config"])) == settings

    assert (
        _node_config_arg({"data-path": "/d/org 1.npz", "rows": 3}, tmp_path)
        == "data-path='/d/org 1.npz' rows=3"
    )
    odd = _node_config_arg({"data-path": "/d/o'brien.npz"}, tmp_path / "n")
    assert odd.endswith("node-config.toml")
    from flwr.common.config import parse_config_args

    assert parse_config_args([odd]) == {"data-path": "/d/o'brien.npz"}


# --- the ServerApp and ClientApp in one process ---------------------------------------------
#
# A Grid that hands each message (a deep copy, as if serialised) straight to the ClientApp with the
# node's own Context: the apps' logic without SuperLink, SuperNodes or polling.


def in_process_grid(client: object, contexts: dict[int, object]) -> object:
    import copy
    import uuid

    from flwr.app import Error, Message
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run

    class _Grid(Grid):  # type: ignore[misc]
        def __init__(self) -> None:
            self.replies: dict[str, Message] = {}

        def set_run(self, run: Run) -> None:
            pass

        @property
        def run(self) -> Run:
            return Run.create_empty(7)

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self) -> list[int]:
            return list(contexts)

        def push_messages(self, messages):  # type: ignore[no-untyped-def]
            ids = []
            for message in messages:
                message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                message.metadata.__dict__["_src_node_id"] = 1
                try:
                    reply = client(copy.deepcopy(message), contexts[message.metadata.dst_node_id])  # type: ignore[operator]
                except Exception as exc:  # what the SuperNode does with a ClientApp exception
                    reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
                self.replies[message.metadata.message_id] = copy.deepcopy(reply)
                ids.append(message.metadata.message_id)
            return ids

        def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
            return [self.replies.pop(i) for i in message_ids if i in self.replies]

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            return self.pull_messages(self.push_messages(messages))

    return _Grid()


NODE_ROWS = (60, 80, 100)


@pytest.fixture
def run_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run the ServerApp against three in-process nodes; returns (summary, final weights, data paths)."""
    pytest.importorskip("flwr")
    import json

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from foedus.federation.flower import client_app, server_app

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 11)
    rows = low_rank(sum(NODE_ROWS))
    paths: list[Path] = []
    start = 0
    for i, count in enumerate(NODE_ROWS):
        paths.append(tmp_path / f"node{i}.npz")
        np.savez(paths[-1], train=rows[start : start + count], test=rows[start : start + 20])
        start += count

    def run(settings: RunSettings, *, data_paths: list[Path] | None = None):  # type: ignore[no-untyped-def]
        result_dir = tmp_path / f"result-{uuid_hex()}"
        settings = RunSettings.from_run_config({**settings.to_run_config(), "result-dir": str(result_dir)})
        config = settings.to_run_config()
        contexts: dict[int, object] = {
            100 + i: Context(
                run_id=7,
                node_id=100 + i,
                node_config={"data-path": str(p)},
                state=RecordDict(),
                run_config=config,
            )
            for i, p in enumerate(data_paths or paths)
        }
        secure = settings.secagg is not None
        grid = in_process_grid(client_app.secagg_app if secure else client_app.app, contexts)
        server = server_app.secagg_app if secure else server_app.app
        server(grid, Context(run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config=config))
        summary = json.loads((result_dir / "summary.json").read_text())
        with np.load(result_dir / "final_weights.npz") as archive:
            final = {k: archive[k] for k in archive.files}
        return summary, final

    run.paths = paths  # type: ignore[attr-defined]
    return run


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


OPTIONS = {"features": 6, "hidden": 2, "lr": 0.02, "batch_size": 16}


def test_fedavg_round_is_the_weighted_average_of_local_training(run_in_process) -> None:  # type: ignore[no-untyped-def]
    summary, final = run_in_process(RunSettings(task_options=OPTIONS, rounds=1, min_nodes=3, local_epochs=2))
    assert summary["status"] == "completed"
    (record,) = summary["rounds"]
    assert record["train_nodes"] == record["eval_nodes"] == 3
    assert record["train_examples"] == sum(NODE_ROWS) and record["eval_examples"] == 60
    task = demo_autoencoder(**OPTIONS)
    start = task.initial_arrays()
    updates = [
        task.train(start, load_local_data(p), epochs=2, server_round=1)[0] for p in run_in_process.paths
    ]
    for name in start:
        expected = sum(n * u[name] for n, u in zip(NODE_ROWS, updates, strict=True)) / sum(NODE_ROWS)
        np.testing.assert_allclose(final[name], expected, rtol=1e-5, atol=1e-6)
    weights = sum(a.nbytes + len(k) for k, a in start.items())
    assert record["bytes_sent"] >= 2 * 3 * weights and record["bytes_received"] >= 3 * weights


def test_rounds_improve_and_a_failing_node_is_recorded(run_in_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = [*run_in_process.paths[:2], tmp_path / "missing.npz"]
    summary, _ = run_in_process(
        RunSettings(task_options=OPTIONS, rounds=3, min_nodes=3, local_epochs=3), data_paths=paths
    )
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["train_nodes"] == 2 and r["failures"] == 2 for r in rounds)  # train and evaluate
    assert any("no such file" in e for e in rounds[0]["errors"])
    assert rounds[2]["eval_loss"] < rounds[0]["eval_loss"]


def test_fedprox_sends_mu_and_nodes_report_the_proximal_term(run_in_process) -> None:  # type: ignore[no-untyped-def]
    summary, _ = run_in_process(
        RunSettings(task_options=OPTIONS, rounds=1, min_nodes=3, strategy="fedprox", proximal_mu=0.5)
    )
    assert summary["rounds"][0]["train_metrics"]["proximal-term"] > 0


def test_secagg_plus_aggregate_matches_fedavg(run_in_process) -> None:  # type: ignore[no-untyped-def]
    settings = RunSettings(task_options=OPTIONS, rounds=1, min_nodes=3, local_epochs=2, evaluate=False)
    _, plain = run_in_process(settings)
    summary, secure = run_in_process(RunSettings(**{**settings.__dict__, "secagg": SecAggConfig()}))
    (record,) = summary["rounds"]
    assert record["train_nodes"] == 3 and record["train_examples"] == sum(NODE_ROWS)
    for name in plain:  # the masked sum, unmasked and dequantised, is FedAvg's average
        np.testing.assert_allclose(secure[name], plain[name], atol=2e-3)


@pytest.mark.parametrize("mode", ["central-server", "central-client"])
def test_central_dp_clips_the_average_update(run_in_process, mode: str) -> None:  # type: ignore[no-untyped-def]
    clip = 0.01
    settings = RunSettings(
        task_options=OPTIONS,
        rounds=1,
        min_nodes=3,
        evaluate=False,
        dp=DpConfig(mode=mode, noise_multiplier=0.0, clipping_norm=clip),  # type: ignore[arg-type]
    )
    summary, final = run_in_process(settings)
    start = demo_autoencoder(**OPTIONS).initial_arrays()
    norm = math.sqrt(sum(float(((final[k] - start[k]) ** 2).sum()) for k in start))
    assert 0 < norm <= clip * (1 + 1e-4)
    privacy = summary["privacy"]
    assert privacy["mode"] == mode and privacy["clipping_norm"] == clip
    assert privacy["epsilon"] is None  # no noise, no privacy


def test_dp_noise_and_privacy_records(run_in_process) -> None:  # type: ignore[no-untyped-def]
    central, _ = run_in_process(
        RunSettings(
            task_options=OPTIONS, rounds=2, min_nodes=3, dp=DpConfig(noise_multiplier=2.0, clipping_norm=1.0)
        )
    )
    assert [r["privacy"]["epsilon"] for r in central["rounds"]] == [
        pytest.approx(gaussian_dp_epsilon(2.0, 1, 1e-5)),
        pytest.approx(gaussian_dp_epsilon(2.0, 2, 1e-5)),
    ]
    local, _ = run_in_process(
        RunSettings(
            task_options=OPTIONS,
            rounds=2,
            min_nodes=3,
            dp=DpConfig(mode="local", local_epsilon=4.0, delta=1e-6),
        )
    )
    assert local["privacy"]["epsilon"] == 8.0 and local["privacy"]["local_epsilon_per_round"] == 4.0


@pytest.mark.parametrize("secure", [False, True])
def test_record_level_dp_sgd_runs_at_the_nodes_and_is_accounted(run_in_process, secure: bool) -> None:  # type: ignore[no-untyped-def]
    dp = DpConfig(mode="record", noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.1)
    settings = RunSettings(
        task_options=OPTIONS,
        rounds=2,
        min_nodes=3,
        local_epochs=2,
        dp=dp,
        secagg=SecAggConfig(max_weight=100.0) if secure else None,
    )
    summary, final = run_in_process(settings)
    assert summary["status"] == "completed"
    rounds = summary["rounds"]
    steps = [2 * 10, 2 * 2 * 10]  # local epochs x steps per epoch, then two rounds of them
    assert [r["privacy"]["steps"] for r in rounds] == steps
    assert [r["privacy"]["epsilon"] for r in rounds] == [
        pytest.approx(dp_sgd_epsilon(1.0, 0.1, n, 1e-5)) for n in steps
    ]
    assert rounds[-1]["privacy"]["mode"] == "record" and rounds[-1]["privacy"]["sample_rate"] == 0.1
    # every node counted its own steps across the rounds (kept in its context between messages)
    assert rounds[-1]["train_metrics"]["dp-sgd-steps"] == steps[-1]
    start = demo_autoencoder(**OPTIONS).initial_arrays()
    assert any(not np.allclose(final[k], start[k]) for k in start)


# --- process handling -----------------------------------------------------------------------


def test_process_stop_ends_what_it_started_beneath_it(tmp_path: Path) -> None:
    import os
    import sys
    import time

    from foedus.federation.flower.runner import Process

    if not Path("/proc").is_dir():
        pytest.skip("process trees are read from /proc")
    # a parent that ignores SIGTERM, with a child detached into its own session (like Flower's SuperExec)
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    process = Process("stubborn", [sys.executable, "-c", script], tmp_path / "p.log", dict(os.environ))
    assert process.wait_for_log("ready", 30)
    deadline = time.monotonic() + 10
    while not process.leftovers() and time.monotonic() < deadline:
        process.remember_descendants()
        time.sleep(0.05)
    assert len(process.leftovers()) == 1
    started = time.monotonic()
    process.stop(timeout=1.0)
    assert time.monotonic() - started < 10
    assert not process.alive() and process.returncode == -9  # SIGTERM ignored, so SIGKILL
    assert process.leftovers() == []
    assert "ready" in process.log_text()
