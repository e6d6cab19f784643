"""Per-interval aggregation of everything the agent measures, per version.

The inference service reports each request here (on the event loop); every interval the agent takes
the finished interval (`IntervalAggregator.cut`) and turns it into `IntervalReport` messages. Input
features are counted on the version's reference-profile bins, so drift can be computed on the
control plane without raw inputs ever leaving the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from foedus.client_sdk.agent.histogram import BinnedCounts, LatencyHistogram
from foedus.client_sdk.agent.serving import LoadedModel
from foedus.v1 import agent_pb2, common_pb2


@dataclass
class VersionWindow:
    """What one version saw in the current interval."""

    requests: int = 0
    errors: int = 0
    invalid: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    predictions: BinnedCounts | None = None
    features: list[BinnedCounts] = field(default_factory=list)


def bins_for(profile: common_pb2.ReferenceProfile | None) -> list[BinnedCounts]:
    """One counter per feature of a reference profile, on its bins or categories."""
    out: list[BinnedCounts] = []
    for feature in profile.features if profile is not None else ():
        if feature.WhichOneof("kind") == "categorical":
            out.append(BinnedCounts.categorical(list(feature.categorical.categories)))
        else:
            out.append(BinnedCounts.numeric(np.asarray(feature.numeric.edges, dtype=np.float64)))
    return out


class IntervalAggregator:
    """Collects request outcomes per (version, shadow) until the interval is cut."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, bool], VersionWindow] = {}
        self._profiles: dict[str, tuple[list[str], common_pb2.ReferenceProfile]] = {}
        self.started = time.time()

    def set_profile(self, version: str, profile: common_pb2.ReferenceProfile | None) -> None:
        """Reference profile of a version; its features map to the columns of the model's 2-D input."""
        if profile is not None and profile.features:
            self._profiles[version] = ([f.name for f in profile.features], profile)

    def _window(self, model: LoadedModel, shadow: bool) -> VersionWindow:
        key = (model.version, shadow)
        window = self._windows.get(key)
        if window is None:
            window = VersionWindow()
            known = self._profiles.get(model.version)
            if known is not None:
                window.features = bins_for(known[1])
            self._windows[key] = window
        return window

    def record(
        self,
        model: LoadedModel,
        latency_ms: float,
        ok: bool,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[np.ndarray] | None,
        shadow: bool,
    ) -> None:
        window = self._window(model, shadow)
        window.requests += 1
        window.latency.record(latency_ms)
        if not ok:
            window.errors += 1
            return
        if window.features and len(inputs) == 1:
            matrix = next(iter(inputs.values()))
            if matrix.ndim == 2 and matrix.shape[1] == len(window.features):
                for column, counter in enumerate(window.features):
                    counter.add(matrix[:, column])
        if outputs:
            first = outputs[0]
            if first.dtype.kind in "iub" and first.ndim <= 2:
                if window.predictions is None:
                    window.predictions = BinnedCounts.categorical([])
                _count_labels(window, first.reshape(-1))

    def invalid(self, model: LoadedModel) -> None:
        self._window(model, False).invalid += 1

    def cut(self) -> tuple[float, float, dict[tuple[str, bool], VersionWindow]]:
        """Ends the interval: returns (start, end, windows) and starts a fresh one."""
        now = time.time()
        windows, self._windows = self._windows, {}
        start, self.started = self.started, now
        return start, now, windows


def _count_labels(window: VersionWindow, labels: np.ndarray) -> None:
    """Prediction counts by label; new labels extend the category list of this interval."""
    counts = window.predictions
    assert counts is not None
    values, n = np.unique(labels, return_counts=True)
    categories = list(counts.categories or ())
    current = dict(zip(categories, counts.counts.tolist(), strict=True))
    for value, count in zip(values.tolist(), n.tolist(), strict=True):
        current[str(value)] = current.get(str(value), 0) + int(count)
    fresh = BinnedCounts.categorical(sorted(current))
    fresh.counts = np.asarray([current[c] for c in sorted(current)], dtype=np.int64)
    window.predictions = fresh


def bin_counts_message(name: str, counts: BinnedCounts) -> agent_pb2.BinCounts:
    return agent_pb2.BinCounts(
        name=name,
        counts=counts.counts.tolist(),
        underflow=counts.underflow,
        overflow=counts.overflow,
        other=counts.other,
        missing=counts.missing,
        categories=list(counts.categories or ()) if name == "prediction" else [],
    )


def interval_reports(
    start: float,
    end: float,
    windows: Mapping[tuple[str, bool], VersionWindow],
    feature_names: Mapping[str, list[str]],
    resources: agent_pb2.Resources,
    scores: Mapping[str, float],
) -> list[agent_pb2.IntervalReport]:
    reports = []
    for (version, shadow), w in sorted(windows.items()):
        buckets, counts = w.latency.to_sparse()
        report = agent_pb2.IntervalReport(
            start_unix_ms=int(start * 1000),
            duration_ms=max(1, int((end - start) * 1000)),
            version=int(version),
            shadow=shadow,
            requests=w.requests,
            errors=w.errors,
            invalid=w.invalid,
            latency_ms=agent_pb2.SparseHistogram(
                buckets=buckets.tolist(), counts=counts.tolist(), sum=w.latency.sum_ms
            ),
            resources=resources,
            scores=dict(scores) if not shadow else {},
        )
        if w.predictions is not None:
            report.predictions.CopyFrom(bin_counts_message("prediction", w.predictions))
        names = feature_names.get(version, [])
        for name, counter in zip(names, w.features, strict=False):
            report.features.append(bin_counts_message(name, counter))
        reports.append(report)
    return reports


@dataclass(frozen=True, slots=True)
class GpuReading:
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: float


def read_gpus() -> list[GpuReading]:
    """NVIDIA GPUs of the host, through nvidia-smi; empty where there are none (or no driver)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=name,memory.total,memory.used,utilization.gpu",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    readings = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            readings.append(
                GpuReading(
                    parts[0], int(float(parts[1]) * 2**20), int(float(parts[2]) * 2**20), float(parts[3])
                )
            )
        except (IndexError, ValueError):
            continue
    return readings


class ResourceSampler:
    """Process and host CPU and memory from /proc (Linux), GPU use from nvidia-smi; zeros where
    unavailable."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _process_cpu_s(), _host_cpu())
        self._has_gpu = bool(read_gpus())

    def sample(self) -> agent_pb2.Resources:
        now, cpu, host = time.monotonic(), _process_cpu_s(), _host_cpu()
        last_t, last_cpu, last_host = self._last
        self._last = (now, cpu, host)
        elapsed = max(now - last_t, 1e-6)
        host_busy = host[0] - last_host[0]
        host_total = host[1] - last_host[1]
        gpus = read_gpus() if self._has_gpu else []
        return agent_pb2.Resources(
            process_cpu_percent=100.0 * (cpu - last_cpu) / elapsed,
            host_cpu_percent=100.0 * host_busy / host_total if host_total > 0 else 0.0,
            process_memory_bytes=_rss_bytes(),
            host_memory_used_bytes=_host_memory_used(),
            gpu_utilization_percent=sum(g.utilization_percent for g in gpus) / len(gpus) if gpus else 0.0,
            gpu_memory_used_bytes=sum(g.memory_used_bytes for g in gpus),
        )


def _process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _host_cpu() -> tuple[float, float]:
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _host_memory_used() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemTotal"] - info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 0
