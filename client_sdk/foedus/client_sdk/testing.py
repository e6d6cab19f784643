"""An in-process Foedus server for tests: `with LocalServer() as server: Client.connect(server.target, ...)`.

Needs the server extra (`pip install foedus[server]`). The server runs on 127.0.0.1 on a free port,
in a temporary data directory (SQLite), on its own event loop in a background thread.

    from foedus.client_sdk import Client
    from foedus.client_sdk.testing import LocalServer

    def test_register(tmp_path):
        with LocalServer() as server:
            key = server.create_tenant("acme")            # an owner key of a new tenant
            with Client.connect(server.target, api_key=key) as client:
                client.models.register("m", "model.onnx")
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any

from foedus.client_sdk.client import Client, TlsConfig


class LocalServer:
    def __init__(
        self, data_dir: str | Path | None = None, *, client_tls: TlsConfig | None = None, **settings: Any
    ) -> None:
        """`settings` are ServerConfig fields (e.g. `db="postgresql://..."`, `latency_runs=5`);
        `client_tls` is what `client()` and `create_tenant()` connect with (for a TLS server)."""
        self.client_tls = client_tls
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="foedus-test-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.settings: dict[str, Any] = dict(settings)
        """The ServerConfig fields this server was given (e.g. `db`, `artifact_store`)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="foedus-local-server", daemon=True
        )
        self._server: Any = None
        self.target = ""
        self.health_target = ""
        """HOST:PORT of the plaintext health listener, when `health_listen` is set."""
        self.metrics_url = ""
        """URL of the Prometheus endpoint, when `metrics_listen` is set."""
        self.admin_key = ""
        self._stopped = False

    def start(self) -> LocalServer:
        """Starts serving; again after `halt()`. A running or stopped server cannot be started."""
        from foedus.server.app import build_server
        from foedus.server.config import load_config

        if self._server is not None:
            raise RuntimeError(f"this LocalServer is running already, at {self.target}")
        if self._stopped:
            raise RuntimeError("this LocalServer was stopped (its data removed); make a new one")

        settings = {"listen": "127.0.0.1:0", **self.settings}
        config = load_config(env={}, data_dir=self.data_dir, **settings)
        if not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="foedus-local-server", daemon=True
            )
            self._thread.start()

        async def start() -> Any:
            server = build_server(config)
            await server.start()
            return server

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=60)
        self.target = self._server.target
        if self._server.health_port:
            host = config.health_listen.rpartition(":")[0]
            self.health_target = f"{host}:{self._server.health_port}"
        if self._server.metrics_port:
            host = config.metrics_listen.rpartition(":")[0]
            self.metrics_url = f"http://{host}:{self._server.metrics_port}/metrics"
        key_file = Path(config.admin_key_file) if config.admin_key_file else self.data_dir / "admin.key"
        self.admin_key = key_file.read_text().strip()
        return self

    def stop(self) -> None:
        """Stops serving and removes the temporary data directory, if this server made one."""
        self.halt()
        self._stopped = self._tmp is not None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def halt(self) -> None:
        """Stops serving but keeps the data directory, so `start()` brings the same server back
        (on the same port when `listen` was given: to test clients riding out an outage)."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace=1.0), self._loop).result(timeout=30)
            self._server = None

    @property
    def store(self) -> Any:
        """The running server's store, for tests that look at what was stored."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server.store

    @property
    def metrics_urls(self) -> list[str]:
        """The Prometheus endpoint as a list, like ReplicaSet's (one per replica); empty: none."""
        return [self.metrics_url] if self.metrics_url else []

    @property
    def app(self) -> Any:
        """The running server (foedus.server.app.FoedusServer), for tests that look inside it."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server

    def client(self, api_key: str | None = None) -> Client:
        """A client with the given key (default: the platform admin key)."""
        return Client.connect(self.target, api_key=api_key or self.admin_key, tls=self.client_tls)

    def create_tenant(self, name: str) -> str:
        """Creates a tenant and returns the secret of its first owner key."""
        with self.client() as admin:
            return admin.tenants.create(name).owner_key_secret

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (for servers that must keep their port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ReplicaSet:
    """Several in-process servers on one database, as replicas of one control plane: `target` lists
    them all (`ipv4:HOST:PORT,HOST:PORT`), so clients and agents spread their calls over the replicas and
    fail over between them. Give `db`, a PostgreSQL URL, and usually `artifact_store="database"`.

    Each replica has a data directory of its own (`DATA_DIR/replica-N` when `data_dir` is given,
    else a temporary one) and a fixed port: `replicas[i].halt()` takes one away, `replicas[i].start()`
    brings it back at the same address; `halt()` and `start()` do so for all of them. Otherwise it
    offers what LocalServer does (`target`, `admin_key`, `client()`, `create_tenant()`, `data_dir`,
    `settings`, `store`), so a test can take either.

        with ReplicaSet(2, db=postgres_url, artifact_store="database") as servers:
            key = servers.create_tenant("acme")
            with Client.connect(servers.target, api_key=key) as client: ...
    """

    def __init__(
        self,
        count: int = 2,
        data_dir: str | Path | None = None,
        *,
        client_tls: TlsConfig | None = None,
        **settings: Any,
    ) -> None:
        """`settings` are ServerConfig fields, the same for every replica; not `listen`: each
        replica listens on a free port of 127.0.0.1 of its own, kept across `halt()` and `start()`."""
        if count < 1:
            raise ValueError("a replica set needs at least one replica")
        if "listen" in settings:
            raise ValueError("each replica listens on a port of its own; a ReplicaSet picks them")
        self.client_tls = client_tls
        self.settings: dict[str, Any] = dict(settings)
        """The ServerConfig fields every replica was given (e.g. `db`, `artifact_store`)."""
        # Fixed ports, so that a replica halted and started again is back where clients look for it.
        self.replicas = [
            LocalServer(
                None if data_dir is None else Path(data_dir) / f"replica-{i}",
                client_tls=client_tls,
                listen=f"127.0.0.1:{free_port()}",
                **settings,
            )
            for i in range(count)
        ]
        self.target = ""
        self.admin_key = ""

    @property
    def data_dir(self) -> Path:
        """The first replica's data directory (the one that created the admin key)."""
        return self.replicas[0].data_dir

    @property
    def store(self) -> Any:
        """The first replica's store: all of them read and write the same database."""
        return self.replicas[0].store

    @property
    def health_target(self) -> str:
        """The first replica's plaintext health listener, when `health_listen` is set (each
        replica has one of its own)."""
        return self.replicas[0].health_target

    @property
    def metrics_urls(self) -> list[str]:
        """Every replica's Prometheus endpoint, when `metrics_listen` is set (one per replica)."""
        return [url for replica in self.replicas for url in replica.metrics_urls]

    def start(self) -> ReplicaSet:
        """Starts the replicas (again, after `halt()`: at the same addresses)."""
        first, *others = self.replicas
        first.start()
        for replica in others:
            if not self.settings.get("admin_key_file"):
                # The admin key exists in the database now; the others read the same file.
                replica.data_dir.mkdir(parents=True, exist_ok=True)
                (replica.data_dir / "admin.key").write_text(first.admin_key + "\n")
            replica.start()
        self.admin_key = first.admin_key
        # A gRPC URI, so that plain grpc channels take it as well as the SDK, the CLI and agents.
        self.target = "ipv4:" + ",".join(replica.target for replica in self.replicas)
        return self

    def halt(self) -> None:
        """Stops every replica but keeps their data directories and ports: a whole control plane
        outage, which `start()` ends."""
        for replica in self.replicas:
            replica.halt()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def client(self, api_key: str | None = None) -> Client:
        """A client of all replicas with the given key (default: the platform admin key)."""
        return Client.connect(self.target, api_key=api_key or self.admin_key, tls=self.client_tls)

    def create_tenant(self, name: str) -> str:
        """Creates a tenant and returns the secret of its first owner key."""
        with self.client() as admin:
            return admin.tenants.create(name).owner_key_secret

    def __enter__(self) -> ReplicaSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def slow_classifier_onnx(
    path: Path,
    *,
    features: int,
    classes: int,
    width: int = 1024,
    layers: int = 6,
    fail_at_or_above: int = 0,
) -> Path:
    """Writes a deliberately slow ONNX classifier: a stack of dense layers behind the usual signature.

    Input `input` float32 [N, features]; outputs `label` int64 [N] and `probabilities` float32
    [N, classes], like a scikit-learn classifier converted with skl2onnx. It stands in for a bad
    release in fault-injection tests and demos: same inputs and outputs, far more work. With
    `fail_at_or_above` K > 0, a request fails at run time (an out-of-range Gather) whenever a row's
    first feature is K or more: a release with errors as well. Needs onnx.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((features, width)) * 0.1).astype(np.float32), "w0")]
    nodes = [helper.make_node("MatMul", ["input", "w0"], ["h0"]), helper.make_node("Relu", ["h0"], ["a0"])]
    for i in range(1, layers + 1):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [f"a{i - 1}", f"w{i}"], [f"h{i}"]),
            helper.make_node("Relu", [f"h{i}"], [f"a{i}"]),
        ]
    inits.append(
        numpy_helper.from_array((rng.standard_normal((width, classes)) * 0.1).astype(np.float32), "wout")
    )
    logits = "logits"
    if fail_at_or_above > 0:
        # index = int(input[:, 0]); Gather from a table of K zeros fails for any index >= K.
        inits += [
            numpy_helper.from_array(np.zeros(fail_at_or_above, dtype=np.float32), "fail_table"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "col0"),
        ]
        nodes += [
            helper.make_node("Gather", ["input", "col0"], ["first"], axis=1),
            helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["fail_table", "index"], ["zeros"], axis=0),
        ]
        logits = "logits_raw"
    nodes += [helper.make_node("MatMul", [f"a{layers}", "wout"], [logits])]
    if fail_at_or_above > 0:
        nodes += [helper.make_node("Add", ["logits_raw", "zeros"], ["logits"])]
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
