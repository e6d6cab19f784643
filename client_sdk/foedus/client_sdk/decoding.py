"""Requests whose bytes do not parse are refused with INVALID_ARGUMENT, by a server interceptor.

grpc's asyncio server answers UNKNOWN ("Unexpected DecodeError") for a unary request that does not
parse, and a streamed one raises inside the handler, which the caller sees as INTERNAL or UNKNOWN:
both read as a fault of the server. `RequestDecoding` wraps each handler's deserializer so that a
bad message becomes a `MalformedRequest` value instead of an exception; the wrapped handler then
aborts the call with INVALID_ARGUMENT and a message that names the expected type, before the
servicer sees anything (for a stream: at the bad message, so the servicer can clean up what the
messages before it started). It serves every method, health checking and reflection included;
the control plane and the agent's inference server both wrap their handlers with it when
services are added (`foedus.client_sdk.registrar.WrappingRegistrar`); as a server interceptor it
wraps them on every call instead.

With `reject_nul_text` it also refuses a message whose text (a string field, a map key) holds a
NUL character: PostgreSQL cannot store one, so the control plane refuses it for every store alike,
before anything is written, instead of failing halfway with an internal error.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


class MalformedRequest:
    """What the wrapped deserializer returns for bytes that are not a valid request message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _type_name(deserializer: Callable[[bytes], Any], method: str) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else f"request of {method}"


def nul_text_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string field (or map key) of `message` that holds a NUL character."""
    for fd, value in message.ListFields():
        path = f"{prefix}{fd.name}"
        entry = fd.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_fd = entry.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    return f"{path} (a key)"
                found = _nul_in(value_fd, item, f"{path}[{key!r}]")
                if found:
                    return found
        elif fd.is_repeated:
            for i, item in enumerate(value):
                found = _nul_in(fd, item, f"{path}[{i}]")
                if found:
                    return found
        else:
            found = _nul_in(fd, value, path)
            if found:
                return found
    return None


def _nul_in(fd: FieldDescriptor, value: Any, path: str) -> str | None:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return nul_text_field(value, f"{path}.")
    if fd.type == FieldDescriptor.TYPE_STRING and "\x00" in value:
        return path
    return None


def _decoder(
    deserializer: Callable[[bytes], Any], method: str, *, reject_nul_text: bool
) -> Callable[[bytes], Any]:
    type_name = _type_name(deserializer, method)

    def decode(data: bytes) -> Any:
        try:
            request = deserializer(data)
        except Exception:
            # protobuf's DecodeError, or whatever a custom deserializer raises on bad bytes.
            return MalformedRequest(
                f"malformed request: {len(data)} bytes that do not parse as a {type_name} message"
            )
        # A NUL character is a 0 byte on the wire: most requests have none and skip the walk.
        if reject_nul_text and b"\x00" in data and isinstance(request, Message):
            field = nul_text_field(request)
            if field is not None:
                return MalformedRequest(f"{field}: text must not contain NUL (\\x00) characters")
        return request

    return decode


async def _abort(context: grpc.aio.ServicerContext[Any, Any], request: MalformedRequest) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            await _abort(context, request)
        yield request


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, *, reject_nul_text: bool = False) -> None:
        self._reject_nul_text = reject_nul_text

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return self.wrap(await continuation(handler_call_details), handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of `method` with the checked deserializer (what `intercept_service` returns for
        each call; also usable once per method, when services are added)."""
        h: Any = handler
        if h is None or h.request_deserializer is None:
            return handler
        decode = _decoder(h.request_deserializer, method, reject_nul_text=self._reject_nul_text)
        if h.unary_unary:
            inner = h.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, MalformedRequest):
                    await _abort(context, request)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, decode, h.response_serializer)
        if h.stream_unary:
            inner_su = h.stream_unary

            async def stream_unary(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                return await inner_su(_checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, decode, h.response_serializer)
        if h.unary_stream:
            inner_us = h.unary_stream

            async def unary_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if isinstance(request, MalformedRequest):
                    await _abort(context, request)
                async for response in _responses(inner_us(request, context)):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, decode, h.response_serializer)
        inner_ss = h.stream_stream

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for response in _responses(inner_ss(_checked(requests, context), context)):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream, decode, h.response_serializer)


async def _responses(result: Any) -> AsyncIterator[Any]:
    """The responses of a streaming handler: an async generator's items, or none when the handler is
    a coroutine that writes them with `context.write` (as grpc's health service does)."""
    if inspect.isasyncgen(result) or hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result
