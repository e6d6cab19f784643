"""Serving model versions over the Open Inference Protocol, routed by the deployment's weights.

The agent keeps, per model name, a `Route`: the loaded versions, their traffic weights and an
optional shadow version. A new route replaces the old one in one assignment, so a version switch
never fails a request: a request in flight keeps the version it picked, whose session lives until
that request is done.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import grpc
import numpy as np

from foedus.client_sdk.agent.tensors import (
    ORT_TYPES,
    InputLimits,
    InvalidInput,
    TensorSpec,
    decode_inputs,
    encode_outputs,
)
from foedus.client_sdk.decoding import RequestDecoding
from foedus.client_sdk.registrar import WrappingRegistrar
from foedus.oip.v2 import inference_pb2, inference_pb2_grpc

INLINE_RUN_MS = 0.2
"""Versions measured faster than this at load run on the event loop: a hop to a thread and back
costs more (about 0.15 ms) than the model itself. Slower ones run in the thread pool, where
onnxruntime releases the GIL and other requests go on."""

REQUEST_KEY_PARAMETER = "request_key"
"""String request parameter whose value makes routing sticky (A/B): one key, one version."""


class ModelNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One version of a model, loaded in onnxruntime and ready to run."""

    name: str
    version: str
    session: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str
    run_inline: bool = False
    """Run on the event loop instead of the thread pool (see INLINE_RUN_MS)."""

    @classmethod
    def from_session(
        cls, name: str, version: str, session: Any, *, p50_ms: float | None = None
    ) -> LoadedModel:
        """`p50_ms`: the latency measured at load; a fast model then runs inline."""

        def specs(items: Sequence[Any]) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(
                    i.name,
                    ORT_TYPES.get(i.type, i.type),
                    tuple(d if isinstance(d, int) and d >= 0 else -1 for d in i.shape),
                )
                for i in items
            )

        return cls(
            name=name,
            version=version,
            session=session,
            inputs=specs(session.get_inputs()),
            outputs=specs(session.get_outputs()),
            provider=session.get_providers()[0],
            run_inline=p50_ms is not None and p50_ms < INLINE_RUN_MS,
        )

    def run(self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(list(output_names), {n: _to_ort(a) for n, a in feeds.items()}))


