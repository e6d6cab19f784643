"""Cross-cutting checks for every Foedus RPC, in this order:

1. authentication: `authorization: Bearer <key>` metadata -> Principal (UNAUTHENTICATED otherwise);
2. authorization: the role must be among the RPC's `(foedus.v1.access)` roles (PERMISSION_DENIED);
3. the call itself, with the principal in `current_call()`;
4. error mapping: a DomainError becomes its status code with its message; anything else INTERNAL;
5. audit: calls marked `mutating` are appended to the audit log with their outcome.

When OpenTelemetry is on, `foedus.client_sdk.tracing.ServerTracing` runs before this guard: its
server span is current here, and the guard adds the caller's tenant to it once the key is checked.

The policy of each RPC is read from the proto descriptors, so a new RPC cannot go unchecked.
Health checking and reflection are not Foedus RPCs and stay open.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from foedus.client_sdk.tracing import set_tenant
from foedus.server.errors import DomainError, PermissionDenied, ResourceExhausted, Unauthenticated
from foedus.server.servicers.base import BlockingRunner
from foedus.server.store.records import AuditRecord, Role
from foedus.server.tenancy.limits import RateLimiter
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import TenancyService, now_us
from foedus.v1 import (
    admin_pb2,
    agent_pb2,
    common_pb2,
    deployment_pb2,
    federation_pb2,
    monitoring_pb2,
    performance_pb2,
    registry_pb2,
    rollout_pb2,
)

log = logging.getLogger("foedus.server")

SERVICE_MODULES = (
    admin_pb2,
    registry_pb2,
    deployment_pb2,
    agent_pb2,
    monitoring_pb2,
    performance_pb2,
    rollout_pb2,
    federation_pb2,
)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    roles: frozenset[Role]
    mutating: bool


def access_policies() -> dict[str, AccessPolicy]:
    """`/package.Service/Method` -> policy, for every RPC of every Foedus service."""
    policies: dict[str, AccessPolicy] = {}
    pool = descriptor_pool.Default()
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(common_pb2.access):
                    raise RuntimeError(f"{method.full_name} declares no (foedus.v1.access) policy")
                access = options.Extensions[common_pb2.access]
                policies[f"/{service.full_name}/{method.name}"] = AccessPolicy(
                    roles=frozenset(Role(r) for r in access.roles), mutating=access.mutating
                )
    assert pool is not None
    return policies


@dataclass(slots=True)
class CallInfo:
    principal: Principal
    method: str
    resource: str = ""
    detail: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


_CALL: contextvars.ContextVar[CallInfo] = contextvars.ContextVar("foedus_call")


def current_call() -> CallInfo:
    """The call being served: its principal, and the resource it names (set by the servicer)."""
    return _CALL.get()


def current_principal() -> Principal:
    return _CALL.get().principal


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self, tenancy: TenancyService, runner: BlockingRunner, *, limiter: RateLimiter | None = None
    ) -> None:
        self._tenancy = tenancy
        self._runner = runner
        self._limiter = limiter
        self._policies = access_policies()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return self.wrap(await continuation(handler_call_details), handler_call_details.method)

    def wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` of `method` behind the guard; methods without a policy (health checking,
        reflection) as they are."""
        policy = self._policies.get(method)
        if handler is None or policy is None:
            return handler
        return self._wrap(handler, method, policy)

    # --- the steps ------------------------------------------------------------------------------
    async def _authenticate(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> CallInfo:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                token = value[7:].strip() if value[:7].lower() == "bearer " else ""
                break
        if not token:
            raise Unauthenticated("missing API key: send 'authorization: Bearer <key>' metadata")
        # A cache hit needs no thread hop; a miss reads the store off the event loop.
        principal = self._tenancy.cached(token)
        if principal is None:
            principal = await self._runner.read(self._tenancy.authenticate, token)
        info = CallInfo(principal=principal, method=method)
        _CALL.set(info)
        set_tenant(principal.tenant)
        return info

    def _admit(self, info: CallInfo, policy: AccessPolicy) -> None:
        """The caller's role may make the call, and its tenant is within its call rate."""
        if not info.principal.may(policy.roles):
            allowed = ", ".join(sorted(r.name.lower() for r in policy.roles))
            raise PermissionDenied(
                f"role {info.principal.role.name.lower()} may not call {info.method.rsplit('/', 1)[1]} "
                f"(allowed: {allowed})"
            )
        tenant = info.principal.tenant
        if self._limiter is not None and tenant is not None:
            wait = self._limiter.take(tenant)
            if wait > 0:
                raise ResourceExhausted(
                    f"tenant {tenant!r} is over its limit of {self._limiter.rate:g} calls per second; "
                    f"retry in {wait:.2f} s",
                    retry_after_s=wait,
                )

    async def _finish(
        self, policy: AccessPolicy, info: CallInfo | None, error: BaseException | None, context: Any
    ) -> None:
        if info is None or not policy.mutating:
            return
        detail = info.detail if error is None else str(error)
        if error is None:
            outcome = "OK"
        elif isinstance(error, DomainError):
            outcome = error.code.value
        elif isinstance(error, grpc.aio.AbortError):
            # Aborted below the guard (a request message that does not parse): the context holds
            # the code and the message.
            code = context.code()
            outcome = code.name if isinstance(code, grpc.StatusCode) else "ABORTED"
            detail = context.details() or ""
        else:
            outcome = "CANCELLED" if isinstance(error, asyncio.CancelledError) else "INTERNAL"
        entry = AuditRecord(
            time_us=now_us(),
            tenant=info.principal.tenant,
            key_id=info.principal.key_id,
            role=info.principal.role,
            method=info.method,
            resource=info.resource,
            outcome=outcome,
            detail=detail[:500],
        )
        try:
            await self._runner.run(self._tenancy.record, entry)
        except Exception:
            log.exception("could not write the audit entry of %s", info.method)

    async def _refuse(
        self, policy: AccessPolicy, info: CallInfo | None, error: BaseException, context: Any
    ) -> None:
        """Audits the failed call, then ends it with the error's status. Audit first: abort sends
        the status at once, and a caller (or another replica) that reads the audit log next must
        find this call there."""
        await self._finish(policy, info, error, context)
        await self._abort(context, error)

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
        if isinstance(error, DomainError):
            trailers: tuple[tuple[str, str], ...] = ()
            if isinstance(error, ResourceExhausted) and error.retry_after_s > 0:
                trailers = (("retry-after-ms", str(max(1, math.ceil(error.retry_after_s * 1000)))),)
            await context.abort(grpc.StatusCode[error.code.value], error.message, trailers)
        log.error("internal error", exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")

    # --- wrapping of the four call shapes --------------------------------------------------------
    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str, policy: AccessPolicy
    ) -> grpc.RpcMethodHandler[Any, Any]:
        guard = self

        h: Any = handler
        if h.unary_unary or h.stream_unary:
            inner = h.unary_unary or h.stream_unary

            async def unary_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                info: CallInfo | None = None
                try:
                    info = await guard._authenticate(method, context)
                    guard._admit(info, policy)
                    response = await inner(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError) as exc:
                    await guard._finish(policy, info, exc, context)
                    raise
                except Exception as exc:
                    await guard._refuse(policy, info, exc, context)
                    raise  # not reached: the refusal aborts the call
                if policy.mutating:  # (reads are not audited: no await)
                    await guard._finish(policy, info, None, context)
                return response

            factory = (
                grpc.unary_unary_rpc_method_handler if h.unary_unary else grpc.stream_unary_rpc_method_handler
            )
            return factory(unary_response, h.request_deserializer, h.response_serializer)
        inner_stream = h.unary_stream or h.stream_stream

        async def stream_response(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            info: CallInfo | None = None
            try:
                info = await guard._authenticate(method, context)
                guard._admit(info, policy)
                async for item in inner_stream(request, context):
                    yield item
            except (grpc.aio.AbortError, asyncio.CancelledError) as exc:
                await guard._finish(policy, info, exc, context)
                raise
            except Exception as exc:
                await guard._refuse(policy, info, exc, context)
                raise  # not reached: the refusal aborts the call
            if policy.mutating:  # (reads are not audited: no await)
                await guard._finish(policy, info, None, context)

        factory = (
            grpc.unary_stream_rpc_method_handler if h.unary_stream else grpc.stream_stream_rpc_method_handler
        )
        return factory(stream_response, h.request_deserializer, h.response_serializer)
