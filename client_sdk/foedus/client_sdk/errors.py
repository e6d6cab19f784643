"""The SDK's own exceptions: callers catch these, never grpc.RpcError."""

from __future__ import annotations

import enum

import grpc


class StatusCode(enum.Enum):
    """Why a call failed; names match gRPC's status codes."""

    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class FoedusError(Exception):
    """Base of every error the SDK raises. `status` says why, `message` says it for a person."""

    status: StatusCode = StatusCode.UNKNOWN

    def __init__(self, message: str, status: StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class InvalidArgument(FoedusError):
    status = StatusCode.INVALID_ARGUMENT


class NotFound(FoedusError):
    status = StatusCode.NOT_FOUND


class AlreadyExists(FoedusError):
    status = StatusCode.ALREADY_EXISTS


class PermissionDenied(FoedusError):
    status = StatusCode.PERMISSION_DENIED


class Unauthenticated(FoedusError):
    status = StatusCode.UNAUTHENTICATED


class FailedPrecondition(FoedusError):
    status = StatusCode.FAILED_PRECONDITION


class ResourceExhausted(FoedusError):
    status = StatusCode.RESOURCE_EXHAUSTED
    retry_after_s: float = 0.0
    """When the server says trying again may succeed (its `retry-after-ms` trailer); 0: not said."""


class Unavailable(FoedusError):
    """The server could not be reached (or went away); the call may be retried."""

    status = StatusCode.UNAVAILABLE


class DeadlineExceeded(FoedusError):
    status = StatusCode.DEADLINE_EXCEEDED


class IntegrityError(FoedusError):
    """Downloaded bytes do not match the digest the registry recorded."""

    status = StatusCode.DATA_LOSS


_BY_STATUS: dict[StatusCode, type[FoedusError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        IntegrityError,
    )
}


def from_rpc_error(error: grpc.RpcError) -> FoedusError:
    # Every RpcError raised by a call is also a grpc.Call, which carries code and details.
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    status = StatusCode[code.name] if code is not None else StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else None
    message = details or status.name.replace("_", " ").lower()
    if status is StatusCode.UNAVAILABLE and details and "connect" in details.lower():
        message = f"cannot reach the Foedus server: {details}"
    out = _BY_STATUS.get(status, FoedusError)(message, status)
    if isinstance(out, ResourceExhausted):
        trailers_fn = getattr(error, "trailing_metadata", None)
        for key, value in (trailers_fn() if callable(trailers_fn) else None) or ():
            if key == "retry-after-ms" and isinstance(value, str) and value.isdigit():
                out.retry_after_s = int(value) / 1000.0
    return out
