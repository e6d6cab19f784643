"""Evaluation of online anomaly detection on the faults injected into Online Boutique (Nezha data set).

Data
    ``<data_dir>/nezha/**/<day>-fault_list.json`` (or anywhere under `data_dir`) with a sibling
    ``metric/`` folder of per-pod ``<pod>_metric.csv`` files at one row a minute. The fault list
    maps hours to lists of ``{inject_time, inject_timestamp, inject_pod, inject_type}``. A row's
    time is its ``Time`` column (UTC, to the second; it ends the minute the row summarises). The
    ``TimeStamp`` column is not used: in one file it is off by 2e8 s.

Metrics per pod (`POD_METRICS`)
    CPU and memory usage rates, read/write syscalls, network bytes received/sent, client and
    server latency p90/p95/p99, workload and success rate. Node-level columns are left out (they
    describe the node, shared with other pods), as are CPU millicores and memory MiB (the same
    information as the rates).

Fault windows
    A fault injected at ``t0`` into pod ``p`` has the window ``(t0, t0 + window_s]`` (default 5 min:
    the faults last a few minutes and are about 8 min apart; Nezha's own RCA looks at the minute
    ``t0 + 2 min``). A row ending at ``t`` summarises ``(t - 60 s, t]`` and belongs to the window
    when that minute overlaps it, i.e. ``t0 < t < t0 + window_s + 60 s``.

Protocol (`evaluate_nezha`)
    Every pod has its own detector. Cross-day: for each day with faults, a pod's detector is fitted
    on the other days' rows of the same service (matched by service name: the pod name without
    its deployment and pod suffixes) outside every fault window (`guard_s` more after each, for
    faults' after-effects), then run online over the day's rows. A fault counts as *found* when
    the faulty pod's detector alerts on a row inside the fault's window; its time to detect is
    that row's time minus ``t0`` (first alerting row). False alerts: alerting rows of any pod
    outside every fault window of that day (of any pod; a fault can show in its callers), per
    hour of such rows. With a single day, training uses that day's rows outside the windows
    (``nezha_in_sample`` = 1).

Detectors
    * ours: `foedus.federation.anomaly.AnomalyModel` (``fit`` on the training rows, with its
      hyperparameter search and its label-free threshold; alert when ``score >= threshold``, the
      model's own rule);
    * ``stat_``: the agent's statistical detector
      (`foedus.client_sdk.agent.detector.AnomalyDetector`, default threshold 4), fed the training
      rows first (its warm-up) and then the day's rows one at a time;
    * ``iforest_``: scikit-learn IsolationForest (200 trees) on the training rows, alert when
      ``-score_samples`` exceeds its `iforest_quantile` (99.5%) quantile on the training rows.

Run: ``python -m foedus.federation.evaluation.nezha [data_dir]`` prints the figures as JSON.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from foedus.client_sdk.agent.detector import AnomalyDetector
from foedus.federation.evaluation._cli import run_main

Progress = Callable[[str], None]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ROW_S = 60.0
"""Seconds summarised by one metric row."""
DEFAULT_WINDOW_S = 300.0
POD_METRICS: tuple[str, ...] = (
    "CpuUsageRate(%)",
    "MemoryUsageRate(%)",
    "SyscallRead",
    "SyscallWrite",
    "NetworkReceiveBytes",
    "NetworkTransmitBytes",
    "PodClientLatencyP90(s)",
    "PodServerLatencyP90(s)",
    "PodClientLatencyP95(s)",
    "PodServerLatencyP95(s)",
    "PodClientLatencyP99(s)",
    "PodServerLatencyP99(s)",
    "PodWorkload(Ops)",
    "PodSuccessRate(%)",
)


def default_data_dir() -> Path:
    """``FOEDUS_DATA_DIR``, else ``../shared/data`` (relative to the working directory)."""
    return Path(os.environ.get("FOEDUS_DATA_DIR", "../shared/data"))


def service_of(pod: str) -> str:
    """``cartservice-579f59597d-wc2lz`` -> ``cartservice`` (drops the deployment and pod suffixes)."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


