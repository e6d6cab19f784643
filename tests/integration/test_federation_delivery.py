"""FederationService.DeliverResult: a run's result reaches the opted-in tenants' deployments as a
new version of their model and a canary rollout, and only where it fits."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from foedus_testdata import iris_onnx
from testkit import run_cli

from foedus.client_sdk import Client
from foedus.client_sdk.errors import FailedPrecondition, InvalidArgument
from foedus.client_sdk.testing import LocalServer

pytest.importorskip("torch")
pytest.importorskip("cryptography")


def _node_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _detector(tmp_path: Path, name: str, seed: int) -> Path:
    from foedus.federation.anomaly import AnomalyConfig, AnomalyModel

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 3))
    config = AnomalyConfig(window=4, hidden=8, code=2, epochs=1, calibration_block=50)
    return AnomalyModel.fit(x, config=config, search=False, seed=seed).export_onnx(tmp_path / name)


def test_delivery_goes_to_opted_in_deployments_that_fit(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c = (f"org-{uuid.uuid4().hex[:6]}" for _ in range(3))
    owners = {t: server.create_tenant(t) for t in (a, b, c)}
    # A serves an anomaly detector of the same inputs; B serves a classifier; C does not opt in
    with Client.connect(server.target, api_key=owners[a]) as client:
        stable = client.models.register(
            "ops", _detector(tmp_path, "a.onnx", 1), framework="onnx", create_model=True
        )
        client.deployments.create("ops", "ops", traffic={stable.version: 1.0})
        client.federation.opt_in("anomaly", "ops")
    with Client.connect(server.target, api_key=owners[b]) as client:
        iris = client.models.register("iris", iris_onnx(tmp_path), framework="onnx", create_model=True)
        client.deployments.create("iris", "iris", traffic={iris.version: 1.0})
        client.federation.opt_in("anomaly", "iris")
    with Client.connect(server.target, api_key=owners[c]) as client:
        client.models.register("ops", _detector(tmp_path, "c.onnx", 3), framework="onnx", create_model=True)
        client.deployments.create("ops", "ops", traffic={1: 1.0})

    with server.client() as admin:
        for tenant in (a, b):
            admin.federation.register_node_key(tenant, _node_key())
        run = admin.federation.create_run("anomaly", [a, b], rounds=1)
        with pytest.raises(FailedPrecondition, match="no registered result"):
            admin.federation.deliver_result(run.id)  # still running
        with pytest.raises(InvalidArgument):
            admin.federation.deliver_result(0)
        # the platform's result, with a window other than A's own model
        platform_key = admin.tenants.create("platform", owner_key=False)
        assert platform_key.tenant.name == "platform"
        editor = admin.keys.create("editor", tenant="platform").secret
        with Client.connect(server.target, api_key=editor) as platform:
            result = platform.models.register(
                "federated-anomaly", _detector(tmp_path, "fed.onnx", 2), framework="onnx", create_model=True
            )
        admin.federation.record_round(run.id, 1, {"eval_loss": 0.5}, nodes=2, size=10, seconds=1.0)
        admin.federation.finish_run(
            run.id, succeeded=True, result_model="federated-anomaly", result_version=result.version
        )
        with pytest.raises(InvalidArgument, match="weight"):
            admin.federation.deliver_result(run.id, steps=[0.0])
        deliveries = {
            d.tenant: d for d in admin.federation.deliver_result(run.id, steps=[(50.0, 5, 10), 100.0])
        }

    assert set(deliveries) == {a, b}  # C did not opt in
    assert deliveries[a].skipped == "" and deliveries[a].version == stable.version + 1
    assert "inputs and outputs differ" in deliveries[b].skipped and deliveries[b].version == 0
    with Client.connect(server.target, api_key=owners[a]) as client:
        rollout = client.rollouts.get(deliveries[a].rollout_id)
        assert (rollout.stable_version, rollout.candidate_version) == (stable.version, stable.version + 1)
        assert [(s.weight, s.min_duration_s) for s in rollout.spec.steps] == [(50.0, 5), (100.0, 60)]
        delivered = client.models.get_version("ops", rollout.candidate_version)
        assert delivered.artifact.sha256 == result.artifact.sha256  # the platform's artifact, shared
        assert delivered.lineage.properties["federation_run"] == str(run.id)
        assert delivered.lineage.parent_version == stable.version
        # a second delivery while the canary runs is skipped for A, with the reason
    code, out, err = run_cli(
        capsys, "--server", server.target, "--api-key", server.admin_key, "-o", "json",
        "federation", "deliver", str(run.id),
    )  # fmt: skip
    assert code == 0, err
    [again] = [d for d in json.loads(out) if d["tenant"] == a]
    assert "active rollout" in again["skipped"]
    with Client.connect(server.target, api_key=owners[b]) as client:
        assert [v.version for v in client.models.versions("iris")] == [iris.version]
        assert client.rollouts.list() == []
    with Client.connect(server.target, api_key=owners[c]) as client:
        assert client.rollouts.list() == []
