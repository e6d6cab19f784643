"""`foedus federation run`: a local federation of two tenants' SuperNodes (TLS, SuperNode
authentication), recorded in the control plane, the result registered in the platform scope."""

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

    tenants = [f"org-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    owners = {t: server.create_tenant(t) for t in tenants}
    rng = np.random.default_rng(5)
    t = np.arange(1200)
    base = np.column_stack([np.sin(t / 15), np.cos(t / 15), 0.5 * np.sin(t / 15)])
    paths = []
    for i, tenant in enumerate(tenants):  # the same behaviour at each site's own level
        x = (10.0 * (i + 1) + (i + 1) * base + rng.normal(0, 0.05, base.shape)).astype(np.float32)
        path = tmp_path / f"{tenant}.npz"
        np.savez(path, train=x)
        paths.append(path)
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
    )
    assert code == 0, err
    recorded = json.loads(out)
    assert recorded["state"] == "FEDERATION_RUN_STATE_SUCCEEDED"
    assert sorted(recorded["tenants"]) == sorted(tenants)
    assert [h["round"] for h in recorded["history"]] == [1, 2]
    assert all("eval_loss" in h["metrics"] for h in recorded["history"])
    assert recorded["result_model"] == "federated-anomaly"
    # each tenant sees the run, with only itself named
    with Client.connect(server.target, api_key=owners[tenants[0]]) as client:
        [seen] = [r for r in client.federation.runs() if r.id == int(recorded["id"])]
        assert (list(seen.tenants), seen.tenant_count) == ([tenants[0]], 2)
        assert [k.tenant for k in client.federation.node_keys()] == [tenants[0]]
    # the registered weights become a site's own detector
    with server.client() as root:
        viewer = root.keys.create("viewer", tenant="platform").secret
    with Client.connect(server.target, api_key=viewer) as platform:
        version = platform.models.get_version("federated-anomaly", int(recorded["result_version"]))
        assert version.lineage.properties["federation_run"] == str(recorded["id"])
        assert version.lineage.properties["organisations"] == "2"
        weights_path = platform.models.download("federated-anomaly", tmp_path, version.version)
    with np.load(weights_path) as archive:
        weights = {k: archive[k] for k in archive.files}
    local = np.load(paths[0])["train"]
    model = AnomalyModel.from_shared_weights(
        weights, local, config=AnomalyConfig(window=5, hidden=16, code=8, calibration_block=200)
    )
    assert np.isfinite(model.threshold) and model.score(local[:50]).shape == (50,)
