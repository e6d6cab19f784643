"""WrappingRegistrar: services' methods wrapped once and served through one generic handler."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from foedus.client_sdk.registrar import WrappingRegistrar
from foedus.v1 import registry_pb2_grpc


class RecordingServer:
    """What WrappingRegistrar hands to the grpc.aio server."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered.append(service)


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _tagging(seen: list[str]) -> Any:
    def wrap(handler: Any, method: str) -> Any:
        seen.append(method)
        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary, handler.request_deserializer, handler.response_serializer
        )

    return wrap


def test_every_service_goes_into_one_generic_handler_wrapped_once() -> None:
    server = RecordingServer()
    seen: list[str] = []
    registrar: Any = WrappingRegistrar(server, [_tagging(seen)])  # type: ignore[arg-type]
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(
        registry_pb2_grpc.RegistryServiceServicer(), registrar
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), registrar)

    assert server.registered == []  # grpc.aio's registered methods cost a future each per call
    assert len(server.generic) == 1
    table = server.generic[0]
    assert "/foedus.v1.RegistryService/GetModelVersion" in seen
    assert "/grpc.health.v1.Health/Check" in seen
    assert len(seen) == len(set(seen))  # each method wrapped once
    assert table.service(Details("/foedus.v1.RegistryService/GetModelVersion")) is not None
    assert table.service(Details("/grpc.health.v1.Health/Check")) is not None
    assert table.service(Details("/foedus.v1.RegistryService/NoSuchMethod")) is None
    assert table.service(Details("/no.Such/Service")) is None
    # the services' own generic handlers, which generated code adds too, are dropped unused
    assert seen.count("/foedus.v1.RegistryService/GetModelVersion") == 1


def test_a_service_added_only_as_a_generic_handler_is_served_and_wrapped() -> None:
    server = RecordingServer()
    seen: list[str] = []
    registrar: Any = WrappingRegistrar(server, [_tagging(seen)])  # type: ignore[arg-type]

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    plain = grpc.unary_unary_rpc_method_handler(echo)
    registrar.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", {"Say": plain}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), registrar)

    (table,) = server.generic
    found = table.service(Details("/demo.Echo/Say"))
    assert found is not None and found is not plain
    assert seen == [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/demo.Echo/Say",
    ]
    assert table.service(Details("/demo.Echo/Other")) is None


def test_a_method_added_twice_is_refused() -> None:
    registrar: Any = WrappingRegistrar(RecordingServer(), [])  # type: ignore[arg-type]
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), registrar)
    with pytest.raises(ValueError, match=re.escape("/grpc.health.v1.Health/Check")):
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), registrar)


def test_a_real_server_serves_wrapped_methods_and_refuses_unknown_ones() -> None:
    async def scenario() -> None:
        server = grpc.aio.server()
        seen: list[str] = []
        calls: list[str] = []

        def counting(handler: Any, method: str) -> Any:
            seen.append(method)
            inner = handler.unary_unary
            if inner is None:
                return handler

            async def unary(request: Any, context: Any) -> Any:
                calls.append(method)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )

        servicer = health.aio.HealthServicer()
        await servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, WrappingRegistrar(server, [counting]))  # type: ignore[arg-type]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(3):
                    answer = await stub.Check(health_pb2.HealthCheckRequest(service="svc"))
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING
                unknown = channel.unary_unary("/grpc.health.v1.Health/NoSuchMethod")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await unknown(b"")
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(None)
        assert calls == ["/grpc.health.v1.Health/Check"] * 3
        assert seen.count("/grpc.health.v1.Health/Check") == 1  # wrapped when added, not per call

    asyncio.run(scenario())
