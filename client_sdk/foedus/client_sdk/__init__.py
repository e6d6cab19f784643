"""Foedus client SDK: the registry, tenancy and (later) rollout and monitoring APIs, and the CLI."""

from foedus.client_sdk.client import Client, KeysAPI, ModelsAPI, TenantsAPI, TlsConfig
from foedus.client_sdk.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FoedusError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StatusCode,
    Unauthenticated,
    Unavailable,
)
from foedus.client_sdk.profile import compute_reference_profile

__all__ = [
    "AlreadyExists",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FoedusError",
    "IntegrityError",
    "InvalidArgument",
    "KeysAPI",
    "ModelsAPI",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StatusCode",
    "TenantsAPI",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "compute_reference_profile",
]