def _to_ort(array: np.ndarray) -> np.ndarray:
    """BYTES tensors arrive as bytes; onnxruntime's string tensors want str."""
    if array.dtype != object:
        return array
    flat = [b.decode() if isinstance(b, bytes) else str(b) for b in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model's traffic goes: versions with weights, and an optional shadow version."""

    versions: Mapping[str, LoadedModel]
    weights: Mapping[str, float]
    shadow: str | None = None
    _cumulative: tuple[tuple[float, str], ...] = field(default=(), repr=False)

    @classmethod
    def build(
        cls, versions: Mapping[str, LoadedModel], weights: Mapping[str, float], shadow: str | None = None
    ) -> Route:
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("traffic weights must be non-negative and add up to more than 0")
        unknown = sorted((set(weights) | ({shadow} if shadow else set())) - set(versions))
        if unknown:
            raise ValueError(f"weights or shadow name versions that are not loaded: {', '.join(unknown)}")
        total = sum(weights.values())
        cumulative: list[tuple[float, str]] = []
        acc = 0.0
        for version, weight in sorted(weights.items()):
            if weight > 0:
                acc += weight / total
                cumulative.append((acc, version))
        return cls(dict(versions), dict(weights), shadow, tuple(cumulative))

    def pick(self, key: str | None) -> LoadedModel:
        if key:
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2.0**64
        else:
            point = random.random()
        for bound, version in self._cumulative:
            if point < bound:
                return self.versions[version]
        return self.versions[self._cumulative[-1][1]]


class ModelTable:
    """The models this agent serves, by name; routes are swapped whole."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()

    def set_route(self, name: str, route: Route) -> None:
        with self._lock:
            routes = dict(self._routes)
            routes[name] = route
            self._routes = routes  # one assignment: readers see the old or the new table

    def remove(self, name: str) -> None:
        with self._lock:
            self._routes = {k: v for k, v in self._routes.items() if k != name}

    def route(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        return route

    def names(self) -> list[str]:
        return sorted(self._routes)

    def pick(self, name: str, version: str = "", key: str | None = None) -> tuple[Route, LoadedModel]:
        route = self.route(name)
        if version:
            model = route.versions.get(version)
            if model is None:
                raise ModelNotFound(f"version {version!r} of model {name!r} is not served here")
            return route, model
        return route, route.pick(key)


class RequestObserver(Protocol):
    """Receives every request's outcome; telemetry aggregates it per interval and version."""

    def record(
        self,
        model: LoadedModel,
        latency_ms: float,
        ok: bool,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[np.ndarray] | None,
        shadow: bool,
    ) -> None: ...

    def invalid(self, model: LoadedModel) -> None: ...


class PredictionRecorder(Protocol):
    """Receives the answers of requests that carry an id, to be joined with labels later."""

    def record(
        self,
        request_id: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        names: Sequence[str],
        outputs: Sequence[np.ndarray],
    ) -> None: ...


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService over a ModelTable; model runs go to the executor (onnxruntime frees the GIL)."""

    def __init__(
        self,
        table: ModelTable,
        executor: Executor,
        *,
        limits: InputLimits | None = None,
        observer: RequestObserver | None = None,
        predictions: PredictionRecorder | None = None,
        server_name: str = "foedus-agent",
        server_version: str = "0.1.0",
    ) -> None:
        self._table = table
        self._executor = executor
        self._limits = limits or InputLimits()
        self._observer = observer
        self._predictions = predictions
        self._name = server_name
        self._version = server_version
        self._shadow_tasks: set[asyncio.Future[Any]] = set()

    async def ServerLive(self, request: Any, context: Any) -> inference_pb2.ServerLiveResponse:
        return inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> inference_pb2.ServerReadyResponse:
        return inference_pb2.ServerReadyResponse(ready=bool(self._table.names()))

    async def ServerMetadata(self, request: Any, context: Any) -> inference_pb2.ServerMetadataResponse:
        return inference_pb2.ServerMetadataResponse(name=self._name, version=self._version, extensions=[])

    async def ModelReady(
        self, request: inference_pb2.ModelReadyRequest, context: Any
    ) -> inference_pb2.ModelReadyResponse:
        try:
            self._table.pick(request.name, request.version)
        except ModelNotFound:
            return inference_pb2.ModelReadyResponse(ready=False)
        return inference_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: inference_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.ModelMetadataResponse:
        try:
            route, model = self._table.pick(request.name, request.version)
        except ModelNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        out = inference_pb2.ModelMetadataResponse(
            name=model.name, versions=sorted(route.versions), platform="onnxruntime_onnx"
        )
        for spec in model.inputs:
            out.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in model.outputs:
            out.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return out

    async def ModelInfer(
        self, request: inference_pb2.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> inference_pb2.ModelInferResponse:
        key_param = request.parameters.get(REQUEST_KEY_PARAMETER)
        key = key_param.string_param if key_param is not None else None
        try:
            route, model = self._table.pick(request.model_name, request.model_version, key)
        except ModelNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        try:
            feeds = decode_inputs(request, model.inputs, self._limits)
            names = [o.name for o in request.outputs] or [o.name for o in model.outputs]
            unknown = sorted(set(names) - {o.name for o in model.outputs})
            if unknown:
                raise InvalidInput(f"unknown output(s) {', '.join(unknown)}")
        except InvalidInput as exc:
            if self._observer is not None:
                self._observer.invalid(model)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            if model.run_inline:
                outputs = model.run(names, feeds)
            else:
                outputs = await loop.run_in_executor(self._executor, model.run, names, feeds)
        except Exception as exc:
            self._record(model, start, False, feeds, None, shadow=False)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"model {model.name} v{model.version} failed: {exc}"
            )
        self._record(model, start, True, feeds, outputs, shadow=False)
        if self._predictions is not None and request.id:
            self._predictions.record(request.id, model.version, feeds, names, outputs)
        if route.shadow and route.shadow != model.version:
            self._mirror(route.versions[route.shadow], names, feeds)
        response = inference_pb2.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        encode_outputs(response, names, outputs)
        return response

    def _record(
        self,
        model: LoadedModel,
        start: float,
        ok: bool,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[np.ndarray] | None,
        *,
        shadow: bool,
    ) -> None:
        if self._observer is not None:
            self._observer.record(model, (time.perf_counter() - start) * 1000.0, ok, feeds, outputs, shadow)

    def _mirror(self, shadow: LoadedModel, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> None:
        """Runs the shadow version on a copy of the request; its answer is measured and discarded."""
        wanted = [n for n in names if n in {o.name for o in shadow.outputs}] or [
            o.name for o in shadow.outputs
        ]
        start = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self._executor, shadow.run, wanted, dict(feeds))

        def done(f: asyncio.Future[Any]) -> None:
            self._shadow_tasks.discard(f)
            ok = not f.cancelled() and f.exception() is None
            self._record(shadow, start, ok, feeds, f.result() if ok else None, shadow=True)

        self._shadow_tasks.add(future)
        future.add_done_callback(done)


def inference_server(servicer: InferenceServicer, interceptors: Sequence[Any] = ()) -> grpc.aio.Server:
    """An asyncio gRPC server for `servicer`, not yet bound; `interceptors` run first (tracing),
    then RequestDecoding, so a request that does not parse is INVALID_ARGUMENT. The handlers are
    wrapped once, as the service is added (`WrappingRegistrar`), not per call."""
    server = grpc.aio.server(interceptors=list(interceptors) or None)
    registrar = WrappingRegistrar(server, [RequestDecoding().wrap])
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, cast(grpc.aio.Server, registrar))
    return server
