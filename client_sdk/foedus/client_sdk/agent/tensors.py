"""Tensors of the Open Inference Protocol: decoding requests into numpy, encoding results back.

Every check a request can fail is an `InvalidInput` with a message that names the tensor and what
was expected, so the agent answers INVALID_ARGUMENT and does not count it as a model error.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from foedus.oip.v2 import inference_pb2

# Protocol datatype <-> numpy dtype. BYTES tensors are numpy object arrays of bytes.
DATATYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_BY_DTYPE = {dt.str: name for name, dt in DATATYPES.items() if name != "BYTES"}

# onnxruntime's type strings -> protocol datatype.
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

_CONTENT_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class InvalidInput(ValueError):
    """The request does not fit the model: answered with INVALID_ARGUMENT, not a model error."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """-1 where the dimension is free."""


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_elements: int = 16 * 1024 * 1024
    """Largest tensor accepted, in elements (64 MiB of FP32)."""
    max_batch: int = 65_536
    """Largest first dimension accepted."""


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "US":
        return "BYTES"
    try:
        return _BY_DTYPE[
            array.dtype.newbyteorder("<").str if array.dtype.byteorder == ">" else array.dtype.str
        ]
    except KeyError:
        raise InvalidInput(f"unsupported output dtype {array.dtype}") from None


def _decode_bytes(raw: bytes, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: raw BYTES contents end early")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out[i] = raw[offset : offset + length]
        offset += length
    if offset != len(raw):
        raise InvalidInput(f"input {name!r}: raw BYTES contents hold more than {count} elements")
    return out


def _encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def decode_inputs(
    request: inference_pb2.ModelInferRequest, specs: Sequence[TensorSpec], limits: InputLimits
) -> dict[str, np.ndarray]:
    """The request's inputs as numpy arrays, checked against the model's input specs."""
    by_name = {s.name: s for s in specs}
    given = [t.name for t in request.inputs]
    missing = sorted(set(by_name) - set(given))
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(by_name)}")
    unknown = sorted(set(given) - set(by_name))
    if unknown or len(given) != len(set(given)):
        raise InvalidInput(f"unknown or repeated input(s) {', '.join(unknown or given)}")
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInput("raw_input_contents must hold one entry per input, in the order of inputs")
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = by_name[tensor.name]
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"input {tensor.name!r} has datatype {tensor.datatype}; the model expects {spec.datatype}"
            )
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) != len(spec.shape) or any(d < 0 for d in shape):
            raise InvalidInput(
                f"input {tensor.name!r} has shape {list(shape)}; the model expects {list(spec.shape)}"
            )
        for got, want in zip(shape, spec.shape, strict=True):
            if want >= 0 and got != want:
                raise InvalidInput(
                    f"input {tensor.name!r} has shape {list(shape)}; the model expects {list(spec.shape)}"
                )
        count = int(np.prod(shape, dtype=np.int64))
        if count > limits.max_elements or (shape and shape[0] > limits.max_batch):
            raise InvalidInput(
                f"input {tensor.name!r} is too large: {count} elements (at most {limits.max_elements}, "
                f"batch at most {limits.max_batch})"
            )
        dtype = DATATYPES[spec.datatype]
        if request.raw_input_contents:
            raw = request.raw_input_contents[i]
            if spec.datatype == "BYTES":
                array = _decode_bytes(raw, count, tensor.name)
            else:
                if len(raw) != count * dtype.itemsize:
                    raise InvalidInput(
                        f"input {tensor.name!r}: {len(raw)} raw bytes for shape {list(shape)} of "
                        f"{spec.datatype} (expected {count * dtype.itemsize})"
                    )
                array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
        else:
            field = _CONTENT_FIELD.get(spec.datatype)
            if field is None:
                raise InvalidInput(
                    f"input {tensor.name!r}: {spec.datatype} must be sent as raw_input_contents"
                )
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"input {tensor.name!r}: {len(values)} values for shape {list(shape)} ({count} expected)"
                )
            array = np.asarray(values, dtype=object if spec.datatype == "BYTES" else dtype)
        feeds[tensor.name] = array.reshape(shape)
    return feeds


def encode_outputs(
    response: inference_pb2.ModelInferResponse, names: Sequence[str], arrays: Sequence[np.ndarray]
) -> None:
    """Adds the outputs to the response as raw contents (what tritonclient reads fastest)."""
    for name, array in zip(names, arrays, strict=True):
        datatype = datatype_of(array)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":
            response.raw_output_contents.append(_encode_bytes(array))
        else:
            response.raw_output_contents.append(
                np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