@dataclass(frozen=True)
class Fault:
    time_s: float
    """Injection time, Unix seconds."""
    pod: str
    kind: str

    @property
    def service(self) -> str:
        return service_of(self.pod)


@dataclass(frozen=True)
class PodSeries:
    pod: str
    times_s: FloatArray
    """End of each row's minute, Unix seconds, increasing."""
    values: FloatArray
    """(T, len(POD_METRICS)); NaN where a value is missing."""

    @property
    def service(self) -> str:
        return service_of(self.pod)


@dataclass
class NezhaDay:
    name: str
    pods: dict[str, PodSeries]
    faults: list[Fault]


@dataclass
class Match:
    """How one detector's alerts on one pod-day match the faults (see `match_alerts`)."""

    found: list[bool] = field(default_factory=list)
    """Per fault of this pod, in the given order: did an alert fall in its window."""
    ttd_s: list[float] = field(default_factory=list)
    """Per found fault: first alerting row's time minus the injection time."""
    false_alerts: int = 0
    """Alerting rows outside every fault window."""
    normal_hours: float = 0.0
    """Hours of rows outside every fault window."""


def _parse_time(text: str) -> float:
    """``2022-08-22 03:51:19.607158889 +0000 UTC m=+0.11`` -> Unix seconds (to the second)."""
    stamp = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return stamp.timestamp()


def read_pod(path: Path) -> PodSeries:
    """One ``<pod>_metric.csv`` file (rows sorted by time, duplicates of a second dropped)."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [m for m in ("Time", *POD_METRICS) if m not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
        times, rows = [], []
        for row in reader:
            times.append(_parse_time(row["Time"]))
            rows.append([_float(row[m]) for m in POD_METRICS])
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(rows, dtype=np.float64).reshape(len(times), len(POD_METRICS))
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    keep = np.r_[True, np.diff(t) > 0] if len(t) else np.zeros(0, dtype=bool)
    return PodSeries(path.name.removesuffix("_metric.csv"), t[keep], v[keep])


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_faults(path: Path) -> list[Fault]:
    """A ``*-fault_list.json`` file: ``{hour: [{inject_time, inject_pod, inject_type, ...}]}``."""
    raw = json.loads(path.read_text())
    entries = [e for v in raw.values() for e in v] if isinstance(raw, dict) else list(raw)
    faults = []
    for e in entries:
        when = _parse_time(str(e["inject_time"]))
        faults.append(Fault(when, str(e["inject_pod"]), str(e.get("inject_type", "unknown"))))
    return sorted(faults, key=lambda f: f.time_s)


def load_nezha(data_dir: Path) -> list[NezhaDay]:
    """Every fault list under `data_dir` with its ``metric/`` pod files; FileNotFoundError when none."""
    root = data_dir / "nezha" if (data_dir / "nezha").is_dir() else data_dir
    days = []
    for fault_file in sorted(root.rglob("*fault_list.json")):
        pod_files = sorted((fault_file.parent / "metric").glob("*_metric.csv"))
        if not pod_files:
            continue
        pods = {p.pod: p for p in (read_pod(f) for f in pod_files) if len(p.times_s)}
        name = fault_file.name.removesuffix(".json").removesuffix("-fault_list")
        days.append(NezhaDay(name, pods, read_faults(fault_file)))
    if not days:
        raise FileNotFoundError(
            f"no Nezha data under {data_dir} (expected nezha/**/<day>-fault_list.json beside a "
            "metric/ folder of <pod>_metric.csv files; set FOEDUS_DATA_DIR to the data folder)"
        )
    return days


def in_windows(
    times_s: FloatArray,
    starts_s: Sequence[float],
    *,
    window_s: float = DEFAULT_WINDOW_S,
    row_s: float = ROW_S,
) -> BoolArray:
    """Rows (ending at `times_s`) whose minute overlaps some ``(t0, t0 + window_s]``."""
    inside = np.zeros(len(times_s), dtype=bool)
    for t0 in starts_s:
        inside |= (times_s > t0) & (times_s < t0 + window_s + row_s)
    return inside


def match_alerts(
    times_s: FloatArray,
    alerts: BoolArray,
    pod_faults: Sequence[Fault],
    day_faults: Sequence[Fault],
    *,
    window_s: float = DEFAULT_WINDOW_S,
    row_s: float = ROW_S,
) -> Match:
    """Matches one pod's alerting rows with its faults; false alerts count outside all `day_faults` windows."""
    t = np.asarray(times_s, dtype=np.float64)
    a = np.asarray(alerts, dtype=bool)
    result = Match()
    for fault in pod_faults:
        hits = np.flatnonzero(a & in_windows(t, [fault.time_s], window_s=window_s, row_s=row_s))
        result.found.append(len(hits) > 0)
        if len(hits):
            result.ttd_s.append(float(t[hits[0]] - fault.time_s))
    normal = ~in_windows(t, [f.time_s for f in day_faults], window_s=window_s, row_s=row_s)
    result.false_alerts = int((a & normal).sum())
    result.normal_hours = float(normal.sum()) * row_s / 3600.0
    return result


