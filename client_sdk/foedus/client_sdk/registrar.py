"""Adding gRPC services to a grpc.aio server with each method handler wrapped once.

`WrappingRegistrar` stands in for the server while generated ``add_*Servicer_to_server`` code,
health checking and reflection add their services: each handler is wrapped (request decoding, the
control plane's call guard) when it is added, and everything is served through one generic
handler of the server's. The control plane and the agent's inference server both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import grpc

__all__ = ["HandlerWrapper", "WrappingRegistrar"]

HandlerWrapper: TypeAlias = (
    "Callable[[grpc.RpcMethodHandler[Any, Any], str], grpc.RpcMethodHandler[Any, Any]]"
)


class WrappingRegistrar:
    """Stands in for a grpc.aio server while services are added to it (`add_*Servicer_to_server`,
    health checking, reflection): each method handler is wrapped by `wrappers` (outermost first)
    once, here, instead of by server interceptors on every call, which build the same wrappers
    anew per call. The wrappers must keep no state of a call in the handlers they return.

    Everything is served through one generic handler of the server's (`_MethodTable`): a dict
    from method path to wrapped handler, then the generic handlers of services that came without
    their methods. Generated code adds each service both ways; the methods are not passed on as
    grpc.aio "registered methods", because grpc.aio's server loop keeps one pending request per
    registered method and hands all of them to `asyncio.wait` for every call it accepts: with the
    control plane's ~70 methods each call paid for ~70 futures, about a fifth of a version read's
    server CPU. With one generic handler there is one."""

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[HandlerWrapper]) -> None:
        self._wrappers = tuple(reversed(wrappers))
        self._table = _MethodTable()
        server.add_generic_rpc_handlers((self._table,))

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        for wrapper in self._wrappers:
            handler = wrapper(handler, method)
        return handler

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        covered = self._table.services
        self._table.fallbacks.extend(
            _WrappedGeneric(h, self._wrap) for h in handlers if _service_name(h) not in covered
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        table = self._table
        for name, handler in handlers.items():
            path = f"/{service}/{name}"
            if path in table.handlers:
                raise ValueError(f"method {path} is added twice")
            table.handlers[path] = self._wrap(handler, path)
        table.services.add(service)
        # the service's generic handler, added just before by generated code, is now redundant
        table.fallbacks = [g for g in table.fallbacks if _service_name(g.inner) != service]


def _service_name(handler: grpc.GenericRpcHandler[Any, Any]) -> str | None:
    return handler.service_name() if isinstance(handler, grpc.ServiceRpcHandler) else None


class _MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Wrapped handlers by full method path (``/package.Service/Method``), then `fallbacks`: the
    generic handlers of services added without their methods; None for any other method."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self.services: set[str] = set()
        self.fallbacks: list[_WrappedGeneric] = []

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self.handlers.get(handler_call_details.method)
        if handler is not None:
            return handler
        for generic in self.fallbacks:
            handler = generic.service(handler_call_details)
            if handler is not None:
                return handler
        return None


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], wrap: HandlerWrapper) -> None:
        self.inner = inner
        self._wrap = wrap
        self._done: dict[str, tuple[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self.inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        done = self._done.get(method)
        if done is None or done[0] is not handler:
            done = (handler, self._wrap(handler, method))
            self._done[method] = done
        wrapped: grpc.RpcMethodHandler[Any, Any] = done[1]
        return wrapped
