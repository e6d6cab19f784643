"""Side-by-side benchmark of the Foedus model registry and an MLflow model registry server.

What it measures, for each side, with each server in its own process on this machine (one server
at a time, so they never compete for the CPU):

* registrations per second: one client registering versions of one model back to back.
  Foedus: `client.models.register(...)` of a small ONNX model (logistic regression on iris) with
  an alias, lineage and a reference profile; the server streams in the file, checks it, runs the
  ONNX gates (validity, signature, a CPU latency profile of `--latency-runs` runs) and records the
  version. MLflow: the REST calls that register an already logged model and point the alias at it
  (`model-versions/create` with a source inside a run's artifact directory and a tag, then
  `registered-models/alias`); MLflow neither receives nor checks the file.
* reads driven by h2load (nghttp2's load generator in C, when installed: `apt-get install
  nghttp2-client`): the same reads from `--clients` connections, one request in flight on each,
  so that the client side costs microseconds per request and the figure is the server's.
  `read_ratio_16_server` compares the servers' capacities conservatively: Foedus under h2load
  against the better of MLflow's two 16-client figures (h2load or the Python clients).
* reads: GetModelVersion (Foedus, unary gRPC) and `GET /api/2.0/mlflow/model-versions/get`
  (MLflow, HTTP/1.1 keep-alive) of version 1, with 1 client and with `--clients` (16) concurrent
  clients. Every client has its own connection and issues its next request when the previous one
  has answered (closed loop). The clients run in `--client-procs` separate processes (threads in
  each), so the client side's GIL is not what limits the figure; both sides run the same harness.
  Reported: reads/s over all clients, and the per-request latency p50/p99 in ms.
  Each phase is bounded by `--duration` seconds and by `--max-requests`.

The CPU time of the server (its whole process tree) and of the client processes is sampled over
every read phase; on a small machine the clients share the cores with the server, so the table
shows both, to tell whether a figure is bound by the server or by the harness.

Ratios are Foedus / MLflow: above 1 means Foedus does more per second.

Run (from the repository root; MLflow is installed once into its own virtual environment,
`.bench/mlflow-venv`, never into the project's):

    .venv/bin/python bench/registry.py                      # both sides, table on stdout
    .venv/bin/python bench/registry.py --json /tmp/reg.json # also one flat JSON object of numbers
    .venv/bin/python bench/registry.py --skip-mlflow --duration 5
    .venv/bin/python bench/registry.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing as mp
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_MLFLOW_VENV = REPO / ".bench" / "mlflow-venv"
MODEL = "bench-model"
ALIAS = "production"
CODE_REVISION = "abc"
WARMUP_READS = 20
GO_TIMEOUT_S = 600.0

FOEDUS_SERVER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from foedus.server.config import load_config
from foedus.server.app import main
main(load_config(env={{}}, data_dir=Path({data_dir!r}), listen={listen!r},
                 latency_runs={latency_runs}, workers={workers}, db={db!r}))
"""

BARE_GRPC_SERVER_SCRIPT = """
import asyncio, os, sys
import grpc
payload = open({payload!r}, "rb").read()
for _ in range({workers} - 1):  # one process per worker on one port, forked before gRPC starts
    if os.fork() == 0:
        break
async def get_version(request, context):
    return payload  # no key check, no store, no (de)serialisation: bytes in, the same bytes out
async def serve():
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    handler = grpc.unary_unary_rpc_method_handler(get_version)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("foedus.v1.RegistryService", {{"GetModelVersion": handler}}),)
    )
    server.add_insecure_port({listen!r})
    await server.start()
    print("foedus server listening on " + {listen!r}, flush=True)
    await server.wait_for_termination()
asyncio.run(serve())
"""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ================================================================================================
# Read targets: one client of either registry, behind the same two-call interface
# ================================================================================================


@dataclass(frozen=True, slots=True)
class ReadTarget:
    """What a client of the read harness reads: version `version` of `model` on `address`."""

    kind: str
    """"foedus" or "mlflow"."""
    address: str
    """HOST:PORT."""
    api_key: str = ""
    model: str = MODEL
    version: int = 1
    new_connection: bool = False
    """MLflow only: a new TCP connection for every request instead of one kept alive."""


