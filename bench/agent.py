"""Benchmark of the agent's three hot paths: anomaly scoring, telemetry ingest, request routing.

Three parts, in one run, on this machine (report its CPU count with the figures):

(a) Anomaly scoring through ONNX, on real data (SMD, `--data-dir`/smd/`--smd-machine`.npz).
    A small MLP autoencoder (38 -> 16 -> 8 -> 16 -> 38, torch) is trained for `--epochs` epochs on
    the machine's `train` array; its score is the mean squared reconstruction error of a row, with
    the per-feature normalisation ((x - mean) / std of the train data) inside the graph. It is
    exported to ONNX (`torch.onnx.export(..., dynamo=False)`, dynamic batch axis) and run with
    onnxruntime's CPUExecutionProvider, intra_op_num_threads=1 and inter_op_num_threads=1 (one core).
    Measured on rows of the machine's `test` array:
      * `score_p50_us`, `score_p99_us`: one `session.run` on a batch of 1 row (one interval), timed
        call by call with perf_counter over `--score-runs` calls (after a warm-up);
      * `score_rows_per_s`: `session.run` on batches of `--batch` rows, for `--score-seconds` s.
    Side by side, same rows, same process: the same torch model in eager mode
    (torch.set_num_threads(1), torch.inference_mode()) -> `torch_score_p50_us`,
    `torch_score_rows_per_s`; and scikit-learn's IsolationForest (defaults, n_jobs=1) fitted on the
    same train array, `score_samples` on the same batches -> `iforest_score_rows_per_s`.
    Ratios: `score_vs_torch_ratio` = ONNX rows/s / torch rows/s, `score_vs_iforest_ratio` =
    ONNX rows/s / IsolationForest rows/s (above 1: ONNX scores more rows per second). As a check
    that the scorer is a real one, the ROC AUC of both scorers on `test` vs `test_label` is reported
    (`ae_test_auc`, `iforest_test_auc`; per point, no point adjustment). Without the data the part
    is skipped and its figures are left out.

(b) Telemetry ingest. The Foedus control plane runs as a subprocess (`foedus.server.app.main`,
    SQLite in a temporary directory, `--workers` processes); the script creates a tenant, registers a
    small ONNX model (logistic regression on iris), creates a deployment "bench" and an agent key.
    Then `--ingest-clients` (4) client processes, each with its own channel, each keep one
    `AgentService.ReportTelemetry` stream open and send `TelemetryBatch`es of about `--points` (5,000)
    points as `MetricSeries` (one packed column chunk per metric name, the bulk path), one at a time: the next batch goes out when the previous one's ack (sent by the
    server after its commit) has come back. Only acknowledged, non-duplicate points that were sent
    after the start count, for `--ingest-seconds` s -> `ingest_points_per_s`; the time from sending
    a batch to its ack -> `ingest_batch_p50_ms`. Each client cycles through 8 prebuilt batches (38
    metric names, distinct timestamps and steps within a batch) and gives each send a new batch_id.
    The peer, in the same run and after Foedus has stopped: `mlflow server` (SQLite backend, its
    defaults, from the MLflow venv of bench/registry.py), the same number of client processes, each
    with a run of its own, sending `POST /api/2.0/mlflow/runs/log-batch` with 1,000 metrics per
    call (MLflow's limit), one call at a time, a new TCP connection per call (which avoids the
    ~40 ms delayed-ACK stall a kept-alive connection gets from `mlflow server`, see bench/README.md)
    -> `mlflow_ingest_points_per_s`; `ingest_ratio` = Foedus / MLflow. The CPU used by each
    server's process tree during the phase is reported in cores (`*_server_cpu_cores`).

(c) Routing overhead of the agent's serving path. One model (logistic regression on iris, ONNX,
    CPUExecutionProvider, intra_op_num_threads=1), one input (1 row, 4 FP32 features, sent as
    raw_input_contents), compared four ways, all servers in one separate process on 127.0.0.1, one
    synchronous gRPC client in this process issuing ModelInfer back to back:
      * `bare_ort_p50_us`: `session.run` called directly (no gRPC), in this process;
      * `bare_grpc_p50_us`: a minimal grpc.aio GRPCInferenceService whose ModelInfer decodes the raw
        input with numpy, calls `session.run` inline on the event loop and returns the outputs raw;
      * `agent_p50_us`: `foedus.client_sdk.agent.serving.InferenceServicer` over a `ModelTable` with
        one `Route` (one version, weight 1), configured as the agent runs it: a ThreadPoolExecutor
        of 4 for the model runs and the agent's `IntervalAggregator` as request observer;
      * where the difference goes: `bare_grpc_executor_p50_us` (the minimal servicer, but the run
        goes through `loop.run_in_executor` as the agent's does) and `agent_no_observer_p50_us`
        (the agent's servicer without the observer).
    `routing_overhead_pct` = (agent p50 - bare gRPC p50) / bare gRPC p50 x 100. The servers are
    measured in alternating rounds (`--rounds`) of `--infer-runs` calls each, so drift in the
    machine's speed hits all of them alike; p50/p99 are over all rounds.

Run (from the repository root):

    .venv/bin/python bench/agent.py                          # all three parts, table on stdout
    .venv/bin/python bench/agent.py --json /tmp/agent.json   # also one flat JSON object of numbers
    .venv/bin/python bench/agent.py --parts a,c              # anomaly scoring and routing only

The whole run is bounded by `--max-seconds`; every server and client process it starts is stopped
at the end, also on errors and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
METRIC_NAMES = [f"smd_metric_{i:02d}" for i in range(38)]
TEMPLATES_PER_CLIENT = 8
MLFLOW_BATCH = 1000


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_registry_bench() -> ModuleType:
    """bench/registry.py as a module: server start/stop, the MLflow venv, small helpers."""
    path = Path(__file__).resolve().parent / "registry.py"
    spec = importlib.util.spec_from_file_location("foedus_bench_registry", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, on a sorted copy (q in [0, 100])."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ratio(a: float | None, b: float | None) -> float:
    return round(a / b, 3) if a is not None and b else float("nan")


def ort_session(model: bytes | str, threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def iris_onnx() -> tuple[bytes, Any]:
    """A logistic regression on iris as ONNX bytes (outputs label, probabilities); iris' features."""
    import numpy as np
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        options={id(clf): {"zipmap": False}},
    )
    return onx.SerializeToString(), x


