"""A tenant registers a real ONNX model and reads it back."""

from __future__ import annotations

from pathlib import Path

from foedus.client_sdk import Client


def test_register_onnx_and_read_back(tenant: Client, onnx_model: Path) -> None:
    version = tenant.models.register("iris", onnx_model, aliases=["production"])
    assert version.version == 1
    assert version.artifact.framework == "onnx"
    assert [i.name for i in version.signature.inputs] == ["input"]
    assert list(version.signature.inputs[0].shape) == [-1, 4]
    assert version.latency.p50_ms > 0
    got = tenant.models.get_version("iris", alias="production")
    assert got.artifact.sha256 == version.artifact.sha256
