"""Faults under load: a replica SIGKILLed, PostgreSQL restarted.

Real server processes on PostgreSQL, real agents serving real inference traffic, SDK clients
writing. What must hold: nothing the control plane acknowledged is lost (every request an agent
served ends up counted, every model whose creation was acknowledged is there), the agents go on
through the surviving replica, and after a database restart the servers recover by themselves.
The seconds the agents needed to follow a change after the fault are printed (-s shows them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data, iris_onnx
from serverproc import ServerPool, ServerProcess
from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.errors import FoedusError

pytest.importorskip("onnxruntime")
pytest.importorskip("psycopg")

from test_agents import AgentLoop, free_port, request

from foedus.client_sdk.agent.runtime import Agent, AgentConfig
from foedus.oip.v2 import inference_pb2_grpc


class Traffic:
    """Inference requests to the agents and model creations through the SDK, in background
    threads, counting only what succeeded (was acknowledged)."""

    def __init__(self, agents: list[Agent], client: Client) -> None:
        self.served = 0
        self.created: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._channels = [grpc.insecure_channel(f"127.0.0.1:{a.port}") for a in agents]
        self._client = client
        self._threads = [
            threading.Thread(target=self._infer, daemon=True),
            threading.Thread(target=self._create, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for channel in self._channels:
            channel.close()

    def _infer(self) -> None:
        x, _ = iris_data()
        stubs = [inference_pb2_grpc.GRPCInferenceServiceStub(c) for c in self._channels]
        i = 0
        while not self._stop.is_set():
            stub = stubs[i % len(stubs)]
            try:
                stub.ModelInfer(request(x[i % len(x) : i % len(x) + 1].astype(np.float32)), timeout=10)
                self.served += 1
            except grpc.RpcError as exc:  # the agents serve whatever the control plane does
                self.errors.append(f"inference: {exc.code().name}: {exc.details()}")
            i += 1
            time.sleep(0.01)

    def _create(self) -> None:
        i = 0
        while not self._stop.is_set():
            name = f"m-{i}"
            try:
                self._client.models.create(name)
                self.created.append(name)
            except FoedusError:
                pass  # in flight on the killed replica: not acknowledged, so it may or may not exist
            i += 1
            time.sleep(0.02)


def _requests_counted(client: Client) -> int:
    status = client.monitoring.status("iris-prod", window_s=3600)
    return sum(v.requests for v in status.versions if not v.shadow)


def _follow_seconds(client: Client, agents: list[Agent], traffic: dict[int, float]) -> float:
    """Seconds from a traffic change (retried until a replica takes it) to every agent serving it."""
    start = time.monotonic()
    while True:
        try:
            generation = client.deployments.set_traffic("iris-prod", traffic).generation
            break
        except FoedusError:
            assert time.monotonic() - start < 60, "no replica took the traffic change"
            time.sleep(0.05)
    wait_for(lambda: all(a.generation >= generation for a in agents), 60, "the agents to follow")
    return time.monotonic() - start


@contextlib.contextmanager
def deployment_with_agents(target: str, owner: str, tmp_path: Path, count: int = 2) -> Iterator[list[Agent]]:
    x, _ = iris_data()
    with Client.connect(target, api_key=owner) as client:
        client.models.register("iris", iris_onnx(tmp_path, c=1.0, name="a.onnx"), reference_data=x)
        client.models.register("iris", iris_onnx(tmp_path, c=0.01, name="b.onnx"), reference_data=x)
        client.deployments.create("iris-prod", "iris", traffic={1: 1.0})
        agent_key = client.keys.create("agent").secret
    loop = AgentLoop()
    agents: list[Agent] = []
    try:
        for i in range(count):
            agents.append(
                loop.start_agent(
                    AgentConfig(
                        deployment="iris-prod",
                        server=target,
                        api_key=agent_key,
                        listen="127.0.0.1:0",
                        data_dir=tmp_path / f"agent-{i}",
                        name=f"agent-{i}",
                        interval_s=0.3,
                    )
                )
            )
        wait_for(lambda: all(a.generation >= 1 for a in agents), 60, "the agents to load generation 1")
        yield agents
    finally:
        for agent in agents:
            loop.call(agent.stop())
        loop.close()


def test_sigkill_of_a_replica_under_load_loses_no_acknowledged_data(
    pool: ServerPool, postgres_url: str, tmp_path: Path
) -> None:
    settings = {"db": postgres_url, "artifact_store": "database", "latency_runs": 3}
    a = pool.start(tmp_path / "a", listen=f"127.0.0.1:{free_port()}", **settings)
    (tmp_path / "b").mkdir()
    shutil.copy(a.data_dir / "admin.key", tmp_path / "b" / "admin.key")
    b = pool.start(tmp_path / "b", listen=f"127.0.0.1:{free_port()}", **settings)
    target = f"{a.target},{b.target}"
    owner = a.create_tenant("acme")
    with (
        deployment_with_agents(target, owner, tmp_path) as agents,
        Client.connect(target, api_key=owner) as client,
    ):
        with Traffic(agents, client) as load:
            wait_for(lambda: load.served >= 200 and len(load.created) >= 20, 120, "load to build up")
            a.kill()  # SIGKILL: no shutdown, connections and in-flight calls just break
            follow_s = _follow_seconds(client, agents, {2: 1.0})
            served_at_kill = load.served
            wait_for(lambda: load.served >= served_at_kill + 200, 120, "traffic to go on after the kill")
        print(f"\nagents followed a change {follow_s:.2f} s after the SIGKILL of a replica")
        assert not load.errors, load.errors[:5]
        # Every request an agent served is counted: batches stay queued on the agent until a
        # replica acknowledges them, and what a replica acknowledged was committed.
        wait_for(lambda: _requests_counted(client) == load.served, 60, "every served request to be counted")
        assert _requests_counted(client) == load.served
        names = {m.name for m in client.models.list(limit=None)}
        assert set(load.created) <= names, sorted(set(load.created) - names)[:5]
    assert b.alive


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A PostgreSQL cluster of this test's own (initdb), which the test may restart: (URL, data
    directory, command prefix to run its tools as). Skips when the tools are missing."""
    bindirs = [str(Path(p).parent) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    initdb = shutil.which("initdb") or (bindirs and f"{bindirs[0]}/initdb")
    if not initdb:
        pytest.skip("PostgreSQL server tools (initdb, pg_ctl) are not installed")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    prefix: list[str] = []
    data = tmp_path / "pg"
    data.mkdir()
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        prefix = ["runuser", "-u", "postgres", "--"]
        try:
            shutil.chown(data, "postgres")
            for parent in (tmp_path, *tmp_path.parents):
                os.chmod(parent, os.stat(parent).st_mode | 0o005)  # let postgres reach it
        except (LookupError, PermissionError) as exc:
            pytest.skip(f"cannot hand a data directory to the postgres user: {exc}")
    port = free_port()
    init = subprocess.run(
        [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], capture_output=True, text=True
    )
    if init.returncode != 0:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    ctl = [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(data / "log"), "-w"]
    subprocess.run([*ctl, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", data, ctl
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)


def test_servers_recover_by_themselves_when_postgresql_restarts(
    pool: ServerPool, private_postgres: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    url, _, ctl = private_postgres
    settings = {"db": url, "artifact_store": "database", "latency_runs": 3}
    a = pool.start(tmp_path / "a", listen=f"127.0.0.1:{free_port()}", **settings)
    (tmp_path / "b").mkdir()
    shutil.copy(a.data_dir / "admin.key", tmp_path / "b" / "admin.key")
    b = pool.start(tmp_path / "b", listen=f"127.0.0.1:{free_port()}", **settings)
    replicas: list[ServerProcess] = [a, b]
    target = ",".join(r.target for r in replicas)
    owner = a.create_tenant("acme")
    with (
        deployment_with_agents(target, owner, tmp_path) as agents,
        Client.connect(target, api_key=owner) as client,
    ):
        with Traffic(agents, client) as load:
            wait_for(lambda: load.served >= 100, 120, "load to build up")
            down = subprocess.run([*ctl, "-m", "fast", "restart"], capture_output=True, text=True)
            assert down.returncode == 0, down.stderr
            follow_s = _follow_seconds(client, agents, {2: 1.0})
            served_at_restart = load.served
            wait_for(lambda: load.served >= served_at_restart + 100, 120, "traffic to go on")
        print(f"\nagents followed a change {follow_s:.2f} s after PostgreSQL restarted")
        wait_for(lambda: _requests_counted(client) == load.served, 60, "every served request to be counted")
        # Both replicas serve again (each one's own pool and change-feed connections recovered).
        for replica in replicas:
            with Client.connect(replica.target, api_key=owner) as direct:
                assert direct.models.get("iris").name == "iris"
                direct.models.create(f"after-{uuid.uuid4().hex[:6]}")
    assert all(r.alive for r in replicas)