# ================================================================================================
# (a) anomaly scoring
# ================================================================================================


def find_smd(data_dir: Path, machine: str) -> Path | None:
    path = data_dir / "smd" / f"{machine}.npz"
    return path if path.is_file() else None


def time_calls(fn: Any, runs: int, warmup: int) -> list[float]:
    """Per-call wall time of fn() in microseconds."""
    for _ in range(warmup):
        fn()
    perf = time.perf_counter_ns
    out = [0.0] * runs
    for i in range(runs):
        t0 = perf()
        fn()
        out[i] = (perf() - t0) / 1000.0
    return out


def rows_per_s(fn: Any, rows: int, seconds: float) -> float:
    fn()  # warm-up
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * rows / elapsed


def bench_scoring(args: argparse.Namespace, path: Path) -> dict[str, float]:
    import numpy as np
    import torch
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = np.load(path)
    train = np.ascontiguousarray(data["train"], dtype=np.float32)
    test = np.ascontiguousarray(data["test"], dtype=np.float32)
    labels = data["test_label"].astype(np.int64)
    features = train.shape[1]
    log(f"(a) {path.name}: train {train.shape}, test {test.shape}, {int(labels.sum())} anomalous test points")

    mean = train.mean(axis=0)
    std = np.maximum(train.std(axis=0), 1e-3)  # constant columns: no division blow-up

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("std", torch.from_numpy(std))
            self.net = torch.nn.Sequential(
                torch.nn.Linear(features, 16),
                torch.nn.ReLU(),
                torch.nn.Linear(16, 8),
                torch.nn.ReLU(),
                torch.nn.Linear(8, 16),
                torch.nn.ReLU(),
                torch.nn.Linear(16, features),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = (x - self.mean) / self.std
            return ((self.net(z) - z) ** 2).mean(dim=1)

    model = Scorer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt = torch.from_numpy(train)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), 256):
            loss = model(xt[perm[i : i + 256]]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(perm[i : i + 256])
        log(f"(a) epoch {epoch + 1}/{args.epochs}: train loss {total / len(xt):.4f}")
    train_s = time.perf_counter() - t0
    model.eval()

    with tempfile.TemporaryDirectory(prefix="foedus-bench-ae-") as tmp:
        onnx_path = Path(tmp) / "scorer.onnx"
        torch.onnx.export(
            model,
            (torch.from_numpy(train[:2]),),
            str(onnx_path),
            input_names=["x"],
            output_names=["score"],
            dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
            dynamo=False,
        )
        session = ort_session(str(onnx_path))
    one = test[:1]
    batch = test[: args.batch] if len(test) >= args.batch else np.resize(test, (args.batch, features))
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).numpy()
    got = session.run(None, {"x": batch})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)  # same model, same scores

    out: dict[str, float] = {"score_train_s": train_s}
    # Batch-1 latency: the same 1-row array each call (one interval's vector).
    log(
        f"(a) onnxruntime: {args.score_runs} batch-1 runs, then batches of {args.batch} for {args.score_seconds:g} s"
    )
    lat = time_calls(lambda: session.run(None, {"x": one}), args.score_runs, 1000)
    out["score_p50_us"] = percentile(lat, 50)
    out["score_p99_us"] = percentile(lat, 99)
    out["score_rows_per_s"] = rows_per_s(
        lambda: session.run(None, {"x": batch}), len(batch), args.score_seconds
    )

    log("(a) torch eager, same model, one thread")
    one_t, batch_t = torch.from_numpy(one), torch.from_numpy(batch)
    with torch.inference_mode():
        lat_t = time_calls(lambda: model(one_t), args.score_runs, 1000)
        out["torch_score_p50_us"] = percentile(lat_t, 50)
        out["torch_score_p99_us"] = percentile(lat_t, 99)
        out["torch_score_rows_per_s"] = rows_per_s(lambda: model(batch_t), len(batch), args.score_seconds)

    log("(a) IsolationForest (defaults, n_jobs=1): fit on train, score_samples on the same batches")
    forest = IsolationForest(n_jobs=1, random_state=0).fit(train)
    out["iforest_score_rows_per_s"] = rows_per_s(
        lambda: forest.score_samples(batch), len(batch), args.score_seconds
    )
    lat_f = time_calls(lambda: forest.score_samples(one), min(args.score_runs, 500), 20)
    out["iforest_score_p50_us"] = percentile(lat_f, 50)

    if 0 < labels.sum() < len(labels):
        ae_scores = np.concatenate(
            [session.run(None, {"x": test[i : i + 4096]})[0] for i in range(0, len(test), 4096)]
        )
        out["ae_test_auc"] = float(roc_auc_score(labels, ae_scores))
        out["iforest_test_auc"] = float(roc_auc_score(labels, -forest.score_samples(test)))
    out["score_vs_torch_ratio"] = ratio(out["score_rows_per_s"], out["torch_score_rows_per_s"])
    out["score_vs_iforest_ratio"] = ratio(out["score_rows_per_s"], out["iforest_score_rows_per_s"])
    out["score_batch"] = len(batch)
    return out


