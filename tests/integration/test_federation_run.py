"""`foedus federation run`: a local federation of three tenants' SuperNodes (TLS, SuperNode
authentication), recorded in the control plane, the result registered in the platform scope as
an ONNX detector and, with --rollout, sent as a canary to the deployments of opted-in tenants."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from testkit import run_cli as run

from foedus.client_sdk import Client
from foedus.client_sdk.testing import LocalServer

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def test_a_federated_run_is_recorded_and_its_result_registered(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from foedus.federation.anomaly import AnomalyConfig, AnomalyModel

    tenants = [f"org-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    owners = {t: server.create_tenant(t) for t in tenants}
    bystander = f"org-{uuid.uuid4().hex[:6]}"  # opted in, took no part, its deployment serves nothing
    owners[bystander] = server.create_tenant(bystander)
    rng = np.random.default_rng(5)
    t = np.arange(1200)
    base = np.column_stack([np.sin(t / 15), np.cos(t / 15), 0.5 * np.sin(t / 15)])
    paths = []
    for i, tenant in enumerate(tenants):  # the same behaviour at each site's own level
        x = (10.0 * (i + 1) + (i + 1) * base + rng.normal(0, 0.05, base.shape)).astype(np.float32)
        path = tmp_path / f"{tenant}.npz"
        np.savez(path, train=x)
        paths.append(path)
    # the first tenant runs its own detector (window 5, 3 metrics) and opts in to federated ones
    config = AnomalyConfig(window=5, hidden=16, code=8, epochs=1, calibration_block=200)
    own = AnomalyModel.fit(np.load(paths[0])["train"], config=config, search=False)
    with Client.connect(server.target, api_key=owners[tenants[0]]) as client:
        stable = client.models.register(
            "ops-anomaly", own.export_onnx(tmp_path / "own.onnx"), framework="onnx", create_model=True
        )
        client.deployments.create("ops", "ops-anomaly", traffic={stable.version: 1.0})
        client.federation.opt_in("anomaly", "ops")
    with Client.connect(server.target, api_key=owners[bystander]) as client:
        client.models.register(
            "ops-anomaly", own.export_onnx(tmp_path / "own.onnx"), framework="onnx", create_model=True
        )
        client.deployments.create("ops", "ops-anomaly", traffic={})
        client.federation.opt_in("anomaly", "ops")
    admin = ("--server", server.target, "--api-key", server.admin_key)
    nodes = [
        arg for tenant, path in zip(tenants, paths, strict=True) for arg in ("--node", f"{tenant}={path}")
    ]
    code, out, err = run(
        capsys,
        *admin,
        "-o",
        "json",
        "federation",
        "run",
        *nodes,
        "--rounds",
        "2",
        "--features",
        "3",
        "--window",
        "5",
        "--hidden",
        "16",
        "--workdir",
        str(tmp_path / "federation"),
        "--rollout",
        *("--dp-mode", "record", "--dp-noise", "0.8", "--dp-clip", "1.0", "--dp-sample-rate", "0.05"),
    )
    assert code == 0, err
    assert "skipped: the deployment serves no version yet" in err
    recorded = json.loads(out)
    assert recorded["state"] == "FEDERATION_RUN_STATE_SUCCEEDED"
    assert sorted(recorded["tenants"]) == sorted(tenants)
    assert [h["round"] for h in recorded["history"]] == [1, 2]
    assert all("eval_loss" in h["metrics"] for h in recorded["history"])
    assert recorded["result_model"] == "federated-anomaly"
    # DP-SGD at the nodes: settings and the ε after both rounds (2 x 20 steps) recorded with the run
    from foedus.federation.flower import dp_sgd_epsilon

    privacy = recorded["privacy"]
    assert privacy["mode"] == "record" and privacy["sample_rate"] == 0.05
    assert privacy["noise_multiplier"] == 0.8 and privacy["clipping_norm"] == 1.0
    assert privacy["epsilon"] == pytest.approx(dp_sgd_epsilon(0.8, 0.05, 40, 1e-5), rel=1e-6)
    code, table, err = run(capsys, *admin, "federation", "runs", "list")
    assert code == 0, err
    assert "record (noise 0.8, clip 1, sample rate 0.05, eps " in table
    # each tenant sees the run, with only itself named
    with Client.connect(server.target, api_key=owners[tenants[0]]) as client:
        [seen] = [r for r in client.federation.runs() if r.id == int(recorded["id"])]
        assert (list(seen.tenants), seen.tenant_count) == ([tenants[0]], 3)
        assert [k.tenant for k in client.federation.node_keys()] == [tenants[0]]
    # the registered ONNX detector: the global weights with the sites' averaged calibration
    with server.client() as root:
        viewer = root.keys.create("viewer", tenant="platform").secret
    with Client.connect(server.target, api_key=viewer) as platform:
        version = platform.models.get_version("federated-anomaly", int(recorded["result_version"]))
        assert version.lineage.properties["federation_run"] == str(recorded["id"])
        assert version.lineage.properties["organisations"] == "3"
        assert version.artifact.framework == "onnx"
        onnx_path = platform.models.download("federated-anomaly", tmp_path, version.version)
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["foedus.kind"] == "anomaly" and meta["foedus.window"] == "5"
    local = np.load(paths[0])["train"]
    windows = np.stack([local[i : i + 5] for i in range(100)]).astype(np.float32)
    scores = session.run(["score"], {"metrics": windows})[0]
    assert scores.shape == (100,) and np.isfinite(scores).all()
    # the calibration averages the sites' levels (about 10, 20 and 30, equal rows): about 20
    last = recorded["history"][-1]["metrics"]
    assert 17.0 < last["calib-center-0"] < 23.0
    # and the sites' drift-compensation levels, which the registered detector carries
    levels = [float(v) for v in meta["foedus.feature_levels"].split(",")]
    assert levels == pytest.approx([last[f"calib-level-{i}"] for i in range(len(levels))], rel=1e-6)
    assert all(v > 0 for v in levels) and int(meta["foedus.drift_blocks"]) > 0
    # the opted-in tenant got it as a new version of its model, in a canary rollout
    with Client.connect(server.target, api_key=owners[tenants[0]]) as client:
        [rollout] = client.rollouts.list(deployment="ops")
        assert (rollout.stable_version, rollout.candidate_version) == (stable.version, stable.version + 1)
        delivered = client.models.get_version("ops-anomaly", rollout.candidate_version)
        assert delivered.lineage.properties["federation_run"] == str(recorded["id"])
        assert delivered.lineage.parent_version == stable.version
    # the tenant that did not opt in got nothing; the run is still its own to see
    with Client.connect(server.target, api_key=owners[tenants[1]]) as client:
        assert client.rollouts.list() == [] and client.models.list() == []


def test_record_level_dp_is_refused_for_the_resource_model(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "org.npz"
    np.savez(path, train=np.zeros((10, 6), dtype=np.float32))
    code, _, err = run(
        capsys, "--server", server.target, "--api-key", server.admin_key, "federation", "run",
        "--node", f"org={path}", "--model", "resource", "--dp-mode", "record",
        "--workdir", str(tmp_path / "federation"),
    )  # fmt: skip
    assert code == 2
    assert "record-level DP (DP-SGD) is not supported for the resource model" in err
    assert not (tmp_path / "federation").exists()  # refused before anything started


def test_a_federated_resource_model_from_agent_histories(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from foedus.client_sdk.agent.history import HISTORY_METRICS

    tenants = [f"org-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for tenant in tenants:
        server.create_tenant(tenant)
    rng = np.random.default_rng(9)
    t = np.arange(900)
    nodes: list[str] = []
    for i, tenant in enumerate(tenants):  # agent histories: HISTORY_METRICS columns, one row per interval
        load = 100.0 * (i + 1) * (1.2 + np.sin(2 * np.pi * t / 360)) + rng.normal(0, 5, t.size)
        history = np.column_stack(
            [load, np.full(t.size, 0.01), 0.5 + load / 1000, 2 + load / 300, load / 10, 2e8 + 1e5 * load]
        )
        assert history.shape[1] == len(HISTORY_METRICS)
        path = tmp_path / f"{tenant}.npz"
        np.savez(path, train=history.astype(np.float32))
        nodes += ["--node", f"{tenant}={path}"]
    admin = ("--server", server.target, "--api-key", server.admin_key)
    code, out, err = run(
        capsys, *admin, "-o", "json", "federation", "run", *nodes, "--model", "resource",
        "--rounds", "2", "--hidden", "16", "--workdir", str(tmp_path / "federation"),
    )  # fmt: skip
    assert code == 0, err
    assert "round 1/3" in err and "standardisation agreed" in err and "round 3/3" in err
    recorded = json.loads(out)
    assert recorded["model_kind"] == "resource" and recorded["result_model"] == "federated-resource"
    with server.client() as root:
        viewer = root.keys.create("viewer", tenant="platform").secret
    with Client.connect(server.target, api_key=viewer) as platform:
        path = platform.models.download("federated-resource", tmp_path, int(recorded["result_version"]))
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["foedus.kind"] == "resource"
    features = meta["foedus.features"].split(",")
    window = int(meta["foedus.window"])
    history = np.load(tmp_path / f"{tenants[0]}.npz")["train"]
    columns = [HISTORY_METRICS.index(f) for f in features]
    batch = history[None, -window:, columns].astype(np.float32)
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {"metrics": batch}), strict=True)
    )
    cpu_p50, cpu_p90 = float(outputs["cpu_p50_next"][0]), float(outputs["cpu_p90_next"][0])
    assert 0.0 < cpu_p50 <= cpu_p90 < 200.0  # the first site's CPU runs between about 2 and 22 percent
