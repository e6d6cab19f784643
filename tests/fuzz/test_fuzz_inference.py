"""Fuzzing of the agent's Open Inference Protocol service (foedus.oip.v2, package `inference`), served as the agent serves
it (`inference_server`) with a real ONNX model: no input gets INTERNAL, UNKNOWN or DATA_LOSS.

A model that fails at run time is answered INTERNAL on purpose (it counts as a model error); the
iris model does not fail on any input that passes the checks, so here INTERNAL is a fault too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from foedus_testdata import iris_data
from fuzz.rpcfuzz import Fuzzer, Input, Keys, Report, Rpc, Samples, run_rpc

ort = pytest.importorskip("onnxruntime")

from foedus.client_sdk.agent.serving import (  # noqa: E402
    InferenceServicer,
    LoadedModel,
    ModelTable,
    Route,
    inference_server,
)
from foedus.client_sdk.agent.tensors import InputLimits  # noqa: E402
from foedus.oip.v2 import inference_pb2  # noqa: E402

pytestmark = pytest.mark.slow

EXAMPLES_PER_RPC = 100
SEED = 20260902
SAMPLES = Samples(
    names=["iris", "1", "2", "input", "label", "probabilities", "FP32", "INT64", "BYTES", "request_key"],
    numbers=[0, 1, 2, 3, 4, -1],
)


@pytest.fixture(scope="module")
def target(onnx_model: Path) -> Iterator[str]:
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    table = ModelTable()
    versions = {"1": LoadedModel.from_session("iris", "1", session)}
    table.set_route("iris", Route.build(versions, {"1": 1.0}))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    executor = ThreadPoolExecutor(2)

    async def start() -> tuple[grpc.aio.Server, int]:
        server = inference_server(InferenceServicer(table, executor, limits=InputLimits(max_elements=4096)))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        executor.shutdown()


def _real_requests() -> list[Input]:
    """Valid requests (raw and typed contents) and damaged copies, mixed into ModelInfer's inputs."""
    x, _ = iris_data()
    raw = inference_pb2.ModelInferRequest(model_name="iris", id="r")
    raw.inputs.add(name="input", datatype="FP32", shape=[3, 4])
    raw.raw_input_contents.append(x[:3].astype("<f4").tobytes())
    typed = inference_pb2.ModelInferRequest(model_name="iris")
    typed.inputs.add(name="input", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend(
        x[:2].reshape(-1).tolist()
    )
    empty = inference_pb2.ModelInferRequest(model_name="iris")
    empty.inputs.add(name="input", datatype="FP32", shape=[0, 4])
    empty.raw_input_contents.append(b"")
    nan = inference_pb2.ModelInferRequest(model_name="iris")
    nan.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    nan.raw_input_contents.append(np.array([[np.nan, np.inf, -np.inf, 1e38]], "<f4").tobytes())
    inputs = []
    for name, request in (("raw", raw), ("typed", typed), ("empty batch", empty), ("nan", nan)):
        data = request.SerializeToString()
        inputs.append(Input((data,), "message", "valid", f"{name} iris request"))
        inputs.append(Input((data[: len(data) // 2],), "garbled", "valid", f"half of the {name} request"))
    return inputs


def test_fuzzing_the_inference_service(target: str) -> None:
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    rpcs = [Rpc(f"/{service.full_name}/{m.name}", m, None) for m in service.methods]
    fuzzer = Fuzzer(target, Keys("", "", "", ""), tenant="", report=Report())
    try:
        for rpc in rpcs:
            extra = _real_requests() if rpc.method.name == "ModelInfer" else ()
            run_rpc(fuzzer, rpc, EXAMPLES_PER_RPC, SEED, SAMPLES, extra)
    finally:
        fuzzer.close()
    report = fuzzer.report
    print(report.table())
    assert not report.violations, "\n".join(v.line() for v in report.violations[:20])
    assert len(report.inputs) == len(rpcs) == 6
    assert report.codes[f"{service.full_name}/ModelInfer"]["OK"] > 0