# ================================================================================================
# (b) telemetry ingest
# ================================================================================================


def _foedus_ingest_client(
    target: str, key: str, agent: str, points: int, go: Any, deadline: Any, results: Any
) -> None:
    """One client process: one ReportTelemetry stream, one batch in flight, until `deadline`."""
    import grpc

    from foedus.v1 import agent_pb2, agent_pb2_grpc

    try:
        base_ms = int(time.time() * 1000)
        templates = []
        per_series = points // len(METRIC_NAMES)
        for t in range(TEMPLATES_PER_CLIENT):
            b = agent_pb2.TelemetryBatch(deployment="bench", agent=agent)
            for name in METRIC_NAMES:
                steps = [t * per_series + i for i in range(per_series)]
                b.series.add(
                    name=name,
                    time_unix_ms=[base_ms + st for st in steps],
                    values=[float((st * 7919) % 1000) / 1000.0 for st in steps],
                    steps=steps,
                )
            templates.append(b)
        channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        outbox: queue.Queue[Any] = queue.Queue()

        def requests() -> Any:
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        def make(n: int) -> Any:
            req = agent_pb2.ReportTelemetryRequest(batch=templates[n % TEMPLATES_PER_CLIENT])
            req.batch.batch_id = f"{agent}-{n}-{uuid.uuid4().hex[:8]}"
            return req

        metadata = (("authorization", f"Bearer {key}"),)
        # Warm-up: a few batches on their own stream, not counted.
        acks = stub.ReportTelemetry(iter([make(-1 - i) for i in range(2)]), metadata=metadata, timeout=120)
        for _ in acks:
            pass
        results.put(("ready", os.getpid(), None))
        if not go.wait(timeout=600):
            return
        end_at = deadline.value
        perf = time.perf_counter
        latencies: list[float] = []
        acked = duplicates = 0
        n = 0
        start = perf()
        sent_at = perf()
        outbox.put(make(n))
        responses = stub.ReportTelemetry(requests(), metadata=metadata, timeout=end_at - start + 120)
        for resp in responses:
            now = perf()
            latencies.append((now - sent_at) * 1000.0)
            if resp.duplicate:
                duplicates += 1
            else:
                acked += per_series * len(METRIC_NAMES)
            if now >= end_at:
                outbox.put(None)
                continue
            n += 1
            sent_at = perf()
            outbox.put(make(n))
        end = perf()
        channel.close()
        results.put(
            (
                "done",
                os.getpid(),
                {"points": acked, "dup": duplicates, "lat": latencies, "start": start, "end": end},
            )
        )
    except Exception:
        results.put(("failed", os.getpid(), traceback.format_exc(limit=4)))


