"""Registration gates for ONNX artifacts: validity, signature, CPU latency profile.

They run on the uploaded file before it becomes a blob, so a rejected artifact leaves nothing
behind. Every failure is an InvalidArgument whose message says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foedus.server.errors import InvalidArgument
from foedus.server.store.records import LatencyProfile, ReferenceProfile, Signature, TensorSpec


@dataclass(frozen=True, slots=True)
class GateConfig:
    latency_runs: int = 50
    """Timed runs of the synthetic batch (after 3 warm-up runs)."""
    latency_budget_s: float = 2.0
    """Stop timing early when the runs take longer than this."""
    batch_size: int = 1
    """Size given to the dynamic batch dimension of the synthetic input."""


@dataclass(frozen=True, slots=True)
class OnnxReport:
    opset: int
    signature: Signature
    latency: LatencyProfile


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.str_,
}


def check_onnx(path: Path, config: GateConfig) -> OnnxReport:
    import onnx

    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise InvalidArgument(f"not a valid ONNX model: {_first_line(exc, path)}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_spec(v) for v in model.graph.output)
    if not inputs or not outputs:
        raise InvalidArgument("the ONNX model must declare at least one input and one output")
    latency = _latency(path, config)
    return OnnxReport(opset=int(opset), signature=Signature(inputs, outputs), latency=latency)


def check_profile_matches(signature: Signature, profile: ReferenceProfile) -> None:
    """A profile of a single 2-D input must describe exactly as many features as the input has columns."""
    if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 2:
        return
    columns = signature.inputs[0].shape[1]
    if columns > 0 and columns != len(profile.features):
        raise InvalidArgument(
            f"reference profile has {len(profile.features)} features but the model's input "
            f"{signature.inputs[0].name!r} has {columns} columns"
        )


def _tensor_spec(value: object) -> TensorSpec:
    import onnx

    vtype = value.type  # type: ignore[attr-defined]
    name = str(value.name)  # type: ignore[attr-defined]
    if not vtype.HasField("tensor_type"):
        kind = vtype.WhichOneof("value")
        return TensorSpec(name, str(kind), ())
    tensor = vtype.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    if dtype.startswith("<U") or dtype == "object":
        dtype = "string"
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(name, dtype, shape)


def _latency(path: Path, config: GateConfig) -> LatencyProfile:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: _synthetic(i.type, i.shape, config.batch_size) for i in session.get_inputs()}
        for _ in range(3):
            session.run(None, feeds)
        times: list[float] = []
        deadline = time.perf_counter() + config.latency_budget_s
        while len(times) < config.latency_runs and (len(times) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - start) * 1000.0)
    except InvalidArgument:
        raise
    except Exception as exc:
        raise InvalidArgument(
            f"the ONNX model does not run on onnxruntime's CPU provider: {_first_line(exc, path)}"
        ) from exc
    arr = np.asarray(times)
    return LatencyProfile(
        p50_ms=float(np.percentile(arr, 50)),
        p99_ms=float(np.percentile(arr, 99)),
        runs=len(times),
        batch_size=config.batch_size,
        execution_provider="CPUExecutionProvider",
    )


def _synthetic(ort_type: str, shape: list[int | str | None], batch: int) -> np.ndarray:
    dtype = _ORT_DTYPES.get(ort_type)
    if dtype is None:
        raise InvalidArgument(f"the latency gate cannot build a synthetic input of type {ort_type}")
    dims = [d if isinstance(d, int) and d > 0 else batch for d in shape]
    rng = np.random.default_rng(0)
    if dtype is np.str_:
        return np.full(dims, "a", dtype=object)
    if dtype is np.bool_:
        return rng.random(dims) > 0.5
    return rng.random(dims).astype(dtype)


def _first_line(exc: BaseException, path: Path) -> str:
    """The first line of a checker's message, without the server's paths (the caller sees it)."""
    text = str(exc).strip() or type(exc).__name__
    text = text.replace(str(path), "the uploaded file").replace(str(path.parent), "the upload directory")
    return text.splitlines()[0][:500]
