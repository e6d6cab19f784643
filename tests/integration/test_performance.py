"""Delayed labels end to end: a real server, real agents serving real ONNX models, labels joined on
the agents' hosts, metrics compared with scikit-learn's on the same predictions."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data, iris_onnx

pytest.importorskip("onnxruntime")
from sklearn import metrics as skm
from test_agents import AgentLoop
from testkit import run_cli, wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.agent.runtime import Agent, AgentConfig
from foedus.client_sdk.errors import InvalidArgument, NotFound
from foedus.client_sdk.testing import LocalServer
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc
from foedus.v1 import agent_pb2, agent_pb2_grpc, performance_pb2

EXACT = 1e-12


def group_onnx(directory: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A binary classifier on iris plus a 0/1 "group" column (the sensitive feature)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = iris_data()
    group = (np.arange(len(x)) % 3 == 0).astype(np.float32)
    x5 = np.c_[x, group].astype(np.float32)
    target = (y == 2).astype(np.int64)
    clf = LogisticRegression(C=0.05, max_iter=500).fit(x5, target)
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 5]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path = directory / "group.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, x5, target


def regressor_onnx(directory: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Linear regression on scikit-learn's diabetes data (10 float features)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    x, y = load_diabetes(return_X_y=True)
    x = x.astype(np.float32)
    reg = Ridge(alpha=1.0).fit(x[:300], y[:300])
    onx = convert_sklearn(reg, initial_types=[("input", FloatTensorType([None, 10]))], target_opset=17)
    path = directory / "diabetes.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, x[300:400], y[300:400]


def infer(stub: Any, deployment: str, row: np.ndarray, request_id: str) -> tuple[str, list[np.ndarray]]:
    req = inference_pb2.ModelInferRequest(model_name=deployment, id=request_id)
    req.inputs.add(name="input", datatype="FP32", shape=[1, row.size])
    req.raw_input_contents.append(np.asarray(row, dtype="<f4").reshape(1, -1).tobytes())
    resp = stub.ModelInfer(req, timeout=30)
    assert resp.id == request_id
    arrays = []
    for out, raw in zip(resp.outputs, resp.raw_output_contents, strict=True):
        dtype = {"INT64": "<i8", "FP32": "<f4"}[out.datatype]
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape(list(out.shape)))
    return resp.model_version, arrays


class World:
    def __init__(self, tmp: Path, make_server: Callable[..., LocalServer]) -> None:
        self.tmp = tmp
        # Labels are kept 30 days (the default), swept often here: old labels are made by moving
        # their log time back in the database (backdate).
        self.server = make_server(tmp / "server", latency_runs=3, label_sweep_s=0.2)
        self.owner_key = self.server.create_tenant("acme")
        self.owner = Client.connect(self.server.target, api_key=self.owner_key)
        self.agent_key = self.owner.keys.create("agent", description="agents").secret
        self.loop = AgentLoop()
        self.agents: dict[str, Agent] = {}
        self.channels: list[grpc.Channel] = []
        models = tmp / "models"
        models.mkdir()
        x, _ = iris_data()
        self.owner.models.register("iris", iris_onnx(models, c=1.0, name="a.onnx"), reference_data=x)
        self.owner.models.register("iris", iris_onnx(models, c=0.01, name="b.onnx"), reference_data=x)
        self.owner.deployments.create("iris-prod", "iris", traffic={1: 1.0, 2: 1.0})
        path, self.group_x, self.group_y = group_onnx(models)
        self.owner.models.register(
            "credit",
            path,
            reference_data=self.group_x,
            feature_names=["a", "b", "c", "d", "group"],
            tags={"sensitive_feature": "group"},
        )
        self.owner.deployments.create("credit", "credit", traffic={1: 1.0})
        path, self.reg_x, self.reg_y = regressor_onnx(models)
        self.owner.models.register("diabetes", path)
        self.owner.deployments.create("diabetes", "diabetes", traffic={1: 1.0})
        for name in ("iris-prod", "credit", "diabetes"):
            self.start_agent(name)

    def start_agent(self, deployment: str) -> Agent:
        agent = self.loop.start_agent(
            AgentConfig(
                deployment=deployment,
                server=self.server.target,
                api_key=self.agent_key,
                listen="127.0.0.1:0",
                data_dir=self.tmp / f"agent-{deployment}",
                name=f"agent-{deployment}",
                interval_s=0.3,
            )
        )
        wait_for(lambda: agent.generation >= 1, 60, f"the agent of {deployment} to load its versions")
        self.agents[deployment] = agent
        return agent

    def stub(self, deployment: str) -> Any:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.agents[deployment].port}")
        self.channels.append(channel)
        return inference_pb2_grpc.GRPCInferenceServiceStub(channel)

    def restart_agent(self, deployment: str) -> Agent:
        self.stop_agent(deployment)
        return self.start_agent(deployment)

    def stop_agent(self, deployment: str) -> None:
        self.loop.call(self.agents.pop(deployment).stop())

    def backdate_labels(self, first: int, last: int, days: float) -> None:
        """Moves the log time of the labels with sequences first..last `days` into the past."""
        from sqlalchemy import update

        from foedus.server.store.schema import labels

        with self.server.store.engine.begin() as conn:
            conn.execute(
                update(labels)
                .where(labels.c.id.between(first, last))
                .values(logged_at_us=labels.c.logged_at_us - round(days * 86_400e6))
            )

    def windows(self, deployment: str, **kwargs: Any) -> dict[int, performance_pb2.WindowPerformance]:
        resp = self.owner.monitoring.performance(deployment, **kwargs)
        return {w.version: w for w in resp.windows}

    def wait_labelled(self, deployment: str, n: int) -> dict[int, performance_pb2.WindowPerformance]:
        wait_for(
            lambda: sum(w.labelled for w in self.windows(deployment).values()) >= n,
            60,
            f"{n} labels of {deployment} to be joined",
        )
        return self.windows(deployment)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for agent in self.agents.values():
            self.loop.call(agent.stop())
        self.loop.close()
        self.owner.close()
        self.server.stop()


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, make_server: Callable[..., LocalServer]
) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("performance"), make_server)
    try:
        yield w
    finally:
        w.close()


def check_classifier(
    window: performance_pb2.WindowPerformance, y: list[int], pred: list[int], probs: np.ndarray
) -> None:
    assert window.task == "classification"
    assert window.labelled == len(y)
    assert window.accuracy == pytest.approx(skm.accuracy_score(y, pred), abs=EXACT)
    assert window.precision == pytest.approx(
        skm.precision_score(y, pred, average="macro", zero_division=0), abs=EXACT
    )
    assert window.recall == pytest.approx(
        skm.recall_score(y, pred, average="macro", zero_division=0), abs=EXACT
    )
    assert window.f1 == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=EXACT)
    labels = sorted(set(y) | set(pred))
    per_class = skm.f1_score(y, pred, average=None, labels=labels, zero_division=0)
    assert [c.label for c in window.classes] == [str(v) for v in labels]
    assert [c.f1 for c in window.classes] == pytest.approx(list(per_class), abs=EXACT)
    if probs.shape[1] == 2:
        expected_auc = skm.roc_auc_score(y, probs[:, 1])
    else:
        expected_auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert window.roc_auc == pytest.approx(expected_auc, abs=EXACT)


def test_metrics_per_version_equal_sklearn_across_an_agent_restart(world: World) -> None:
    x, y = iris_data()
    stub = world.stub("iris-prod")
    served: dict[str, list[tuple[int, int, np.ndarray]]] = {"1": [], "2": []}
    for i, row in enumerate(x):
        version, (label, probs) = infer(stub, "iris-prod", row, f"iris-{i}")
        served[version].append((i, int(label[0]), probs[0].astype(np.float64)))
    assert served["1"] and served["2"], "traffic is split between the two versions"

    # Before any label: every prediction is counted and the CBPE estimate covers all of them.
    wait_for(
        lambda: sum(w.predictions for w in world.windows("iris-prod").values()) == len(x),
        60,
        "the predictions to be counted",
    )
    for version, rows in served.items():
        window = world.windows("iris-prod")[int(version)]
        assert window.labelled == 0 and math.isnan(window.accuracy)
        probs = np.asarray([p for _, _, p in rows])
        expected_accuracy = float(np.mean([p[label] / p.sum() for _, label, p in rows]))
        assert window.HasField("estimate")
        assert window.estimate.predictions == len(rows)
        assert window.estimate.accuracy == pytest.approx(expected_accuracy, rel=1e-9)
        assert probs.shape[1] == 3

    # Half of the labels now, the other half after the agent restarted from the same data dir.
    half = len(x) // 2
    world.owner.monitoring.log_labels("iris-prod", [f"iris-{i}" for i in range(half)], y[:half].tolist())
    world.wait_labelled("iris-prod", half)
    # A few more requests just before the restart: their predictions may still be in the agent's
    # memory when it stops, and must reach its disk then.
    late = len(x)
    for j in range(10):
        i = late + j
        version, (label, probs) = infer(stub, "iris-prod", x[j], f"iris-{i}")
        served[version].append((i, int(label[0]), probs[0].astype(np.float64)))
    y = np.r_[y, y[:10]]
    world.restart_agent("iris-prod")
    world.owner.monitoring.log_labels(
        "iris-prod", [f"iris-{i}" for i in range(half, len(y))], [float(v) for v in y[half:]]
    )
    windows = world.wait_labelled("iris-prod", len(y))
    for version, rows in served.items():
        truth = [int(y[i]) for i, _, _ in rows]
        check_classifier(
            windows[int(version)], truth, [p for _, p, _ in rows], np.asarray([p for _, _, p in rows])
        )
        assert windows[int(version)].label_coverage == 1.0
        assert not windows[int(version)].HasField("estimate")
    # Labels logged again for known requests do not count twice.
    world.owner.monitoring.log_labels("iris-prod", ["iris-0", "iris-1"], [2, 2])
    world.owner.monitoring.log_labels("iris-prod", ["extra-unknown"], [1])
    agent = world.agents["iris-prod"]
    last = world.owner.monitoring.log_labels("iris-prod", ["extra-unknown-2"], [1]).last_sequence
    wait_for(lambda: agent.prediction_log.cursor >= last, 60, "the agent to pull every label")
    windows = world.windows("iris-prod")
    assert sum(w.labelled for w in windows.values()) == len(y)
    # One-minute windows cover the same predictions.
    per_minute = world.owner.monitoring.performance("iris-prod", window_s=60).windows
    assert sum(w.labelled for w in per_minute) == len(y)


def test_binary_classifier_and_fairness_equal_hand_computed_values(world: World) -> None:
    stub = world.stub("credit")
    rows = []
    for i, row in enumerate(world.group_x):
        _, (label, probs) = infer(stub, "credit", row, f"c-{i}")
        rows.append((int(label[0]), probs[0].astype(np.float64)))
    pred = [p for p, _ in rows]
    world.owner.monitoring.log_labels("credit", [f"c-{i}" for i in range(len(rows))], world.group_y.tolist())
    window = world.wait_labelled("credit", len(rows))[1]
    y = world.group_y.tolist()
    check_classifier(window, y, pred, np.asarray([p for _, p in rows]))
    fair = window.fairness
    assert fair.sensitive_feature == "group" and fair.positive_class == "1"
    group = world.group_x[:, 4].astype(int)
    selection, tpr = {}, {}
    for g in (0, 1):
        mask = group == g
        yt, yp = np.asarray(y)[mask], np.asarray(pred)[mask]
        selection[g] = float(np.mean(yp == 1))
        tpr[g] = float(skm.recall_score(yt, yp, pos_label=1))
    assert [s.segment for s in fair.segments] == ["0", "1"]
    assert [s.selection_rate for s in fair.segments] == pytest.approx([selection[0], selection[1]], abs=EXACT)
    assert [s.true_positive_rate for s in fair.segments] == pytest.approx([tpr[0], tpr[1]], abs=EXACT)
    assert fair.demographic_parity_difference == pytest.approx(abs(selection[0] - selection[1]), abs=EXACT)
    assert fair.equal_opportunity_difference == pytest.approx(abs(tpr[0] - tpr[1]), abs=EXACT)


def test_regression_mae_and_rmse_equal_sklearn(world: World) -> None:
    stub = world.stub("diabetes")
    predictions = []
    for i, row in enumerate(world.reg_x):
        _, (value,) = infer(stub, "diabetes", row, f"d-{i}")
        predictions.append(float(value.reshape(-1)[0]))
    world.owner.monitoring.log_labels(
        "diabetes", [f"d-{i}" for i in range(len(predictions))], world.reg_y.tolist()
    )
    window = world.wait_labelled("diabetes", len(predictions))[1]
    assert window.task == "regression"
    assert window.mae == pytest.approx(skm.mean_absolute_error(world.reg_y, predictions), rel=1e-12)
    assert window.rmse == pytest.approx(
        math.sqrt(skm.mean_squared_error(world.reg_y, predictions)), rel=1e-12
    )
    assert window.bias == pytest.approx(
        float(np.mean(np.asarray(predictions) - world.reg_y)), rel=1e-9, abs=1e-9
    )


def test_labels_past_the_retention_are_deleted_and_an_agent_continues_after_them(world: World) -> None:
    world.owner.deployments.create("iris-kept", "iris", traffic={1: 1.0})
    world.start_agent("iris-kept")
    x, y = iris_data()
    stub = world.stub("iris-kept")
    predicted = [int(infer(stub, "iris-kept", x[i], f"k-{i}")[1][0][0]) for i in range(12)]

    def logged(ids: range) -> tuple[int, int]:
        resp = world.owner.monitoring.log_labels(
            "iris-kept", [f"k-{i}" for i in ids], [int(y[i]) for i in ids]
        )
        return resp.first_sequence, resp.last_sequence

    # The agent joins the first label, then stops; its cursor stays at that label's sequence.
    logged(range(1))
    world.wait_labelled("iris-kept", 1)
    world.stop_agent("iris-kept")
    # Labels logged 31 days ago are deleted by the sweep before the agent comes back.
    world.backdate_labels(*logged(range(1, 6)), days=31)
    wait_for(
        lambda: [label.request_id for label in pulled_labels(world, "iris-kept")] == ["k-0"],
        60,
        "labels past the retention to be deleted",
    )
    # Labels logged 29 days ago and now are kept.
    world.backdate_labels(*logged(range(6, 9)), days=29)
    logged(range(9, 12))
    # One more old label: once the sweep deleted it, it also saw (and kept) the newer ones.
    world.backdate_labels(*logged(range(12, 13)), days=40)
    wait_for(
        lambda: "k-12" not in {label.request_id for label in pulled_labels(world, "iris-kept")},
        60,
        "the sweep after the newer labels",
    )
    assert [label.request_id for label in pulled_labels(world, "iris-kept")] == [
        f"k-{i}" for i in (0, *range(6, 12))
    ]
    # The agent pulls from its cursor, before the oldest kept label: no error, and each kept
    # label is counted once; the deleted ones never are.
    agent = world.start_agent("iris-kept")
    last = pulled_labels(world, "iris-kept")[-1].sequence
    wait_for(lambda: agent.prediction_log.cursor >= last, 60, "the agent to pull the kept labels")
    window = world.wait_labelled("iris-kept", 7)[1]
    kept = [0, *range(6, 12)]
    assert window.labelled == len(kept)
    assert window.accuracy == pytest.approx(
        skm.accuracy_score([int(y[i]) for i in kept], [predicted[i] for i in kept]), abs=EXACT
    )


def pulled_labels(world: World, deployment: str) -> list[agent_pb2.Label]:
    """Every label of the deployment, as its agents pull them."""
    with grpc.insecure_channel(world.server.target) as channel:
        meta = (("authorization", f"Bearer {world.agent_key}"),)
        pull = agent_pb2_grpc.AgentServiceStub(channel).PullLabels
        return list(pull(agent_pb2.PullLabelsRequest(deployment=deployment), metadata=meta).labels)


def test_another_tenant_cannot_log_labels_or_read_performance(world: World) -> None:
    before = world.owner.monitoring.performance("iris-prod")
    labels = pulled_labels(world, "iris-prod")
    other = Client.connect(world.server.target, api_key=world.server.create_tenant("rival"))
    with other:
        with pytest.raises(NotFound):
            other.monitoring.log_labels("iris-prod", ["iris-0"], [0])
        with pytest.raises(NotFound):
            other.monitoring.performance("iris-prod")
    assert pulled_labels(world, "iris-prod") == labels

    def counts(resp: performance_pb2.GetPerformanceResponse) -> list[tuple[int, int, int, float]]:
        return [(w.version, w.predictions, w.labelled, w.accuracy) for w in resp.windows]

    assert counts(world.owner.monitoring.performance("iris-prod")) == counts(before)


@pytest.mark.parametrize(
    ("ids", "labels", "message"),
    [
        (["a", "b"], [1], "same length"),
        (["a", ""], [1, 2], "request id #1 is empty"),
        (["a", "b"], [1, float("nan")], "finite"),
        (["a"], [""], "label #0"),
        ([], [], "no labels"),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_stored(
    world: World, ids: list[str], labels: list[Any], message: str
) -> None:
    before = pulled_labels(world, "diabetes")
    with pytest.raises(InvalidArgument, match=message):
        world.owner.monitoring.log_labels("diabetes", ids, labels)
    assert pulled_labels(world, "diabetes") == before


def test_cli_performance_report_shows_metrics_and_fairness(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.owner.deployments.create("credit-cli", "credit", traffic={1: 1.0})
    world.start_agent("credit-cli")
    stub = world.stub("credit-cli")
    for i, row in enumerate(world.group_x[::5]):
        infer(stub, "credit-cli", row, f"cli-{i}")
    n = len(world.group_x[::5])
    world.owner.monitoring.log_labels(
        "credit-cli", [f"cli-{i}" for i in range(n)], world.group_y[::5].tolist()
    )
    world.wait_labelled("credit-cli", n)
    code, out, err = run_cli(
        capsys,
        "--server",
        world.server.target,
        "--api-key",
        world.owner_key,
        "performance",
        "report",
        "credit-cli",
        "--window",
        "1d",
    )
    assert code == 0, err
    assert "ACCURACY" in out and "SELECTION_RATE" in out and "demographic parity difference" in out


def test_cli_logs_labels_from_a_csv_file(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "labels.csv"
    good.write_text("request_id,label\ncli-1,1\ncli-2,0\n")
    base = ("--server", world.server.target, "--api-key", world.owner_key, "--output", "json")
    code, out, err = run_cli(capsys, *base, "performance", "log-labels", "credit", str(good))
    assert code == 0, err
    assert '"stored": 2' in out
    assert [label.request_id for label in pulled_labels(world, "credit")][-2:] == ["cli-1", "cli-2"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,truth\ncli-3,1\n")
    code, _, err = run_cli(capsys, *base, "performance", "log-labels", "credit", str(bad))
    assert code != 0 and "request_id" in err


def test_cli_sends_a_long_label_file_in_several_calls(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from foedus.client_sdk.cli.performance import LABELS_PER_CALL

    count = 2 * LABELS_PER_CALL + 1
    path = tmp_path / "many.csv"
    path.write_text("request_id,label\n" + "".join(f"bulk-{i},{i % 2}\n" for i in range(count)))
    before = world.owner.monitoring.log_labels("credit", ["bulk-before"], [0]).last_sequence
    base = ("--server", world.server.target, "--api-key", world.owner_key, "--output", "json")
    code, out, err = run_cli(capsys, *base, "performance", "log-labels", "credit", str(path))
    assert code == 0, err
    assert f'"stored": {count}' in out
    assert f'"first": {before + 1}' in out and f'"last": {before + count}' in out
    assert f"{count:,}/{count:,} labels sent" in err