def _mlflow_ingest_client(
    address: str, run_id: str, registry_path: str, go: Any, deadline: Any, results: Any
) -> None:
    """One client process: log-batch calls of 1,000 metrics into its own run, one at a time."""
    try:
        spec = importlib.util.spec_from_file_location("foedus_bench_registry", registry_path)
        assert spec is not None
        assert spec.loader is not None
        reg = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = reg
        spec.loader.exec_module(reg)
        http = reg.MlflowHttp(address, new_connection=True)
        base_ms = int(time.time() * 1000)
        step = 0

        def body() -> dict[str, Any]:
            nonlocal step
            metrics = []
            for i in range(MLFLOW_BATCH):
                if i % len(METRIC_NAMES) == 0:
                    step += 1
                metrics.append(
                    {
                        "key": METRIC_NAMES[i % len(METRIC_NAMES)],
                        "value": float((step * 7919 + i) % 1000) / 1000.0,
                        "timestamp": base_ms + step,
                        "step": step,
                    }
                )
            return {"run_id": run_id, "metrics": metrics}

        path = "/api/2.0/mlflow/runs/log-batch"
        for _ in range(2):  # warm-up, not counted
            http.call("POST", path, body())
        results.put(("ready", os.getpid(), None))
        if not go.wait(timeout=600):
            return
        end_at = deadline.value
        perf = time.perf_counter
        latencies: list[float] = []
        points = 0
        start = perf()
        while True:
            payload = body()
            t0 = perf()
            http.call("POST", path, payload)
            now = perf()
            latencies.append((now - t0) * 1000.0)
            points += MLFLOW_BATCH
            if now >= end_at:
                break
        results.put(
            ("done", os.getpid(), {"points": points, "dup": 0, "lat": latencies, "start": start, "end": now})
        )
    except Exception:
        results.put(("failed", os.getpid(), traceback.format_exc(limit=4)))