class MlflowHttp:
    """One keep-alive HTTP/1.1 connection to an MLflow server, JSON in and out.

    With `new_connection`, the connection is closed after every request (the next one reconnects).
    """

    def __init__(self, address: str, timeout: float = 30.0, *, new_connection: bool = False) -> None:
        host, _, port = address.rpartition(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self._new_connection = new_connection
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.call_raw(method, path, body))
        return result

    def call_raw(self, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
        payload = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=payload, headers=self._headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection; the request was not processed.
                self._conn.close()
                if attempt == 2:
                    raise
        if self._new_connection:
            self._conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} -> HTTP {resp.status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        self._conn.close()


def make_reader(target: ReadTarget) -> tuple[Callable[[], None], Callable[[], None]]:
    """A client of `target`: (read the version once, parsed and checked; close)."""
    if target.kind == "foedus":
        from foedus.client_sdk import Client

        # A subchannel pool of its own: each client gets its own TCP connection, as each MLflow
        # client does, instead of all channels of a process sharing one.
        client = Client.connect(
            target.address, api_key=target.api_key, options=[("grpc.use_local_subchannel_pool", 1)]
        )

        def read_foedus() -> None:
            version = client.models.get_version(target.model, target.version)
            if version.version != target.version:
                raise RuntimeError(f"asked for version {target.version}, got {version.version}")

        return read_foedus, client.close
    if target.kind == "mlflow":
        http_client = MlflowHttp(target.address, new_connection=target.new_connection)
        query = urllib.parse.urlencode({"name": target.model, "version": str(target.version)})
        path = f"/api/2.0/mlflow/model-versions/get?{query}"

        def read_mlflow() -> None:
            got = http_client.call("GET", path)["model_version"]["version"]
            if str(got) != str(target.version):
                raise RuntimeError(f"asked for version {target.version}, got {got}")

        return read_mlflow, http_client.close
    raise ValueError(f"unknown target kind {target.kind!r}")


# ================================================================================================
# The read harness: closed-loop clients in several processes, started and stopped together
# ================================================================================================


def _client_thread(
    target: ReadTarget,
    limit: int,
    go: Any,
    deadline: Any,
    ready: threading.Barrier,
    out: dict[str, Any],
) -> None:
    latencies: list[float] = []
    out["latencies"] = latencies
    out["errors"] = 0
    out["first_error"] = ""
    out["start"] = out["end"] = 0.0
    try:
        read, close = make_reader(target)
    except Exception:
        out["first_error"] = traceback.format_exc(limit=3)
        out["errors"] = 1
        ready.abort()
        return
    try:
        for _ in range(WARMUP_READS):
            read()
        ready.wait()
        if not go.wait(timeout=GO_TIMEOUT_S):
            return
        end_at = deadline.value
        perf = time.perf_counter
        out["start"] = perf()
        while len(latencies) < limit:
            t0 = perf()
            try:
                read()
            except Exception as exc:
                out["errors"] += 1
                if not out["first_error"]:
                    out["first_error"] = f"{type(exc).__name__}: {exc}"
                if out["errors"] > 100:
                    break
                continue
            t1 = perf()
            latencies.append(t1 - t0)
            if t1 >= end_at:
                break
        out["end"] = perf()
    except threading.BrokenBarrierError:
        pass  # another client of this process could not start; the process reports it
    except Exception:
        out["errors"] += 1
        out["first_error"] = out["first_error"] or traceback.format_exc(limit=3)
        ready.abort()
    finally:
        close()


def load_worker(
    target: ReadTarget, threads: int, limit_per_client: int, go: Any, deadline: Any, results: Any
) -> None:
    """One client process: `threads` clients; reports ready, waits for `go`, runs until `deadline`."""
    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    ready = threading.Barrier(threads + 1)
    workers = [
        threading.Thread(
            target=_client_thread, args=(target, limit_per_client, go, deadline, ready, out), daemon=True
        )
        for out in outs
    ]
    for w in workers:
        w.start()
    try:
        ready.wait(timeout=120)
        results.put(("ready", os.getpid(), None))
    except threading.BrokenBarrierError:
        results.put(("failed", os.getpid(), [o.get("first_error", "") for o in outs]))
        return
    if not go.wait(timeout=GO_TIMEOUT_S):
        return  # the harness gave up (or died) before starting the phase
    cpu0 = _own_cpu_s()
    for w in workers:
        w.join()
    cpu = _own_cpu_s() - cpu0
    results.put(("done", os.getpid(), {"cpu_s": cpu, "clients": outs}))


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of `root` and all its live descendants (from /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p > 1:
            if p == root:
                total += seconds
                break
            p = parents.get(p, 0)
    return total


@dataclass
class ReadResult:
    clients: int
    procs: int
    reads: int
    errors: int
    elapsed_s: float
    latencies_ms: list[float]
    server_cpu_s: float
    client_cpu_s: float
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.reads / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, on a sorted copy (q in [0, 100])."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def run_reads(
    target: ReadTarget, *, clients: int, procs: int, duration: float, max_requests: int, server_pid: int
) -> ReadResult:
    """Runs `clients` closed-loop clients in `procs` processes for `duration` s (or `max_requests`)."""
    procs = max(1, min(procs, clients))
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    deadline = ctx.Value("d", 0.0)
    results = ctx.Queue()
    limit = max(1, max_requests // clients)
    workers = [
        ctx.Process(target=load_worker, args=(target, n, limit, go, deadline, results), daemon=True)
        for n in split(clients, procs)
    ]
    for w in workers:
        w.start()
    try:
        ready = 0
        start_by = time.monotonic() + 180
        while ready < len(workers):
            try:
                kind, pid, payload = results.get(timeout=1.0)
            except queue.Empty:
                dead = [w.exitcode for w in workers if w.exitcode is not None]
                if dead or time.monotonic() > start_by:
                    raise RuntimeError(f"client processes did not start (exit codes {dead})") from None
                continue
            if kind != "ready":
                raise RuntimeError(f"client process {pid} could not start: {payload}")
            ready += 1
        cpu0 = process_tree_cpu_s(server_pid)
        start = time.perf_counter()
        deadline.value = start + duration
        go.set()
        done: list[dict[str, Any]] = []
        while len(done) < len(workers):
            try:
                kind, pid, payload = results.get(timeout=duration + 120)
            except queue.Empty:
                raise RuntimeError("client processes did not finish in time") from None
            if kind == "done":
                done.append(payload)
        server_cpu = process_tree_cpu_s(server_pid) - cpu0
    finally:
        go.set()
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    outs = [c for d in done for c in d["clients"]]
    latencies = [x * 1000.0 for c in outs for x in c["latencies"]]
    first = min((c["start"] for c in outs if c["start"]), default=start)
    last = max((c["end"] for c in outs if c["end"]), default=start)
    return ReadResult(
        clients=clients,
        procs=procs,
        reads=len(latencies),
        errors=sum(c["errors"] for c in outs),
        elapsed_s=last - min(first, start),
        latencies_ms=latencies,
        server_cpu_s=server_cpu,
        client_cpu_s=sum(d["cpu_s"] for d in done),
        first_error=next((c["first_error"] for c in outs if c["first_error"]), ""),
    )


def h2load_path() -> str | None:
    return shutil.which("h2load")


_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_reads_h2load(
    target: ReadTarget, *, clients: int, duration: float, server_pid: int, expect_bytes: int
) -> ReadResult:
    """Closed-loop reads driven by h2load (nghttp2's load generator, written in C): `clients`
    connections, one request in flight on each, for `duration` s after a 1 s warm-up.

    The client side then costs a few microseconds of CPU per request instead of a Python client's
    hundreds, so the figure is the server's. Foedus: GetModelVersion as a gRPC POST over HTTP/2;
    MLflow: `GET model-versions/get` over HTTP/1.1 keep-alive (`--h1`). h2load counts HTTP
    statuses; a gRPC error also comes as HTTP 200, without a message, so every response's data
    bytes are checked against the size of a successful answer (`expect_bytes`).
    """
    exe = h2load_path()
    if exe is None:
        raise RuntimeError("h2load not found (Debian: apt-get install nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="foedus-h2load-") as tmp:
        log_path = Path(tmp) / "requests.log"
        cmd = [exe, "-c", str(clients), "-m", "1", "-t", "1", "-D", f"{duration:g}", "--warm-up-time", "1"]
        cmd += ["--log-file", str(log_path)]
        if target.kind == "foedus":
            from foedus.v1 import registry_pb2

            message = registry_pb2.GetModelVersionRequest(model=target.model, version=target.version)
            raw = message.SerializeToString()
            body = Path(tmp) / "request.bin"
            body.write_bytes(b"\x00" + len(raw).to_bytes(4, "big") + raw)
            cmd += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
            cmd += ["-H", f"authorization: Bearer {target.api_key}"]
            cmd.append(f"http://{target.address}/foedus.v1.RegistryService/GetModelVersion")
        else:
            query = urllib.parse.urlencode({"name": target.model, "version": str(target.version)})
            cmd += ["--h1", f"http://{target.address}/api/2.0/mlflow/model-versions/get?{query}"]
        usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = process_tree_cpu_s(server_pid)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=False)
        server_cpu = process_tree_cpu_s(server_pid) - cpu0
        usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = done.stdout + done.stderr
        counts = _H2_REQUESTS.search(out)
        statuses = _H2_STATUS.search(out)
        if done.returncode != 0 or counts is None or statuses is None:
            raise RuntimeError(f"h2load failed ({done.returncode}): {out[-2000:]}")
        latencies: list[float] = []
        first_us, last_us = math.inf, 0.0
        for line in log_path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                start_us, elapsed_us = float(parts[0]), float(parts[2])
                latencies.append(elapsed_us / 1000.0)
                first_us, last_us = min(first_us, start_us), max(last_us, start_us + elapsed_us)
    succeeded = int(counts[4])
    not_2xx = int(statuses[2]) + int(statuses[3]) + int(statuses[4])
    errors = int(counts[5]) + int(counts[6]) + int(counts[7]) + not_2xx
    data = re.search(r"\((\d+)\) data", out)
    first_error = ""
    if data is not None and expect_bytes and succeeded:
        per_response = int(data[1]) / succeeded
        if per_response < expect_bytes * 0.99:
            errors = max(errors, 1)
            first_error = (
                f"responses average {per_response:.0f} data bytes, a successful one has {expect_bytes}"
            )
    elapsed = (last_us - first_us) / 1e6 if latencies else duration
    return ReadResult(
        clients=clients,
        procs=1,
        reads=len(latencies),
        errors=errors,
        elapsed_s=elapsed,
        latencies_ms=latencies,
        server_cpu_s=server_cpu,
        client_cpu_s=(usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime),
        first_error=first_error or ("" if not errors else out[-500:]),
    )


# ================================================================================================
# Servers
# ================================================================================================


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen[str]
    log_path: Path
    address: str

    def stop(self) -> None:
        """SIGTERM to the server's process group (its own session); SIGKILL to what is left after 20 s."""
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        end = time.monotonic() + 20
        while time.monotonic() < end and _group_alive(group):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.2)
        if _group_alive(group):
            log(f"{self.name}: server processes still running after SIGTERM; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_foedus(
    data_dir: Path, latency_runs: int, workers: int, db: str = "", timeout: float = 90.0
) -> ServerProcess:
    """The Foedus server in its own process; `db` is its database URL (empty: SQLite in `data_dir`)."""
    listen = f"127.0.0.1:{free_port()}"
    script = FOEDUS_SERVER_SCRIPT.format(
        data_dir=str(data_dir), listen=listen, latency_runs=latency_runs, workers=workers, db=db
    )
    return _start_grpc_server("foedus", script, data_dir.parent / "foedus-server.log", timeout)


def start_bare_grpc(payload: Path, workers: int, timeout: float = 90.0) -> ServerProcess:
    """`workers` processes of a grpc.aio server on one port that answer GetModelVersion with the
    bytes in `payload` and do nothing else: the most a Python gRPC server can serve these clients."""
    listen = f"127.0.0.1:{free_port()}"
    script = BARE_GRPC_SERVER_SCRIPT.format(payload=str(payload), listen=listen, workers=workers)
    return _start_grpc_server("bare-grpc", script, payload.parent / "bare-grpc-server.log", timeout)


def _start_grpc_server(name: str, script: str, log_path: Path, timeout: float) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
    with open(log_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,
        )
    server = ServerProcess(name, proc, log_path, "")
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line.startswith("foedus server listening on"):
            server.address = line.rsplit(" ", 1)[1].strip()
            return server
    server.stop()
    raise RuntimeError(f"the {name} server did not start within {timeout:.0f} s:\n{server.log_tail()}")


def mlflow_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def ensure_mlflow_venv(venv: Path, spec: str) -> str:
    """Creates `venv` with MLflow once (cached); returns the installed MLflow version."""
    version = mlflow_version(venv) if (venv / "bin" / "mlflow").exists() else ""
    if version:
        log(f"MLflow {version} found in {venv} (cached)")
        return version
    log(f"creating {venv} and installing {spec!r} (once; a few hundred MB, takes a few minutes)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off", spec]
    with subprocess.Popen(pip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR", "error")):
                log(f"pip: {line[:160]}")
        if proc.wait(timeout=1800) != 0:
            raise RuntimeError(f"pip install {spec} into {venv} failed (exit {proc.returncode})")
    version = mlflow_version(venv)
    if not version:
        raise RuntimeError(f"mlflow is not importable in {venv} after installing it")
    log(f"installed MLflow {version}")
    return version


def mlflow_default_workers(venv: Path) -> str:
    """The default of `mlflow server --workers`, as its --help states it ("?" when it does not)."""
    out = subprocess.run(
        [str(venv / "bin" / "mlflow"), "server", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = re.search(r"--workers\s+\S+\s+[^-]*?\(default:\s*([^)]+)\)", " ".join(out.stdout.split()))
    return found.group(1).strip() if found else "?"


def wait_until_quiet(
    server: ServerProcess,
    *,
    below_cores: float = 0.05,
    window_s: float = 1.0,
    windows: int = 3,
    timeout: float = 120.0,
) -> float:
    """Waits until the server's process tree uses under `below_cores` CPU for `windows` windows in a row.

    A server that has just answered its health check may still be starting helpers (`mlflow server`
    starts its job runner and huey consumers after the web workers, each importing MLflow for a few
    CPU seconds); measuring then would charge their start-up to the first phases. Returns the wait.
    """
    start = time.monotonic()
    quiet = 0
    last = process_tree_cpu_s(server.proc.pid)
    while quiet < windows and time.monotonic() - start < timeout:
        time.sleep(window_s)
        now = process_tree_cpu_s(server.proc.pid)
        quiet = quiet + 1 if (now - last) / window_s < below_cores else 0
        last = now
    waited = time.monotonic() - start
    if quiet < windows:
        log(f"{server.name}: server still busy after {waited:.0f} s; measuring anyway")
    return waited


def start_mlflow(venv: Path, data_dir: Path, timeout: float = 180.0) -> ServerProcess:
    port = free_port()
    (data_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [
        str(venv / "bin" / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{data_dir / 'mlflow.db'}",
        "--default-artifact-root",
        str(data_dir / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log_path = data_dir.parent / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
            cwd=data_dir,
        )
    server = ServerProcess("mlflow", proc, log_path, f"127.0.0.1:{port}")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            break
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(
        f"the MLflow server did not answer /health within {timeout:.0f} s:\n{server.log_tail()}"
    )


# ================================================================================================
# Registration
# ================================================================================================


@dataclass
class RegisterResult:
    count: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0


def timed_loop(step: Callable[[], object], duration: float, max_count: int) -> RegisterResult:
    latencies: list[float] = []
    start = time.perf_counter()
    end_at = start + duration
    while len(latencies) < max_count:
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        latencies.append((t1 - t0) * 1000.0)
        if t1 >= end_at:
            break
    return RegisterResult(len(latencies), time.perf_counter() - start, latencies)


def make_onnx_model(path: Path) -> Any:
    """Writes a logistic regression on iris as ONNX to `path`; returns iris' feature matrix."""
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
    path.write_bytes(onx.SerializeToString())
    return x


# ================================================================================================
# One side each
# ================================================================================================


@dataclass
class SideResult:
    register: RegisterResult
    read_1: ReadResult
    read_n: ReadResult
    response_bytes: int
    read_1_newconn: ReadResult | None = None
    read_n_h2load: ReadResult | None = None
    read_n_bare: ReadResult | None = None
    """Foedus only: the same reads served by a bare grpc.aio server (`start_bare_grpc`)."""
    register_newconn: RegisterResult | None = None
    notes: list[str] = field(default_factory=list)


def read_phase(
    target: ReadTarget, args: argparse.Namespace, server: ServerProcess, clients: int, label: str = ""
) -> ReadResult:
    procs = 1 if clients == 1 else args.client_procs
    where = "" if clients == 1 else f" in {min(procs, clients)} processes"
    log(f"{target.kind}: reads, {clients} client(s){where}{label}, {args.duration:g} s")
    res = run_reads(
        target,
        clients=clients,
        procs=procs,
        duration=args.duration,
        max_requests=args.max_requests,
        server_pid=server.proc.pid,
    )
    log(f"{target.kind}: {res.rps:,.0f} reads/s, p50 {res.pct(50):.2f} ms, p99 {res.pct(99):.2f} ms")
    if res.errors:
        log(f"{target.kind}: {res.errors} failed reads; first: {res.first_error}")
    return res


def h2load_phase(
    target: ReadTarget, args: argparse.Namespace, server: ServerProcess, expect_bytes: int
) -> ReadResult | None:
    if not args.h2load:
        return None
    if h2load_path() is None:
        log("h2load not found (apt-get install nghttp2-client): the h2load read phase is left out")
        return None
    log(f"{target.kind}: reads by h2load, {args.clients} connections, {args.duration:g} s")
    res = run_reads_h2load(
        target,
        clients=args.clients,
        duration=args.duration,
        server_pid=server.proc.pid,
        expect_bytes=expect_bytes,
    )
    log(f"{target.kind}: h2load {res.rps:,.0f} reads/s, p50 {res.pct(50):.2f} ms, p99 {res.pct(99):.2f} ms")
    if res.errors:
        log(f"{target.kind}: h2load saw {res.errors} failed reads: {res.first_error}")
    return res


def bench_foedus(args: argparse.Namespace, workdir: Path, onnx_path: Path, reference: Any) -> SideResult:
    from foedus.client_sdk import Client

    data_dir = workdir / "foedus"
    db = ""
    if args.postgres_url:
        from load import create_database, drop_database, with_database  # bench/load.py

        database = create_database(args.postgres_url)
        db = with_database(args.postgres_url, database)
    log(
        f"foedus: starting the server (data dir {data_dir}, store {db or 'SQLite'}, "
        f"latency_runs={args.latency_runs}, workers={args.workers})"
    )
    try:
        server = start_foedus(data_dir, args.latency_runs, args.workers, db)
    except BaseException:
        if db:
            drop_database(args.postgres_url, database)
        raise
    try:
        log(f"foedus: server up; settled after {wait_until_quiet(server):.1f} s more")
        admin_key = (data_dir / "admin.key").read_text().strip()
        with Client.connect(server.address, api_key=admin_key) as admin:
            owner_key = admin.tenants.create("bench").owner_key_secret
        with Client.connect(server.address, api_key=owner_key) as c:

            def register() -> int:
                return c.models.register(
                    MODEL,
                    onnx_path,
                    aliases=[ALIAS],
                    lineage={"code_revision": CODE_REVISION},
                    reference_data=reference,
                ).version

            first = register()  # creates the model; version 1 is what the read phases read
            if first != 1:
                raise RuntimeError(f"first registration got version {first}, expected 1")
            log(f"foedus: registrations, up to {args.register_max} or {args.duration:g} s")
            reg = timed_loop(register, args.duration, args.register_max)
            log(f"foedus: {reg.per_s:,.1f} registrations/s ({reg.count} in {reg.elapsed_s:.1f} s)")
            response_bytes = c.models.get_version(MODEL, 1).ByteSize()
        target = ReadTarget("foedus", server.address, api_key=owner_key)
        one = read_phase(target, args, server, 1)
        many = read_phase(target, args, server, args.clients)
        h2 = h2load_phase(target, args, server, response_bytes)
        raw = raw_response(target) if args.bare_grpc else b""
    finally:
        server.stop()
        if db:
            drop_database(args.postgres_url, database)
    bare = bare_grpc_phase(raw, args, workdir) if args.bare_grpc else None
    notes = [
        f"Foedus: separate process, grpc.aio, {'PostgreSQL' if db else 'SQLite'}, default settings but latency_runs={args.latency_runs}, "
        f"workers={args.workers}"
    ]
    if bare is not None:
        notes.append(
            f"bare gRPC: {args.workers} grpc.aio process(es) answering GetModelVersion with a fixed answer, "
            "no key check, no store; the same clients"
        )
    return SideResult(reg, one, many, response_bytes, read_n_h2load=h2, read_n_bare=bare, notes=notes)


def raw_response(target: ReadTarget) -> bytes:
    """The serialized GetModelVersion answer to `target`'s read, as it goes on the wire."""
    import grpc

    from foedus.v1 import registry_pb2

    request = registry_pb2.GetModelVersionRequest(model=target.model, version=target.version)
    with grpc.insecure_channel(target.address) as channel:
        call = channel.unary_unary("/foedus.v1.RegistryService/GetModelVersion")
        answer: bytes = call(
            request.SerializeToString(), metadata=(("authorization", f"Bearer {target.api_key}"),), timeout=30
        )
    return answer


def bare_grpc_phase(raw: bytes, args: argparse.Namespace, workdir: Path) -> ReadResult:
    """The concurrent read phase against `start_bare_grpc`: where grpc-python itself, on both ends,
    puts the ceiling for these clients on this machine."""
    payload = workdir / "bare-grpc" / "response.bin"
    payload.parent.mkdir(parents=True, exist_ok=True)
    payload.write_bytes(raw)
    server = start_bare_grpc(payload, args.workers)
    try:
        target = ReadTarget("foedus", server.address, api_key="unused")
        return read_phase(target, args, server, args.clients, label=" from a bare grpc.aio server")
    finally:
        server.stop()


def bench_mlflow(args: argparse.Namespace, workdir: Path, onnx_path: Path, version: str) -> SideResult:
    venv = Path(args.mlflow_venv)
    data_dir = workdir / "mlflow"
    workers = mlflow_default_workers(venv)
    log(f"mlflow: starting `mlflow server` {version} (default --workers: {workers}; data dir {data_dir})")
    server = start_mlflow(venv, data_dir)
    try:
        log(f"mlflow: server up; settled after {wait_until_quiet(server):.1f} s more")
        h = MlflowHttp(server.address)
        api = "/api/2.0/mlflow"
        # A run holds the "logged" model: registering a local source needs one (MLflow checks that
        # the source lies inside the run's artifact directory).
        run = h.call("POST", f"{api}/runs/create", {"experiment_id": "0", "run_name": "bench"})["run"]["info"]
        artifact_uri: str = run["artifact_uri"]
        local_dir = (
            Path(urllib.parse.urlparse(artifact_uri).path) if "://" in artifact_uri else Path(artifact_uri)
        )
        if artifact_uri.startswith(("file:", "/")):
            (local_dir / "model").mkdir(parents=True, exist_ok=True)
            shutil.copy(onnx_path, local_dir / "model" / "model.onnx")
        source = f"{artifact_uri}/model"
        h.call("POST", f"{api}/registered-models/create", {"name": MODEL})

        def register(h: MlflowHttp = h) -> int:
            mv = h.call(
                "POST",
                f"{api}/model-versions/create",
                {
                    "name": MODEL,
                    "source": source,
                    "run_id": run["run_id"],
                    "tags": [{"key": "code_revision", "value": CODE_REVISION}],
                },
            )["model_version"]
            h.call(
                "POST",
                f"{api}/registered-models/alias",
                {"name": MODEL, "alias": ALIAS, "version": mv["version"]},
            )
            return int(mv["version"])

        first = register()
        if first != 1:
            raise RuntimeError(f"first registration got version {first}, expected 1")
        log(f"mlflow: registrations, up to {args.register_max} or {args.duration:g} s")
        reg = timed_loop(register, args.duration, args.register_max)
        log(f"mlflow: {reg.per_s:,.1f} registrations/s ({reg.count} in {reg.elapsed_s:.1f} s)")
        log(f"mlflow: registrations, new connection for each request, up to {args.duration:g} s")
        fresh_h = MlflowHttp(server.address, new_connection=True)
        reg_fresh = timed_loop(lambda: register(fresh_h), args.duration, args.register_max)
        log(
            f"mlflow: {reg_fresh.per_s:,.1f} registrations/s ({reg_fresh.count} in {reg_fresh.elapsed_s:.1f} s)"
        )
        query = urllib.parse.urlencode({"name": MODEL, "version": "1"})
        response_bytes = len(h.call_raw("GET", f"{api}/model-versions/get?{query}"))
        h.close()
        target = ReadTarget("mlflow", server.address)
        one = read_phase(target, args, server, 1)
        many = read_phase(target, args, server, args.clients)
        h2 = h2load_phase(target, args, server, response_bytes)
        fresh = read_phase(
            ReadTarget("mlflow", server.address, new_connection=True),
            args,
            server,
            1,
            ", new connection each",
        )
        notes = [
            f"MLflow {version}: `mlflow server` defaults (uvicorn, --workers {workers}, job runner), SQLite",
            "MLflow clients keep their connection alive, as MLflow's own client (requests.Session) does;",
            "  the server answers in two TCP segments without TCP_NODELAY (uvicorn with several workers),",
            "  so a lone keep-alive client waits for a delayed ACK (~40 ms) on every request; the rows",
            "  'new conn.' show the same client opening a connection per request instead.",
        ]
        return SideResult(
            reg,
            one,
            many,
            response_bytes,
            read_1_newconn=fresh,
            register_newconn=reg_fresh,
            read_n_h2load=h2,
            notes=notes,
        )
    finally:
        server.stop()


# ================================================================================================
# Report
# ================================================================================================


def side_figures(side: SideResult, prefix: str = "") -> dict[str, float]:
    n = side.read_n.clients
    f: dict[str, float] = {
        "register_per_s": side.register.per_s,
        "register_p50_ms": percentile(side.register.latencies_ms, 50),
        "registrations": side.register.count,
        "read_rps_1": side.read_1.rps,
        "read_p50_ms_1": side.read_1.pct(50),
        "read_p99_ms_1": side.read_1.pct(99),
        f"read_rps_{n}": side.read_n.rps,
        f"read_p50_ms_{n}": side.read_n.pct(50),
        f"read_p99_ms_{n}": side.read_n.pct(99),
        "read_errors": side.read_1.errors + side.read_n.errors,
        "read_response_bytes": side.response_bytes,
        f"server_cpu_cores_{n}": side.read_n.server_cpu_s / side.read_n.elapsed_s,
        f"client_cpu_cores_{n}": side.read_n.client_cpu_s / side.read_n.elapsed_s,
        f"server_cpu_ms_per_read_{n}": 1000.0 * side.read_n.server_cpu_s / max(1, side.read_n.reads),
        "server_cpu_ms_per_read_1": 1000.0 * side.read_1.server_cpu_s / max(1, side.read_1.reads),
        "client_cpu_ms_per_read_1": 1000.0 * side.read_1.client_cpu_s / max(1, side.read_1.reads),
        f"client_cpu_ms_per_read_{n}": 1000.0 * side.read_n.client_cpu_s / max(1, side.read_n.reads),
    }
    if side.register_newconn is not None:
        f["register_per_s_newconn"] = side.register_newconn.per_s
        f["register_p50_ms_newconn"] = percentile(side.register_newconn.latencies_ms, 50)
    if side.read_n_h2load is not None:
        h = side.read_n_h2load
        f[f"read_rps_{n}_h2load"] = h.rps
        f[f"read_p50_ms_{n}_h2load"] = h.pct(50)
        f[f"read_p99_ms_{n}_h2load"] = h.pct(99)
        f["read_errors_h2load"] = h.errors
        f[f"server_cpu_ms_per_read_{n}_h2load"] = 1000.0 * h.server_cpu_s / max(1, h.reads)
        f[f"client_cpu_cores_{n}_h2load"] = h.client_cpu_s / h.elapsed_s if h.elapsed_s else 0.0
    if side.read_n_bare is not None:
        b = side.read_n_bare
        f[f"bare_grpc_read_rps_{n}"] = b.rps
        f[f"bare_grpc_read_p50_ms_{n}"] = b.pct(50)
        f[f"bare_grpc_server_cpu_ms_per_read_{n}"] = 1000.0 * b.server_cpu_s / max(1, b.reads)
        f[f"bare_grpc_client_cpu_cores_{n}"] = b.client_cpu_s / b.elapsed_s if b.elapsed_s else 0.0
        f[f"read_vs_bare_grpc_{n}"] = side.read_n.rps / b.rps if b.rps else float("nan")
    if side.read_1_newconn is not None:
        f["read_rps_1_newconn"] = side.read_1_newconn.rps
        f["read_p50_ms_1_newconn"] = side.read_1_newconn.pct(50)
        f["read_p99_ms_1_newconn"] = side.read_1_newconn.pct(99)
    return {prefix + k: round(v, 4) for k, v in f.items()}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


ROWS = [
    ("registrations/s", "register_per_s", "{:,.1f}", True),
    ("registration p50 (ms)", "register_p50_ms", "{:,.2f}", False),
    ("registrations/s, new conn. each", "register_per_s_newconn", "{:,.1f}", False),
    ("registration p50 (ms), new conn.", "register_p50_ms_newconn", "{:,.2f}", False),
    ("reads/s, 1 client", "read_rps_1", "{:,.0f}", True),
    ("read p50 (ms), 1 client", "read_p50_ms_1", "{:.3f}", False),
    ("read p99 (ms), 1 client", "read_p99_ms_1", "{:.3f}", False),
    ("reads/s, 1 client, new conn. each", "read_rps_1_newconn", "{:,.0f}", False),
    ("read p50 (ms), 1 cl., new conn.", "read_p50_ms_1_newconn", "{:.3f}", False),
    ("read p99 (ms), 1 cl., new conn.", "read_p99_ms_1_newconn", "{:.3f}", False),
    ("reads/s, {n} clients", "read_rps_{n}", "{:,.0f}", True),
    ("read p50 (ms), {n} clients", "read_p50_ms_{n}", "{:.3f}", False),
    ("read p99 (ms), {n} clients", "read_p99_ms_{n}", "{:.3f}", False),
    ("server CPU ms/read, 1 client", "server_cpu_ms_per_read_1", "{:.3f}", False),
    ("server CPU ms/read, {n} clients", "server_cpu_ms_per_read_{n}", "{:.3f}", False),
    ("server CPU (cores), {n} clients", "server_cpu_cores_{n}", "{:.2f}", False),
    ("client CPU (cores), {n} clients", "client_cpu_cores_{n}", "{:.2f}", False),
    ("client CPU ms/read, 1 client", "client_cpu_ms_per_read_1", "{:.3f}", False),
    ("client CPU ms/read, {n} clients", "client_cpu_ms_per_read_{n}", "{:.3f}", False),
    ("reads/s, {n} conns, h2load", "read_rps_{n}_h2load", "{:,.0f}", True),
    ("read p50 (ms), {n} conns, h2load", "read_p50_ms_{n}_h2load", "{:.3f}", False),
    ("read p99 (ms), {n} conns, h2load", "read_p99_ms_{n}_h2load", "{:.3f}", False),
    ("server CPU ms/read, h2load", "server_cpu_ms_per_read_{n}_h2load", "{:.3f}", False),
    ("client CPU (cores), h2load", "client_cpu_cores_{n}_h2load", "{:.2f}", False),
    ("failed reads, h2load", "read_errors_h2load", "{:,.0f}", False),
    ("reads/s, {n} cl., bare grpc.aio", "bare_grpc_read_rps_{n}", "{:,.0f}", True),
    ("read p50 (ms), {n} cl., bare gRPC", "bare_grpc_read_p50_ms_{n}", "{:.3f}", False),
    ("server CPU ms/read, bare gRPC", "bare_grpc_server_cpu_ms_per_read_{n}", "{:.3f}", False),
    ("client CPU (cores), bare gRPC", "bare_grpc_client_cpu_cores_{n}", "{:.2f}", False),
    ("Foedus reads / bare gRPC's", "read_vs_bare_grpc_{n}", "{:.2f}", False),
    ("read response (bytes)", "read_response_bytes", "{:,.0f}", False),
    ("failed reads", "read_errors", "{:,.0f}", False),
]


def print_table(foedus: dict[str, float], mlflow: dict[str, float] | None, n: int) -> None:
    head = f"{'':34} {'Foedus':>12} {'MLflow':>12} {'Foedus/MLflow':>14}"
    print(head)
    print("-" * len(head))
    for label, key, fmt, show_ratio in ROWS:
        label, key = label.format(n=n), key.format(n=n)
        a = foedus.get(key)
        b = None if mlflow is None else mlflow.get("mlflow_" + key)
        if a is None and b is None:
            continue
        cells = [fmt.format(v) if v is not None else "-" for v in (a, b)]
        r = f"{a / b:.2f}x" if show_ratio and a is not None and b else ""
        print(f"{label:34} {cells[0]:>12} {cells[1]:>12} {r:>14}")


# ================================================================================================
# Main
# ================================================================================================


def _ensure_project_python() -> None:
    """Re-runs this script with the project's venv when the Foedus SDK is not importable here."""
    try:
        import foedus.client_sdk  # noqa: F401
    except ImportError:
        if PROJECT_PYTHON.exists() and Path(sys.prefix).resolve() != PROJECT_PYTHON.parents[1].resolve():
            os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), *sys.argv])  # noqa: S606
        raise SystemExit(f"the Foedus SDK is not importable; run with {PROJECT_PYTHON}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/registry.py",
        description=(
            "Foedus registry vs. an MLflow model registry server on this machine: registrations/s, and "
            "model-version reads/s with p50/p99 latency at 1 and N concurrent clients. Each server runs "
            "in its own process, one at a time; the read clients run in separate processes, the same "
            "harness for both. Ratios are Foedus/MLflow (above 1: Foedus does more per second)."
        ),
        epilog=(
            "Example: .venv/bin/python bench/registry.py --json /tmp/reg.json. MLflow is installed on the "
            "first run into --mlflow-venv (pip install mlflow), then reused."
        ),
    )
    p.add_argument(
        "--duration",
        type=float,
        default=8.0,
        help="seconds per phase: registration, each read phase (%(default)s)",
    )
    p.add_argument(
        "--clients", type=int, default=16, help="clients of the concurrent read phase (%(default)s)"
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=4,
        help="processes the concurrent clients are spread over, threads in each, on both sides (%(default)s)",
    )
    p.add_argument(
        "--max-requests", type=int, default=500_000, help="most reads per read phase (%(default)s)"
    )
    p.add_argument(
        "--register-max", type=int, default=5000, help="most timed registrations per side (%(default)s)"
    )
    p.add_argument(
        "--latency-runs",
        type=int,
        default=5,
        help="the Foedus server's latency_runs, timed runs of the ONNX latency gate (%(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="the Foedus server's worker processes, one per core by default (%(default)s); "
        "mlflow server keeps its own default (4)",
    )
    p.add_argument(
        "--no-reference-data",
        dest="reference_data",
        action="store_false",
        help="register Foedus versions without a reference profile (one is sent by default; MLflow has none)",
    )
    p.add_argument(
        "--skip-mlflow", action="store_true", help="Foedus only; MLflow figures and ratios left out"
    )
    p.add_argument(
        "--mlflow-venv",
        default=str(DEFAULT_MLFLOW_VENV),
        help="virtual environment with MLflow, created once when missing (%(default)s)",
    )
    p.add_argument(
        "--mlflow-spec",
        default="mlflow",
        help="pip requirement installed into a new --mlflow-venv (%(default)s)",
    )
    p.add_argument(
        "--workdir", help="directory for the servers' data and logs (default: a temporary one, removed after)"
    )
    p.add_argument(
        "--no-h2load",
        dest="h2load",
        action="store_false",
        help="leave out the read phase driven by h2load (a C load generator; used when installed)",
    )
    p.add_argument(
        "--no-bare-grpc",
        dest="bare_grpc",
        action="store_false",
        help="leave out the ceiling phase: the concurrent reads served by a grpc.aio server that only "
        "returns a fixed answer (run by default)",
    )
    p.add_argument(
        "--postgres-url",
        default="",
        metavar="URL",
        help="run Foedus's store on PostgreSQL: a fresh database created next to URL (e.g. "
        "postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end; MLflow stays on SQLite",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH as one flat JSON object")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.client_procs < 1:
        p.error("--duration, --clients and --client-procs must be positive")
    return args


@contextlib.contextmanager
def work_directory(given: str | None) -> Iterator[Path]:
    if given:
        path = Path(given).resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="foedus-bench-") as tmp:
        yield Path(tmp)


def git_revision() -> str:
    """The checkout's commit, with "+changes" when the working tree differs from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}+changes" if dirty else rev


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally`s that stop the servers


def main(argv: list[str] | None = None) -> int:
    _ensure_project_python()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    n = args.clients
    rc = 0
    mlflow_ver = ""
    if not args.skip_mlflow:
        mlflow_ver = ensure_mlflow_venv(Path(args.mlflow_venv), args.mlflow_spec)
    with work_directory(args.workdir) as workdir:
        onnx_path = workdir / "model.onnx"
        reference = make_onnx_model(onnx_path)
        if not args.reference_data:
            reference = None
        foedus = bench_foedus(args, workdir, onnx_path, reference)
        mlflow = None
        if not args.skip_mlflow:
            try:
                mlflow = bench_mlflow(args, workdir, onnx_path, mlflow_ver)
            except Exception as exc:
                log(f"mlflow: FAILED, reporting Foedus only: {exc}")
                rc = 1

    figures = side_figures(foedus)
    mfig = side_figures(mlflow, "mlflow_") if mlflow is not None else None
    out: dict[str, float] = dict(figures)
    if mfig is not None:
        out.update(mfig)
        out["read_ratio_1"] = ratio(figures["read_rps_1"], mfig["mlflow_read_rps_1"])
        out[f"read_ratio_{n}"] = ratio(figures[f"read_rps_{n}"], mfig[f"mlflow_read_rps_{n}"])
        if f"read_rps_{n}_h2load" in figures and f"mlflow_read_rps_{n}_h2load" in mfig:
            out[f"read_ratio_{n}_h2load"] = ratio(
                figures[f"read_rps_{n}_h2load"], mfig[f"mlflow_read_rps_{n}_h2load"]
            )
            # The servers' capacities compared, conservatively: Foedus as h2load drives it (the
            # client costs microseconds) against the better of MLflow's two 16-client figures.
            mlflow_best = max(mfig[f"mlflow_read_rps_{n}_h2load"], mfig[f"mlflow_read_rps_{n}"])
            out[f"mlflow_read_rps_{n}_best"] = mlflow_best
            out[f"read_ratio_{n}_server"] = ratio(figures[f"read_rps_{n}_h2load"], mlflow_best)
        if f"bare_grpc_read_rps_{n}" in figures:
            out[f"bare_grpc_ratio_{n}"] = ratio(
                figures[f"bare_grpc_read_rps_{n}"], mfig[f"mlflow_read_rps_{n}"]
            )
        out["register_ratio"] = ratio(figures["register_per_s"], mfig["mlflow_register_per_s"])
    out.update(
        {
            "duration_s": args.duration,
            "clients": n,
            "client_procs": min(args.client_procs, n),
            "workers": args.workers,
            "cpu_count": os.cpu_count() or 0,
        }
    )

    print()
    print(f"Foedus commit: {git_revision()}")
    print(
        f"Registry benchmark: {args.duration:g} s per phase, {n} concurrent clients in "
        f"{min(args.client_procs, n)} client processes, {os.cpu_count()} CPUs shared by server and clients"
    )
    for note in foedus.notes + (mlflow.notes if mlflow else []):
        print(f"  {note}")
    print("Registration: Foedus uploads and gates an ONNX file (+ alias, lineage, reference profile);")
    print("  MLflow records an already logged model (create version with a tag + set alias: 2 requests).")
    print("Ratios: Foedus/MLflow throughput. CPU: seconds of CPU per second of the phase (2 = both cores).")
    print()
    print_table(figures, mfig, n)
    print()
    if f"read_ratio_{n}_server" in out:
        print(
            f"Server-bound {n}-client reads: Foedus under h2load {figures[f'read_rps_{n}_h2load']:,.0f}/s against "
            f"MLflow's better {n}-client figure {out[f'mlflow_read_rps_{n}_best']:,.0f}/s "
            f"(h2load or the Python clients): {out[f'read_ratio_{n}_server']:.2f}x"
        )
        print()
    if args.json:
        plain = {k: v for k, v in out.items() if math.isfinite(v)}  # no NaN for phases without samples
        Path(args.json).write_text(json.dumps(plain, indent=2, sort_keys=True) + "\n")
        log(f"wrote {args.json}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