# --------------------------------------------------------------------------------------------
# Detectors: fit on training rows, then one alert flag per row of the day, in order.
# --------------------------------------------------------------------------------------------

Detector = Callable[[FloatArray, FloatArray, int], FloatArray]
"""(training rows, day rows, seed) -> per day row ``score - threshold``: it alerts where > 0."""


def stat_margins(train: FloatArray, test: FloatArray, seed: int = 0) -> FloatArray:
    """The agent's EWMA robust-z detector, warmed up on `train`, run over `test` row by row.

    It alerts at ``score >= threshold``; the margin ``score - threshold`` is nudged up by 1e-9 so
    that "> 0" means the same.
    """
    detector = AnomalyDetector(train.shape[1], metric_names=list(POD_METRICS))
    for row in train:
        detector.update(row)
    threshold = detector.config.threshold
    return np.array([detector.update(row).score - threshold + 1e-9 for row in test], dtype=np.float64)


def iforest_margins(
    train: FloatArray, test: FloatArray, seed: int = 0, *, quantile: float = 0.995
) -> FloatArray:
    """IsolationForest fitted on `train`; threshold: the `quantile` of its training scores."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(_filled(train))
    threshold = float(np.quantile(-forest.score_samples(_filled(train)), quantile))
    return np.asarray(-forest.score_samples(_filled(test)) - threshold, dtype=np.float64)


class _AnomalyModelLike(Protocol):
    """What this evaluation uses of `foedus.federation.anomaly.AnomalyModel`."""

    threshold: float

    def score(self, x: FloatArray) -> npt.ArrayLike: ...


def model_margins(train: FloatArray, test: FloatArray, seed: int = 0, *, search: bool = True) -> FloatArray:
    """`foedus.federation.anomaly.AnomalyModel` fitted on `train`; it alerts when ``score >= threshold``."""
    # imported by name: the anomaly model is optional here, and absent from older trees
    anomaly_class = importlib.import_module("foedus.federation.anomaly").AnomalyModel
    model: _AnomalyModelLike = anomaly_class.fit(
        _filled(train), feature_names=list(POD_METRICS), search=search, seed=seed
    )
    scores = np.asarray(model.score(_filled(test)), dtype=np.float64)
    # the model flags ``score >= threshold`` (`AnomalyModel.predict`); the nudge keeps that under "> 0"
    return scores - float(model.threshold) + 1e-12


def budget_offset(normal_margins: FloatArray, normal_hours: float, per_hour: float = 1.0) -> float:
    """The smallest offset c such that ``margin > c`` on at most ``per_hour`` alerts an hour of normal rows."""
    allowed = math.floor(per_hour * normal_hours)
    ordered = np.sort(np.asarray(normal_margins, dtype=np.float64))[::-1]
    if allowed >= len(ordered):
        return -math.inf
    return float(ordered[allowed])


def _filled(x: FloatArray) -> FloatArray:
    """Missing values take the column's last present value (0 before any)."""
    out = np.array(x, dtype=np.float64)
    for j in range(out.shape[1]):
        column = out[:, j]
        present = np.isfinite(column)
        index = np.where(present, np.arange(len(column)), 0)
        np.maximum.accumulate(index, out=index)
        out[:, j] = np.where(present[index], column[index], 0.0)
    return out