def run_clients(
    target: Any, arg_list: list[tuple[Any, ...]], seconds: float, server_pid: int, reg: ModuleType
) -> dict[str, float]:
    """Starts one spawned process per args tuple, waits until all are ready, runs them together."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    deadline = ctx.Value("d", 0.0)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, go, deadline, results), daemon=True) for a in arg_list]
    for p in procs:
        p.start()
    done: list[dict[str, Any]] = []
    try:
        ready = 0
        start_by = time.monotonic() + 180
        while ready < len(procs):
            try:
                kind, pid, payload = results.get(timeout=1.0)
            except queue.Empty:
                if any(p.exitcode is not None for p in procs) or time.monotonic() > start_by:
                    raise RuntimeError("client processes did not start") from None
                continue
            if kind != "ready":
                raise RuntimeError(f"client process {pid} failed:\n{payload}")
            ready += 1
        cpu0 = reg.process_tree_cpu_s(server_pid)
        t0 = time.perf_counter()
        deadline.value = t0 + seconds
        go.set()
        while len(done) < len(procs):
            try:
                kind, pid, payload = results.get(timeout=seconds + 180)
            except queue.Empty:
                raise RuntimeError("client processes did not finish in time") from None
            if kind == "failed":
                raise RuntimeError(f"client process {pid} failed:\n{payload}")
            done.append(payload)
        server_cpu = reg.process_tree_cpu_s(server_pid) - cpu0
    finally:
        go.set()
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    elapsed = max(d["end"] for d in done) - min(d["start"] for d in done)
    lat = [x for d in done for x in d["lat"]]
    return {
        "points_per_s": sum(d["points"] for d in done) / elapsed,
        "batch_p50_ms": percentile(lat, 50),
        "batch_p99_ms": percentile(lat, 99),
        "batches": len(lat),
        "duplicates": sum(d["dup"] for d in done),
        "server_cpu_cores": server_cpu / elapsed,
        "elapsed_s": elapsed,
    }


def bench_ingest_foedus(args: argparse.Namespace, reg: ModuleType, workdir: Path) -> dict[str, float]:
    import grpc

    from foedus.client_sdk import Client
    from foedus.v1 import deployment_pb2, deployment_pb2_grpc

    data_dir = workdir / "foedus" / "data"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log(f"(b) foedus: starting the server (SQLite in {data_dir}, workers={args.workers})")
    server = reg.start_foedus(data_dir, 3, args.workers)
    try:
        reg.wait_until_quiet(server)
        admin_key = (data_dir / "admin.key").read_text().strip()
        with Client.connect(server.address, api_key=admin_key) as admin:
            owner_key = admin.tenants.create("bench").owner_key_secret
        model_path = workdir / "iris.onnx"
        model_path.write_bytes(iris_onnx()[0])
        with Client.connect(server.address, api_key=owner_key) as owner:
            owner.models.register("iris", model_path)
            agent_key = owner.keys.create("agent", description="bench").secret
        with grpc.insecure_channel(server.address) as channel:
            deployment_pb2_grpc.DeploymentServiceStub(channel).CreateDeployment(
                deployment_pb2.CreateDeploymentRequest(
                    name="bench", model="iris", traffic=[deployment_pb2.TrafficSplit(version=1, weight=1)]
                ),
                metadata=(("authorization", "Bearer " + owner_key),),
            )
        log(
            f"(b) foedus: {args.ingest_clients} clients x batches of {args.points:,} points, "
            f"{args.ingest_seconds:g} s"
        )
        res = run_clients(
            _foedus_ingest_client,
            [
                (server.address, agent_key, f"bench-agent-{i}", args.points)
                for i in range(args.ingest_clients)
            ],
            args.ingest_seconds,
            server.proc.pid,
            reg,
        )
        log(
            f"(b) foedus: {res['points_per_s']:,.0f} points/s, batch p50 {res['batch_p50_ms']:.1f} ms, "
            f"server {res['server_cpu_cores']:.2f} cores"
        )
        return {
            "ingest_points_per_s": res["points_per_s"],
            "ingest_batch_p50_ms": res["batch_p50_ms"],
            "ingest_batch_p99_ms": res["batch_p99_ms"],
            "ingest_batches": res["batches"],
            "ingest_duplicates": res["duplicates"],
            "ingest_server_cpu_cores": res["server_cpu_cores"],
        }
    finally:
        server.stop()


def bench_ingest_mlflow(args: argparse.Namespace, reg: ModuleType, workdir: Path) -> dict[str, float]:
    venv = Path(args.mlflow_venv)
    version = reg.ensure_mlflow_venv(venv, "mlflow")
    data_dir = workdir / "mlflow"
    data_dir.mkdir(parents=True, exist_ok=True)
    log(f"(b) mlflow: starting `mlflow server` {version} (SQLite, its defaults)")
    server = reg.start_mlflow(venv, data_dir)
    try:
        reg.wait_until_quiet(server)
        h = reg.MlflowHttp(server.address)
        runs = [
            h.call("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": "0", "run_name": f"bench-{i}"})[
                "run"
            ]["info"]["run_id"]
            for i in range(args.ingest_clients)
        ]
        h.close()
        log(
            f"(b) mlflow: {args.ingest_clients} clients x log-batch of {MLFLOW_BATCH} metrics, {args.ingest_seconds:g} s"
        )
        registry_path = str(Path(__file__).resolve().parent / "registry.py")
        res = run_clients(
            _mlflow_ingest_client,
            [(server.address, run_id, registry_path) for run_id in runs],
            args.ingest_seconds,
            server.proc.pid,
            reg,
        )
        log(
            f"(b) mlflow: {res['points_per_s']:,.0f} points/s, call p50 {res['batch_p50_ms']:.1f} ms, "
            f"server {res['server_cpu_cores']:.2f} cores"
        )
        return {
            "mlflow_ingest_points_per_s": res["points_per_s"],
            "mlflow_ingest_batch_p50_ms": res["batch_p50_ms"],
            "mlflow_ingest_server_cpu_cores": res["server_cpu_cores"],
        }
    finally:
        server.stop()


# ================================================================================================
# (c) routing overhead
# ================================================================================================

SERVER_KINDS = ("bare_grpc", "bare_grpc_executor", "agent_no_observer", "agent")


def _serve_inference(model: bytes, ports: Any, stop: Any) -> None:
    """Server process: the four GRPCInferenceService variants, each on its own port, one event loop."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import numpy as np

    from foedus.client_sdk.agent.serving import InferenceServicer, LoadedModel, ModelTable, Route
    from foedus.client_sdk.agent.telemetry import IntervalAggregator
    from foedus.oip.v2 import inference_pb2, inference_pb2_grpc

    session = ort_session(model)
    out_names = [o.name for o in session.get_outputs()]
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}

    class Bare(inference_pb2_grpc.GRPCInferenceServiceServicer):
        """Decodes the raw input, runs the session, returns the outputs raw; nothing else."""

        def __init__(self, executor: Any = None) -> None:
            self._executor = executor

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            t = request.inputs[0]
            x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(tuple(t.shape))
            feeds = {t.name: x}
            if self._executor is None:
                outputs = session.run(out_names, feeds)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, session.run, out_names, feeds)
            resp = inference_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
            for name, arr in zip(out_names, outputs, strict=True):
                resp.outputs.add(name=name, datatype=datatypes.get(arr.dtype, "FP32"), shape=list(arr.shape))
                resp.raw_output_contents.append(arr.tobytes())
            return resp

    async def main() -> None:
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="foedus-agent")
        table = ModelTable()
        table.set_route(
            "iris",
            Route.build(
                {"1": LoadedModel.from_session("iris", "1", session, p50_ms=_load_p50_ms(model))}, {"1": 1.0}
            ),
        )
        servicers = {
            "bare_grpc": Bare(),
            "bare_grpc_executor": Bare(executor),
            "agent_no_observer": InferenceServicer(table, executor),
            "agent": InferenceServicer(table, executor, observer=IntervalAggregator()),
        }
        servers = []
        for kind in SERVER_KINDS:
            server = grpc.aio.server()
            inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicers[kind], server)
            ports[kind] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
        ports["ready"] = 1
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for server in servers:
            await server.stop(0)
        executor.shutdown(wait=False)

    asyncio.run(main())


