"""GPU readings come from nvidia-smi's CSV; a host without it reports none."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from foedus.client_sdk.agent.telemetry import ResourceSampler, read_gpus


def test_reads_nvidia_smi_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559, 1024, 37'\necho 'broken line'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    (gpu,) = read_gpus()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 81559 * 2**20
    assert gpu.memory_used_bytes == 1024 * 2**20
    assert gpu.utilization_percent == 37.0
    sample = ResourceSampler().sample()
    assert sample.gpu_utilization_percent == 37.0
    assert sample.gpu_memory_used_bytes == 1024 * 2**20


def test_no_nvidia_smi_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert read_gpus() == []
    assert ResourceSampler().sample().gpu_memory_used_bytes == 0