def anomaly_model_available() -> bool:
    """Whether `foedus.federation.anomaly.AnomalyModel` can be imported."""
    try:
        module = importlib.import_module("foedus.federation.anomaly")
    except ImportError:
        return False
    return hasattr(module, "AnomalyModel")


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _training_rows(
    days: Sequence[NezhaDay], day: NezhaDay, service: str, *, window_s: float, guard_s: float
) -> tuple[FloatArray, bool]:
    """Rows of `service` outside fault windows (+ guard) on the other days (or this one if alone)."""
    others = [d for d in days if d is not day] or [day]
    parts = []
    for d in others:
        for pod in d.pods.values():
            if pod.service != service:
                continue
            starts = [f.time_s for f in d.faults]
            busy = in_windows(pod.times_s, starts, window_s=window_s + guard_s)
            parts.append(pod.values[~busy])
    rows = np.concatenate(parts) if parts else np.zeros((0, len(POD_METRICS)))
    return rows, others == [day]


def _summary(prefix: str, matches: Sequence[Match], faults_total: int) -> dict[str, float]:
    """Recall over all `faults_total` faults (a fault on a pod that was not run counts as missed)."""
    found = sum(sum(m.found) for m in matches)
    ttd = [t for m in matches for t in m.ttd_s]
    false_alerts = sum(m.false_alerts for m in matches)
    hours = sum(m.normal_hours for m in matches)
    return {
        f"{prefix}nezha_recall": found / faults_total if faults_total else math.nan,
        f"{prefix}nezha_ttd_median_s": float(np.median(ttd)) if ttd else math.nan,
        f"{prefix}nezha_false_alerts_per_h": false_alerts / hours if hours > 0 else math.nan,
    }