def _load_p50_ms(model: bytes) -> float:
    """The latency the agent measures when it loads a version (it decides where the model runs)."""
    import tempfile

    from foedus.client_sdk.agent.providers import select_session

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        path.write_bytes(model)
        _, choice = select_session(path, candidates=["CPUExecutionProvider"])
    return float(choice.p50_ms)


def bench_routing(args: argparse.Namespace) -> dict[str, float]:
    import grpc
    import numpy as np

    from foedus.oip.v2 import inference_pb2, inference_pb2_grpc

    model, x_all = iris_onnx()
    x = np.ascontiguousarray(x_all[:1])
    session = ort_session(model)
    out_names = [o.name for o in session.get_outputs()]
    log(f"(c) bare onnxruntime: {args.infer_runs * args.rounds} session.run calls")
    bare = time_calls(lambda: session.run(out_names, {"input": x}), args.infer_runs * args.rounds, 500)

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    try:
        ports = manager.dict()
        stop = ctx.Event()
        proc = ctx.Process(target=_serve_inference, args=(model, ports, stop), daemon=True)
        proc.start()
        try:
            end = time.monotonic() + 120
            while "ready" not in ports:
                if proc.exitcode is not None or time.monotonic() > end:
                    raise RuntimeError(f"inference server process did not start (exit {proc.exitcode})")
                time.sleep(0.1)
            req = inference_pb2.ModelInferRequest(model_name="iris", id="r")
            req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
            req.raw_input_contents.append(x.astype("<f4").tobytes())
            channels = {k: grpc.insecure_channel(f"127.0.0.1:{ports[k]}") for k in SERVER_KINDS}
            stubs = {k: inference_pb2_grpc.GRPCInferenceServiceStub(c) for k, c in channels.items()}
            expected = session.run(["label"], {"input": x})[0]
            for kind, stub in stubs.items():
                resp = stub.ModelInfer(req, timeout=10)
                i = [o.name for o in resp.outputs].index("label")
                got = np.frombuffer(resp.raw_output_contents[i], dtype="<i8")
                if got.tolist() != expected.tolist():
                    raise RuntimeError(f"{kind}: label {got} != onnxruntime's {expected}")
            lat: dict[str, list[float]] = {k: [] for k in SERVER_KINDS}
            log(
                f"(c) gRPC: {args.rounds} rounds x {len(SERVER_KINDS)} servers x {args.infer_runs} ModelInfer "
                "calls, one client, back to back"
            )
            for _ in range(args.rounds):
                for kind in SERVER_KINDS:
                    call = stubs[kind].ModelInfer
                    lat[kind] += time_calls(lambda call=call: call(req, timeout=10), args.infer_runs, 200)
            for c in channels.values():
                c.close()
        finally:
            stop.set()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    finally:
        manager.shutdown()
    out: dict[str, float] = {
        "bare_ort_p50_us": percentile(bare, 50),
        "bare_ort_p99_us": percentile(bare, 99),
    }
    for kind in SERVER_KINDS:
        out[f"{kind}_p50_us"] = percentile(lat[kind], 50)
        out[f"{kind}_p99_us"] = percentile(lat[kind], 99)
    base = out["bare_grpc_p50_us"]
    out["routing_overhead_pct"] = (out["agent_p50_us"] - base) / base * 100.0
    out["routing_overhead_us"] = out["agent_p50_us"] - base
    return out


