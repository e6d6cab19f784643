"""The agent's Open Inference Protocol service: real ONNX models, a real gRPC server on port 0."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data, iris_onnx

ort = pytest.importorskip("onnxruntime")

from foedus.client_sdk.agent.serving import InferenceServicer, LoadedModel, ModelTable, Route  # noqa: E402
from foedus.client_sdk.agent.tensors import InputLimits  # noqa: E402
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc  # noqa: E402


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: dict[tuple[str, bool], int] = {}
        self.errors = 0
        self.invalid_requests = 0

    def record(
        self,
        model: LoadedModel,
        latency_ms: float,
        ok: bool,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[np.ndarray] | None,
        shadow: bool,
    ) -> None:
        with self.lock:
            if ok:
                self.ok[(model.version, shadow)] = self.ok.get((model.version, shadow), 0) + 1
            else:
                self.errors += 1

    def invalid(self, model: LoadedModel) -> None:
        with self.lock:
            self.invalid_requests += 1


def load(path: Path, version: str) -> LoadedModel:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return LoadedModel.from_session("iris", version, session)


class Agent:
    def __init__(self, table: ModelTable, counts: Counts, limits: InputLimits) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.executor = ThreadPoolExecutor(4)

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            servicer = InferenceServicer(table, self.executor, limits=limits, observer=counts)
            inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.target = f"127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.executor.shutdown()


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    d = tmp_path_factory.mktemp("oip")
    return {
        "1": load(iris_onnx(d, c=1.0, name="v1.onnx"), "1"),
        "2": load(iris_onnx(d, c=0.01, name="v2.onnx"), "2"),
    }


@pytest.fixture
def table(versions: dict[str, LoadedModel]) -> ModelTable:
    t = ModelTable()
    t.set_route("iris", Route.build(versions, {"1": 1.0}))
    return t


@pytest.fixture
def counts() -> Counts:
    return Counts()


@pytest.fixture
def stub(table: ModelTable, counts: Counts) -> Iterator[inference_pb2_grpc.GRPCInferenceServiceStub]:
    agent = Agent(table, counts, InputLimits(max_elements=1000))
    with grpc.insecure_channel(agent.target) as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    agent.stop()


def infer_request(
    x: np.ndarray, *, raw: bool = True, key: str | None = None
) -> inference_pb2.ModelInferRequest:
    req = inference_pb2.ModelInferRequest(model_name="iris", id="r1")
    tensor = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    if key is not None:
        req.parameters["request_key"].string_param = key
    return req


def labels(resp: inference_pb2.ModelInferResponse) -> np.ndarray:
    i = [o.name for o in resp.outputs].index("label")
    return np.frombuffer(resp.raw_output_contents[i], dtype="<i8").reshape(tuple(resp.outputs[i].shape))


def test_metadata_and_readiness(stub: Any) -> None:
    assert stub.ServerLive(inference_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(inference_pb2.ServerReadyRequest()).ready
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="iris")).ready
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name="iris", version="9")).ready
    meta = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="iris"))
    assert list(meta.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 4])]
    assert {t.name: t.datatype for t in meta.outputs} == {"label": "INT64", "probabilities": "FP32"}


@pytest.mark.parametrize("raw", [True, False])
def test_infer_matches_onnxruntime(stub: Any, versions: dict[str, LoadedModel], raw: bool) -> None:
    x, _ = iris_data()
    resp = stub.ModelInfer(infer_request(x[:50], raw=raw))
    assert (resp.model_version, resp.id) == ("1", "r1")
    expected = versions["1"].session.run(["label"], {"input": x[:50]})[0]
    np.testing.assert_array_equal(labels(resp), expected)


def test_malformed_requests_are_invalid_and_not_model_errors(stub: Any, counts: Counts) -> None:
    x, _ = iris_data()
    bad = []
    r = infer_request(x[:3, :3])  # wrong shape
    bad.append(r)
    r = infer_request(x[:3])
    r.inputs[0].datatype = "FP64"  # wrong dtype
    bad.append(r)
    bad.append(inference_pb2.ModelInferRequest(model_name="iris"))  # missing input
    r = infer_request(x[:3])
    r.raw_input_contents[0] = r.raw_input_contents[0][:-4]  # too few bytes
    bad.append(r)
    bad.append(infer_request(np.zeros((300, 4), np.float32)))  # 1200 elements > limit 1000
    r = infer_request(x[:3])
    r.outputs.add(name="nope")
    bad.append(r)
    r = infer_request(x[:3])
    r.inputs.add(name="extra", datatype="FP32", shape=[1])
    bad.append(r)
    for request in bad:
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
        assert exc.value.details()
    assert counts.invalid_requests == len(bad)
    assert counts.errors == 0
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(inference_pb2.ModelInferRequest(model_name="other"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_switching_versions_under_load_fails_no_request(
    stub: Any, table: ModelTable, versions: dict[str, LoadedModel], counts: Counts
) -> None:
    x, _ = iris_data()
    request = infer_request(x[:8])
    failures: list[BaseException] = []
    served: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                served.add(stub.ModelInfer(request, timeout=10).model_version)
            except grpc.RpcError as exc:  # pragma: no cover - reported by the assertion
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(60):
        table.set_route("iris", Route.build(versions, {"1": 1.0} if i % 2 else {"2": 1.0}))
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert served == {"1", "2"}
    assert counts.errors == 0


def test_sticky_routing_by_request_key(
    stub: Any, table: ModelTable, versions: dict[str, LoadedModel]
) -> None:
    table.set_route("iris", Route.build(versions, {"1": 0.5, "2": 0.5}))
    x, _ = iris_data()
    for key in ("alice", "bob", "carol"):
        seen = {stub.ModelInfer(infer_request(x[:1], key=key)).model_version for _ in range(10)}
        assert len(seen) == 1, key
    spread = {stub.ModelInfer(infer_request(x[:1], key=f"user-{i}")).model_version for i in range(100)}
    assert spread == {"1", "2"}


def test_shadow_version_is_run_and_discarded(
    stub: Any, table: ModelTable, versions: dict[str, LoadedModel], counts: Counts
) -> None:
    table.set_route("iris", Route.build(versions, {"1": 1.0}, shadow="2"))
    x, _ = iris_data()
    for _ in range(20):
        assert stub.ModelInfer(infer_request(x[:4])).model_version == "1"
    deadline = time.monotonic() + 5
    while counts.ok.get(("2", True), 0) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counts.ok.get(("2", True)) == 20
    assert counts.ok.get(("2", False), 0) == 0


TRITON_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton

client = triton.InferenceServerClient(url=sys.argv[1])
x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
inp = triton.InferInput("input", list(x.shape), "FP32")
inp.set_data_from_numpy(x)
result = client.infer("iris", [inp], outputs=[triton.InferRequestedOutput("label")])
meta = client.get_model_metadata("iris")
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_model_ready("iris"),
    "inputs": [i.name for i in meta.inputs],
    "labels": result.as_numpy("label").tolist(),
}))
"""


def test_a_standard_triton_client_can_call_the_agent(
    table: ModelTable, counts: Counts, versions: dict[str, LoadedModel]
) -> None:
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (it comes with the dev extra)")

    x, _ = iris_data()
    agent = Agent(table, counts, InputLimits())
    try:
        # A separate process: tritonclient registers the same protocol messages under its own file name.
        out = subprocess.run(
            [sys.executable, "-c", TRITON_CLIENT, agent.target, json.dumps(x[:20].tolist())],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        agent.stop()
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = versions["1"].session.run(["label"], {"input": x[:20]})[0]
    assert got == {"live": True, "ready": True, "inputs": ["input"], "labels": expected.tolist()}


def test_routes_reject_unknown_versions(versions: dict[str, LoadedModel]) -> None:
    with pytest.raises(ValueError, match="not loaded"):
        Route.build(versions, {"3": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        Route.build(versions, {"1": 0.0})