def evaluate_nezha(
    data_dir: Path,
    *,
    progress: Progress | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    guard_s: float = 300.0,
    seed: int = 0,
    search: bool = True,
    detectors: Sequence[str] = ("ours", "stat", "iforest"),
    budget_per_h: float = 1.0,
) -> dict[str, float]:
    """Recall, median time to detect and false alerts per hour of each detector (module docstring).

    Keys, for ours (no prefix), ``stat_`` and ``iforest_``: ``<prefix>nezha_recall``,
    ``<prefix>nezha_ttd_median_s``, ``<prefix>nezha_false_alerts_per_h`` and
    ``<prefix>nezha_recall_<fault type>``, and ``<prefix>nezha_recall_at_budget`` /
    ``<prefix>nezha_ttd_median_s_at_budget``: a threshold-free comparison where each detector's
    thresholds (all pods) move by one offset chosen so that it raises `budget_per_h` false alerts
    an hour on the evaluated days (an oracle: the offset is set with the fault labels); plus ``nezha_faults``, ``nezha_pod_days``,
    ``nezha_normal_hours``, ``nezha_in_sample``, ``nezha_seconds``. Ours is left out, with a
    message to `progress`, when `foedus.federation.anomaly` cannot be imported.
    """
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency of the federation extra
        pass
    started = time.perf_counter()
    days = load_nezha(data_dir)
    runners: dict[str, Detector] = {}
    for name in detectors:
        if name == "ours":
            if anomaly_model_available():
                runners[""] = lambda a, b, s: model_margins(a, b, s, search=search)
            elif progress is not None:
                progress("foedus.federation.anomaly is not importable: our detector is skipped")
        elif name == "stat":
            runners["stat_"] = stat_margins
        elif name == "iforest":
            runners["iforest_"] = iforest_margins
        else:
            raise ValueError(f"unknown detector {name!r}")

    per: dict[str, list[Match]] = {prefix: [] for prefix in runners}
    per_kind: dict[str, dict[str, list[bool]]] = {prefix: {} for prefix in runners}
    runs: dict[str, list[tuple[PodSeries, list[Fault], NezhaDay, FloatArray]]] = {p: [] for p in runners}
    kinds: dict[str, int] = {}
    in_sample = False
    faults_total = 0
    pod_days = 0
    for day in days:
        services = {p.service for p in day.pods.values()}
        known = [f for f in day.faults if f.pod in day.pods or f.service in services]
        faults_total += len(known)
        for f in known:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        for pod in day.pods.values():
            mine = [
                f for f in known if f.pod == pod.pod or (f.pod not in day.pods and f.service == pod.service)
            ]
            train, alone = _training_rows(days, day, pod.service, window_s=window_s, guard_s=guard_s)
            in_sample |= alone
            if len(train) < 60:
                if progress is not None:
                    progress(
                        f"{day.name} {pod.pod}: {len(train)} training rows, skipped ({len(mine)} faults)"
                    )
                continue
            pod_days += 1
            for prefix, run in runners.items():
                margins = run(train, pod.values, seed)
                runs[prefix].append((pod, mine, day, margins))
                match = match_alerts(pod.times_s, margins > 0.0, mine, day.faults, window_s=window_s)
                for fault, found in zip(mine, match.found, strict=True):
                    per_kind[prefix].setdefault(fault.kind, []).append(found)
                per[prefix].append(match)
            if progress is not None:
                progress(f"{day.name} {pod.pod}: {len(mine)} faults, {len(train)} training rows")

    out: dict[str, float] = {}
    for prefix in runners:
        out |= _summary(prefix, per[prefix], faults_total)
        for kind, total in sorted(kinds.items()):
            out[f"{prefix}nezha_recall_{kind}"] = sum(per_kind[prefix].get(kind, [])) / total
        # Threshold-free comparison: every pod's threshold moved by one offset per detector so
        # that the detector raises `budget_per_h` false alerts an hour (an oracle, uses the labels).
        normal = [
            m[~in_windows(pod.times_s, [f.time_s for f in day.faults], window_s=window_s)]
            for pod, _, day, m in runs[prefix]
        ]
        hours = sum(len(n) for n in normal) * ROW_S / 3600.0
        offset = budget_offset(np.concatenate(normal) if normal else np.zeros(0), hours, budget_per_h)
        shifted = [
            match_alerts(pod.times_s, m > offset, mine, day.faults, window_s=window_s)
            for pod, mine, day, m in runs[prefix]
        ]
        budget = _summary(prefix, shifted, faults_total)
        out[f"{prefix}nezha_recall_at_budget"] = budget[f"{prefix}nezha_recall"]
        out[f"{prefix}nezha_ttd_median_s_at_budget"] = budget[f"{prefix}nezha_ttd_median_s"]
    first = next(iter(per.values()), [])
    out["nezha_faults"] = float(faults_total)
    out["nezha_pod_days"] = float(pod_days)
    out["nezha_normal_hours"] = float(sum(m.normal_hours for m in first))
    out["nezha_in_sample"] = float(in_sample)
    out["nezha_window_s"] = float(window_s)
    out["nezha_budget_per_h"] = float(budget_per_h)
    out["nezha_seconds"] = time.perf_counter() - started
    if progress is not None:
        progress(f"done in {out['nezha_seconds']:.1f}s")
    return dict(sorted(out.items()))


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(evaluate_nezha, default_data_dir, argv)


if __name__ == "__main__":
    raise SystemExit(main())