# ================================================================================================
# Report
# ================================================================================================

TABLE: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "(a) anomaly scoring, one core",
        [
            ("ONNX score p50, 1 row (us)", "score_p50_us", "{:,.1f}"),
            ("ONNX score p99, 1 row (us)", "score_p99_us", "{:,.1f}"),
            ("torch eager p50, 1 row (us)", "torch_score_p50_us", "{:,.1f}"),
            ("IsolationForest p50, 1 row (us)", "iforest_score_p50_us", "{:,.1f}"),
            ("ONNX rows/s, batched", "score_rows_per_s", "{:,.0f}"),
            ("torch eager rows/s, batched", "torch_score_rows_per_s", "{:,.0f}"),
            ("IsolationForest rows/s, batched", "iforest_score_rows_per_s", "{:,.0f}"),
            ("ONNX / torch rows/s", "score_vs_torch_ratio", "{:.2f}x"),
            ("ONNX / IsolationForest rows/s", "score_vs_iforest_ratio", "{:.2f}x"),
            ("autoencoder test ROC AUC", "ae_test_auc", "{:.3f}"),
            ("IsolationForest test ROC AUC", "iforest_test_auc", "{:.3f}"),
        ],
    ),
    (
        "(b) telemetry ingest",
        [
            ("Foedus points/s (acked)", "ingest_points_per_s", "{:,.0f}"),
            ("MLflow points/s (log-batch)", "mlflow_ingest_points_per_s", "{:,.0f}"),
            ("Foedus / MLflow", "ingest_ratio", "{:.2f}x"),
            ("Foedus batch send->ack p50 (ms)", "ingest_batch_p50_ms", "{:,.1f}"),
            ("Foedus batch send->ack p99 (ms)", "ingest_batch_p99_ms", "{:,.1f}"),
            ("MLflow log-batch p50 (ms)", "mlflow_ingest_batch_p50_ms", "{:,.1f}"),
            ("Foedus server CPU (cores)", "ingest_server_cpu_cores", "{:.2f}"),
            ("MLflow server CPU (cores)", "mlflow_ingest_server_cpu_cores", "{:.2f}"),
        ],
    ),
    (
        "(c) routing, ModelInfer p50 on loopback",
        [
            ("bare session.run p50 (us)", "bare_ort_p50_us", "{:,.1f}"),
            ("bare gRPC, inline run p50 (us)", "bare_grpc_p50_us", "{:,.1f}"),
            ("bare gRPC, run in executor p50 (us)", "bare_grpc_executor_p50_us", "{:,.1f}"),
            ("agent, no observer p50 (us)", "agent_no_observer_p50_us", "{:,.1f}"),
            ("agent (as it runs) p50 (us)", "agent_p50_us", "{:,.1f}"),
            ("agent (as it runs) p99 (us)", "agent_p99_us", "{:,.1f}"),
            ("routing overhead vs bare gRPC", "routing_overhead_pct", "{:+.1f} %"),
        ],
    ),
]


def print_table(out: dict[str, float]) -> None:
    for title, rows in TABLE:
        shown = [(label, key, fmt) for label, key, fmt in rows if key in out and math.isfinite(out[key])]
        if not shown:
            continue
        print(title)
        print("-" * 52)
        for label, key, fmt in shown:
            print(f"  {label:36} {fmt.format(out[key]):>14}")
        print()


