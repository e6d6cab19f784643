"""End-to-end demo on the embedded defaults: `make demo`.

An embedded control plane (SQLite, local artifacts) in a temporary directory; two tenants; a real
model (logistic regression on scikit-learn's breast-cancer data, converted to ONNX with skl2onnx)
registered in two versions with lineage and a reference profile; aliases moved; the artifact
downloaded, verified and served with onnxruntime; tenant isolation shown; two agents serving the
model under replayed traffic, raising alerts on a slow release, grouped into one incident whose
ranked causes name the release; then progressive rollouts: a good
version, gated on an offline evaluation, promoted step by step, and a bad one (slower, failing on
some rows) rolled back automatically with the evidence of the decision, and the DORA report;
finally three organisations federate the anomaly detector of their servers' metrics (SMD, when
../shared/data is there) with Flower, and the result reaches their deployments as canaries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def train_onnx(c: float, x: np.ndarray, y: np.ndarray, path: Path) -> float:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path.write_bytes(onx.SerializeToString())
    return float(model.score(x, y))


def code_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_revision_time() -> float | None:
    """Unix time of the checked-out commit, for the lineage (DORA code lead time)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


def foedus_cli(*args: str) -> None:
    """Runs the `foedus` command as a user would, and shows its output indented."""
    out = subprocess.run(
        [sys.executable, "-m", "foedus.client_sdk.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in (out.stdout + out.stderr).rstrip().splitlines():
        print(f"   | {line}")


def start_agent(loop: Any, config: Any) -> Any:
    """Starts an agent on `loop` (an event loop running in another thread) and returns it."""
    from foedus.client_sdk.agent.runtime import Agent

    async def go() -> Agent:
        agent = Agent(config)
        await agent.start()
        return agent

    return asyncio.run_coroutine_threadsafe(go(), loop).result(60)


def run_agents(
    server: Any, acme_client: Any, owner_key: str, x_test: np.ndarray, y_test: np.ndarray, workdir: Path
) -> None:
    """Two agents serve a deployment; real rows are replayed through the inference protocol; a
    deliberately slow release goes live and the agents raise alerts with their top metrics, grouped
    into one incident that `foedus alerts explain` traces to the release."""
    import asyncio
    import threading

    import grpc

    from foedus.client_sdk.agent.runtime import AgentConfig
    from foedus.client_sdk.testing import slow_classifier_onnx
    from foedus.oip.v2 import inference_pb2, inference_pb2_grpc

    step("Acme deploys 'cancer' v2 as deployment 'cancer-prod'; two agents serve it")
    acme_client.deployments.create("cancer-prod", "cancer", traffic={2: 1.0}, description="demo")
    agent_key = acme_client.keys.create("agent", description="demo agents").secret
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    agents = [
        start_agent(
            loop,
            AgentConfig(
                deployment="cancer-prod",
                server=server.target,
                api_key=agent_key,
                listen="127.0.0.1:0",
                data_dir=workdir / f"agent-{i}",
                name=f"agent-{i}",
                interval_s=0.5,
                detector_warmup=12,
            ),
        )
        for i in range(2)
    ]
    while not all(a.generation >= 1 for a in agents):
        time.sleep(0.1)
    for a in agents:
        print(f"   {a.config.name}: Open Inference Protocol on 127.0.0.1:{a.port}")
    channels = [grpc.insecure_channel(f"127.0.0.1:{a.port}") for a in agents]
    stubs = [inference_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]

    failed = [0]

    def replay(seconds: float, stop: threading.Event | None = None) -> int:
        """Held-out rows of the breast-cancer data, one at a time, round-robin over the agents.
        Failed calls (a release that errors) are counted, not raised."""
        sent, end, i = 0, time.monotonic() + seconds, 0
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            rows = x_test[i % len(x_test) :][:1]
            req = inference_pb2.ModelInferRequest(model_name="cancer-prod")
            req.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
            req.raw_input_contents.append(rows.astype("<f4").tobytes())
            try:
                stubs[i % 2].ModelInfer(req, timeout=10)
            except grpc.RpcError:
                failed[0] += 1
            sent, i = sent + 1, i + 1
            time.sleep(0.004)
        return sent

    sent = replay(8.0)
    print(f"   replayed {sent} requests of held-out rows (scikit-learn's breast-cancer data, CC BY 4.0)")
    time.sleep(1.5)
    step("`foedus deployment status cancer-prod` (telemetry from both agents)")
    env_args = ("--server", server.target, "--api-key", owner_key)
    foedus_cli(*env_args, "deployment", "status", "cancer-prod", "--window", "300")

    step("A bad release: a deliberately slow version (v3) goes live; the agents watch latency")
    slow = slow_classifier_onnx(workdir / "cancer-slow.onnx", features=x_test.shape[1], classes=2)
    v3 = acme_client.models.register(
        "cancer", slow, description="fault injection: same signature, 100x the work"
    )
    acme_client.deployments.set_traffic("cancer-prod", {v3.version: 1.0})
    while not all(a.generation >= 2 for a in agents):
        time.sleep(0.1)
    deadline = time.monotonic() + 30
    alerts: list[Any] = []
    while not alerts and time.monotonic() < deadline:
        replay(1.0)
        alerts = acme_client.monitoring.alerts("cancer-prod")
    for alert in alerts[:2]:
        a = alert.alert
        top = ", ".join(f"{c.metric}={c.value:.3g} (z {c.attribution:+.1f})" for c in a.top)
        print(f"   ALERT {alert.agent} v{a.version} {a.kind} score {a.score:.1f} > {a.threshold:g}: {top}")
    if not alerts:
        print("   (no alert was raised in 30 s)")
    replay(3.0)  # the slow release keeps alerting, interval after interval, from both agents
    incidents = acme_client.monitoring.incidents("cancer-prod", open_only=True)
    step("Alerts of both agents, interval after interval, grouped: `foedus alerts incidents --open`")
    foedus_cli(*env_args, "alerts", "incidents", "--deployment", "cancer-prod", "--open")
    if incidents:
        step("Root cause, ranked: `foedus alerts explain` (changes before onset, SHAP-blamed metrics)")
        foedus_cli(*env_args, "alerts", "explain", str(incidents[0].id), "--top", "5")
    step("That release went to everyone at once; Acme puts v2 back by hand")
    acme_client.deployments.set_traffic("cancer-prod", {2: 1.0})
    while not all(a.generation >= 3 for a in agents):
        time.sleep(0.1)

    rollouts(acme_client, owner_key, server, x_test, y_test, workdir, replay, failed)

    for c in channels:
        c.close()
    for a in agents:
        asyncio.run_coroutine_threadsafe(a.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)


def rollouts(
    client: Any,
    owner_key: str,
    server: Any,
    x_test: np.ndarray,
    y_test: np.ndarray,
    workdir: Path,
    replay: Any,
    failed: list[int],
) -> None:
    """Progressive rollouts: a good version promoted step by step, then a bad one rolled back."""
    import threading

    from foedus.client_sdk.rollouts import phase_name
    from foedus.client_sdk.testing import slow_classifier_onnx

    env_args = ("--server", server.target, "--api-key", owner_key)

    def watch(rollout_id: int) -> Any:
        """Replays traffic while printing the rollout's events; returns the finished rollout."""
        stop = threading.Event()
        traffic = threading.Thread(target=replay, args=(600.0, stop), daemon=True)
        traffic.start()
        try:
            for message in client.rollouts.watch(rollout_id, timeout=180):
                e = message.event
                line = f"   [{e.kind:<11}] step {e.step + 1} {e.weight:>5.1f}%  {e.message}"
                print(line, flush=True)
                figures = [
                    f"{k}={e.evidence[k]:.4g}"
                    for k in (
                        "candidate_error_rate",
                        "stable_error_rate",
                        "candidate_p99_ms",
                        "stable_p99_ms",
                    )
                    if k in e.evidence
                ]
                if figures and e.kind in ("step", "rolled_back", "succeeded"):
                    print(f"                 evidence: {', '.join(figures)}", flush=True)
        finally:
            stop.set()
            traffic.join(30)
        return client.rollouts.get(rollout_id)

    step("Acme trains v4 and checks it offline against production (v2) on held-out rows")
    v4_path = workdir / "cancer-v4.onnx"
    train_onnx(0.3, x_test, y_test, v4_path)  # trained on a fresh sample: stands in for new data
    lineage: dict[str, Any] = {"code_revision": code_revision()}
    if (revision_time := code_revision_time()) is not None:
        lineage["code_revision_time"] = revision_time
    v4 = client.models.register("cancer", v4_path, lineage=lineage)
    evaluation = client.models.evaluate(
        "cancer", v4.version, x_test, y_test, dataset="cancer-holdout", baseline_alias="production"
    )
    print(
        f"   accuracy on 'cancer-holdout': v{v4.version} {evaluation.metrics['accuracy']:.3f}, "
        f"v{evaluation.baseline_version} {evaluation.baseline_metrics['accuracy']:.3f} (recorded in v{v4.version}'s lineage)"
    )

    step(
        f"A canary rollout of v{v4.version}: gates first, then 10% -> 50% -> 100%, sequential analysis every tick"
    )
    gates = {
        "onnx_valid": True,
        "latency_budget_ms": 5.0,
        "quality_dataset": "cancer-holdout",
        "quality_metric": "accuracy",
        "quality_tolerance": 0.02,
    }
    good = client.rollouts.start(
        "cancer-prod", v4.version, steps=[(10, 4, 40), (50, 4, 40), (100, 2, 1)], gates=gates
    )
    done = watch(good.id)
    print(f"   rollout {done.id}: {phase_name(done.phase)} -- {done.reason}")

    step("A bad release, v5: slower and failing on some rows. Its canary is rolled back on evidence")
    bad_path = slow_classifier_onnx(
        workdir / "cancer-bad.onnx", features=x_test.shape[1], classes=2, fail_at_or_above=20
    )
    v5 = client.models.register(
        "cancer", bad_path, description="fault injection: slow, errors on large radii"
    )
    failed_before = failed[0]
    bad = client.rollouts.start("cancer-prod", v5.version, steps=[(10, 30, 100), (50, 30, 100), (100, 10, 1)])
    done = watch(bad.id)
    print(f"   rollout {done.id}: {phase_name(done.phase)} -- {done.reason}")
    took = done.finished_at.ToMicroseconds() - done.started_at.ToMicroseconds()
    print(
        f"   decided {took / 1e6:.1f} s after the start, with v{v5.version} on 10% of the traffic; "
        f"{failed[0] - failed_before} client calls failed, all on v{v5.version} itself"
    )
    traffic = client.deployments.get("cancer-prod").traffic
    print(f"   traffic now: {', '.join(f'v{t.version}={t.weight:g}%' for t in traffic)}")

    step(f"`foedus rollout status {bad.id}`")
    foedus_cli(*env_args, "rollout", "status", str(bad.id))
    step("`foedus report dora`")
    foedus_cli(*env_args, "report", "dora", "--days", "1")


def federation(server: Any, workdir: Path) -> None:
    """Three organisations train the anomaly detector of their servers' metrics together with
    Flower (each one's data stays in its own SuperNode), the result is registered in the platform
    scope and delivered to each organisation's detector deployment as a canary rollout; one
    organisation's agent serves it under replayed traffic until the canary's verdict."""
    import asyncio
    import threading

    import grpc

    from foedus.client_sdk import Client
    from foedus.client_sdk.agent.runtime import AgentConfig
    from foedus.federation.anomaly import AnomalyConfig, AnomalyModel
    from foedus.federation.evaluation.smd import available_machines, default_data_dir, load_machine
    from foedus.oip.v2 import inference_pb2, inference_pb2_grpc
    from foedus.v1 import rollout_pb2

    finished = (
        rollout_pb2.ROLLOUT_PHASE_SUCCEEDED,
        rollout_pb2.ROLLOUT_PHASE_ROLLED_BACK,
        rollout_pb2.ROLLOUT_PHASE_ABORTED,
    )
    try:
        machines = available_machines(default_data_dir())
    except FileNotFoundError as exc:
        step(f"Federated learning: skipped, no server metrics to learn from ({exc})")
        return
    step("Three organisations learn one anomaly detector of their servers' metrics together")
    orgs = {"acme": machines[0], "globex": machines[len(machines) // 2], "initech": machines[-1]}
    window, steps = 5, 3000
    # one network, as federated training shares: v1 and the federated version take the same windows
    config = AnomalyConfig(window=window, members=1, hidden=32, code=4, epochs=2, calibration_block=720)
    owners: dict[str, str] = {}
    with server.client() as admin:
        existing = {t.name for t in admin.tenants.list()}
        for org in orgs:
            if org not in existing:
                admin.tenants.create(org)
            owners[org] = admin.keys.create("owner", tenant=org, description="demo: federation").secret
    tests: dict[str, np.ndarray] = {}
    nodes: list[str] = []
    for org, name in orgs.items():
        machine = load_machine(default_data_dir(), name, limit=steps)
        tests[org] = machine.test.astype(np.float32)
        data = workdir / f"{org}-history.npz"
        np.savez(data, train=machine.train.astype(np.float32))
        nodes += ["--node", f"{org}={data}"]
        own = AnomalyModel.fit(machine.train, config=config, search=False).export_onnx(
            workdir / f"{org}-own.onnx"
        )
        with Client.connect(server.target, api_key=owners[org]) as client:
            v1 = client.models.register("ops-anomaly", own, framework="onnx", create_model=True)
            client.deployments.create("ops-anomaly", "ops-anomaly", traffic={v1.version: 1.0})
            client.federation.opt_in("anomaly", "ops-anomaly")
        print(f"   {org}: SMD {name} ({steps} one-minute steps x 38 metrics), its own detector v1, opted in")
    step(
        "`foedus federation run`: a SuperLink and three SuperNodes (TLS, SuperNode keys), 3 rounds of FedAvg"
    )
    admin_args = ("--server", server.target, "--api-key", server.admin_key)
    foedus_cli(
        *admin_args, "federation", "run", *nodes, "--features", "38", "--window", str(window),
        "--hidden", "32", "--rounds", "3", "--workdir", str(workdir / "federation"),
        "--rollout", "--step", "50:3:40", "--step", "100:3:40",
    )  # fmt: skip

    step("Acme's agent serves its detector; the federated version is the canary, under replayed metrics")
    with Client.connect(server.target, api_key=owners["acme"]) as acme:
        active = acme.rollouts.list(deployment="ops-anomaly", active_only=True)
        if not active:
            print("   (no canary was started for acme)")
            return
        rollout = active[0]
        agent_key = acme.keys.create("agent", description="demo: detector agent").secret
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        agent = start_agent(
            loop,
            AgentConfig(
                deployment="ops-anomaly",
                server=server.target,
                api_key=agent_key,
                listen="127.0.0.1:0",
                data_dir=workdir / "acme-agent",
                name="acme-detector",
                interval_s=0.5,
            ),
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{agent.port}")
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        series, i = tests["acme"], 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = series[i % (len(series) - window) :][:window][None]
            req = inference_pb2.ModelInferRequest(model_name="ops-anomaly")
            req.inputs.add(name="metrics", datatype="FP32", shape=list(rows.shape))
            req.raw_input_contents.append(rows.astype("<f4").tobytes())
            with contextlib.suppress(grpc.RpcError):
                stub.ModelInfer(req, timeout=10)
            i += 1
            if i % 50 == 0:
                rollout = acme.rollouts.get(rollout.id)
                if rollout.phase in finished:
                    break
            time.sleep(0.005)
        rollout = acme.rollouts.get(rollout.id)
        channel.close()
        asyncio.run_coroutine_threadsafe(agent.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
    foedus_cli("--server", server.target, "--api-key", owners["acme"], "rollout", "status", str(rollout.id))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, help="keep the server's data here (default: a temporary directory)"
    )
    args = parser.parse_args()

    import onnxruntime as ort
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from foedus.client_sdk import Client, NotFound, PermissionDenied
    from foedus.client_sdk.testing import LocalServer

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="foedus-demo-"))
    data_dir = args.data_dir or workdir / "server"

    step("Starting an embedded Foedus control plane (SQLite + local artifact store)")
    with LocalServer(data_dir, rollout_tick_s=1.0) as server:
        print(f"   listening on {server.target}; data in {data_dir}")
        print(f"   platform admin key written to {data_dir / 'admin.key'} (mode 0600)")

        step("Admin creates two tenants, each with a first owner key")
        with server.client() as admin:
            acme = admin.tenants.create("acme", display_name="Acme Corp")
            globex = admin.tenants.create("globex", display_name="Globex")
            for t in (acme, globex):
                print(f"   tenant {t.tenant.name:<7} owner key {t.owner_key.key_id} (secret shown once)")

        acme_client = Client.connect(server.target, api_key=acme.owner_key_secret)
        globex_client = Client.connect(server.target, api_key=globex.owner_key_secret)

        step("Acme trains a breast-cancer classifier (scikit-learn data) and converts it to ONNX")
        data = load_breast_cancer()
        x = data.data.astype(np.float32)
        x_train, x_test, y_train, y_test = train_test_split(x, data.target, test_size=0.25, random_state=0)
        fingerprint = hashlib.sha256(x_train.tobytes() + y_train.tobytes()).hexdigest()[:16]
        v1_path, v2_path = workdir / "cancer-v1.onnx", workdir / "cancer-v2.onnx"
        acc1 = train_onnx(0.01, x_train, y_train, v1_path)
        acc2 = train_onnx(1.0, x_train, y_train, v2_path)
        print(f"   v1 (C=0.01) train accuracy {acc1:.3f}; v2 (C=1.0) train accuracy {acc2:.3f}")

        step("Acme registers both versions with lineage and a reference profile (gates run on the server)")
        names = [str(n) for n in data.feature_names]
        v1 = acme_client.models.register(
            "cancer",
            v1_path,
            aliases=["production"],
            tags={"team": "oncology"},
            lineage={
                "data_fingerprint": fingerprint,
                "code_revision": code_revision(),
                "regularization": "0.01",
            },
            reference_data=x_train,
            feature_names=names,
            description="logistic regression, strong regularization",
        )
        v2 = acme_client.models.register(
            "cancer",
            v2_path,
            aliases=["candidate"],
            lineage={
                "data_fingerprint": fingerprint,
                "code_revision": code_revision(),
                "parent_version": v1.version,
                "regularization": "1.0",
            },
            reference_data=x_train,
            feature_names=names,
            description="logistic regression, weaker regularization",
        )
        for v in (v1, v2):
            sig_in = ", ".join(f"{t.name}{list(t.shape)}:{t.dtype}" for t in v.signature.inputs)
            print(
                f"   v{v.version}: sha256 {v.artifact.sha256[:12]}…  opset {v.artifact.onnx_opset}  input {sig_in}  "
                f"CPU latency p50 {v.latency.p50_ms:.3f} ms p99 {v.latency.p99_ms:.3f} ms  aliases {list(v.aliases)}"
            )
        profile = acme_client.models.get_version("cancer", v2.version).reference_profile
        first = profile.features[0]
        print(
            f"   reference profile: {len(profile.features)} features over {profile.row_count} rows; "
            f"'{first.name}' bins {[round(e, 2) for e in first.numeric.edges[:4]]}… counts {list(first.numeric.counts)}"
        )

        step("Acme promotes v2: 'production' moves atomically from v1 to v2")
        previous = acme_client.models.set_alias("cancer", "production", v2.version)
        acme_client.models.delete_alias("cancer", "candidate")
        model = acme_client.models.get("cancer")
        print(
            f"   production: v{previous} -> v{model.aliases['production']}; aliases now {dict(model.aliases)}"
        )

        step("Acme downloads 'production' (sha256 verified) and serves it with onnxruntime")
        path = acme_client.models.download("cancer", workdir, alias="production")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        labels = session.run(None, {"input": x_test})[0]
        print(f"   {path.name}: predicted {len(labels)} held-out rows, {int(labels.sum())} benign")

        step("Acme archives v1 (no alias points at it any more)")
        archived = acme_client.models.archive("cancer", v1.version)
        print(
            f"   v{archived.version} state: archived; visible versions: "
            f"{[v.version for v in acme_client.models.versions('cancer')]}"
        )

        step("Globex cannot see Acme's models")
        try:
            globex_client.models.get("cancer")
            print("   UNEXPECTED: globex read acme's model")
            sys.exit(1)
        except NotFound as exc:
            print(f"   globex get 'cancer' -> NotFound: {exc}")
        print(f"   globex model list -> {[m.name for m in globex_client.models.list()]}")

        step("A viewer key of Acme may read but not register")
        viewer = acme_client.keys.create("viewer", description="dashboards")
        with Client.connect(server.target, api_key=viewer.secret) as viewer_client:
            print(f"   viewer reads latest version: v{viewer_client.models.get('cancer').latest_version}")
            try:
                viewer_client.models.register("cancer", v1_path)
                sys.exit("UNEXPECTED: a viewer registered a version")
            except PermissionDenied as exc:
                print(f"   viewer register -> PermissionDenied: {exc}")

        step("Acme's audit log (newest first)")
        for entry in acme_client.audit(limit=8):
            print(f"   {entry.method.rsplit('/', 1)[1]:<20} {entry.resource:<32} {entry.outcome}")

        run_agents(server, acme_client, acme.owner_key_secret, x_test, y_test, workdir)
        federation(server, workdir)
        acme_client.close()
        globex_client.close()
    print(f"\nDemo finished in {time.perf_counter() - started:.1f} s.")


if __name__ == "__main__":
    main()