# ================================================================================================
# Main
# ================================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/agent.py",
        description=(
            "The agent's hot paths on this machine: (a) anomaly scoring through ONNX on SMD data vs torch "
            "eager and IsolationForest, one core; (b) telemetry ingest (AgentService.ReportTelemetry, "
            "acknowledged metric points/s) vs an MLflow server's log-batch; (c) the agent's ModelInfer "
            "serving path vs a bare onnxruntime gRPC servicer. The module docstring says exactly what is "
            "compared."
        ),
        epilog="Example: .venv/bin/python bench/agent.py --json /tmp/agent.json",
    )
    p.add_argument("--parts", default="a,b,c", help="which parts to run, comma-separated (%(default)s)")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("FOEDUS_DATA_DIR", str(REPO.parent / "shared" / "data")),
        help="the shared real data; SMD is read from DATA_DIR/smd (env FOEDUS_DATA_DIR; %(default)s)",
    )
    p.add_argument(
        "--smd-machine",
        default="machine-1-1",
        help="SMD machine file for (a), without .npz; when absent, the first machine-*.npz there is used "
        "and the table says which (%(default)s)",
    )
    p.add_argument("--epochs", type=int, default=5, help="(a) autoencoder training epochs (%(default)s)")
    p.add_argument("--score-runs", type=int, default=20_000, help="(a) timed batch-1 calls (%(default)s)")
    p.add_argument("--batch", type=int, default=4096, help="(a) rows per batched call (%(default)s)")
    p.add_argument(
        "--score-seconds",
        type=float,
        default=3.0,
        help="(a) seconds per batched throughput figure (%(default)s)",
    )
    p.add_argument(
        "--ingest-clients", type=int, default=4, help="(b) client processes per side (%(default)s)"
    )
    p.add_argument(
        "--points", type=int, default=20_000, help="(b) metric points per Foedus batch (%(default)s)"
    )
    p.add_argument("--ingest-seconds", type=float, default=10.0, help="(b) seconds per side (%(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="(b) the Foedus server's worker processes (%(default)s, one per core, as bench/registry.py)",
    )
    p.add_argument("--skip-mlflow", action="store_true", help="(b) Foedus only; MLflow figures left out")
    p.add_argument(
        "--mlflow-venv",
        default=str(REPO / ".bench" / "mlflow-venv"),
        help="(b) virtual environment with MLflow, created once when missing (%(default)s)",
    )
    p.add_argument(
        "--infer-runs", type=int, default=2000, help="(c) ModelInfer calls per server per round (%(default)s)"
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="(c) alternating rounds over the servers (%(default)s)"
    )
    p.add_argument(
        "--max-seconds",
        type=int,
        default=900,
        help="the whole run stops (and cleans up) after this (%(default)s)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH as one flat JSON object")
    args = p.parse_args(argv)
    args.parts = {s.strip() for s in args.parts.split(",") if s.strip()}
    if not args.parts <= {"a", "b", "c"}:
        p.error("--parts takes a, b and c")
    if (
        min(
            args.epochs,
            args.score_runs,
            args.batch,
            args.ingest_clients,
            args.points,
            args.infer_runs,
            args.rounds,
        )
        < 1
    ):
        p.error("counts must be positive")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally`s that stop servers and clients


def main(argv: list[str] | None = None) -> int:
    try:
        import foedus.client_sdk  # noqa: F401
    except ImportError:
        raise SystemExit(f"the Foedus SDK is not importable; run with {PROJECT_PYTHON}") from None
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _terminate)
    signal.alarm(args.max_seconds)
    reg = load_registry_bench()
    out: dict[str, float] = {"cpu_count": os.cpu_count() or 0}
    notes: list[str] = []
    rc = 0

    if "a" in args.parts:
        smd = Path(args.data_dir) / "smd"
        path = find_smd(Path(args.data_dir), args.smd_machine)
        if path is None and smd.is_dir():
            others = sorted(smd.glob("machine-*.npz"))
            if others:
                path = others[0]
                notes.append(f"(a) {args.smd_machine}.npz is not in {smd}; used {path.name} instead")
                log(notes[-1])
        if path is None:
            notes.append(f"(a) skipped: no SMD data in {smd} (set --data-dir or FOEDUS_DATA_DIR)")
            log(notes[-1])
        else:
            out.update(bench_scoring(args, path))
            notes.append(f"(a) data: {path}")

    if "b" in args.parts:
        with tempfile.TemporaryDirectory(prefix="foedus-bench-agent-") as tmp:
            try:
                out.update(bench_ingest_foedus(args, reg, Path(tmp)))
            except Exception as exc:
                log(f"(b) foedus: FAILED: {exc}")
                rc = 1
            if not args.skip_mlflow:
                try:
                    out.update(bench_ingest_mlflow(args, reg, Path(tmp)))
                except Exception as exc:
                    log(f"(b) mlflow: FAILED: {exc}")
                    rc = 1
        if "ingest_points_per_s" in out and "mlflow_ingest_points_per_s" in out:
            out["ingest_ratio"] = ratio(out["ingest_points_per_s"], out["mlflow_ingest_points_per_s"])
        out.update({"ingest_clients": args.ingest_clients, "ingest_points_per_batch": args.points})
        out["ingest_workers"] = args.workers

    if "c" in args.parts:
        out.update(bench_routing(args))
    signal.alarm(0)

    print()
    print(f"Foedus commit: {reg.git_revision()}; {os.cpu_count()} CPUs (servers and clients share them)")
    for note in notes:
        print(f"  {note}")
    print()
    print_table(out)
    if args.json:
        plain = {k: round(v, 4) for k, v in out.items() if math.isfinite(v)}
        Path(args.json).write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
        log(f"wrote {args.json}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
