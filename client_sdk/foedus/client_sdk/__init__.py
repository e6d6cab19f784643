"""Foedus client SDK: the registry, tenancy, deployment and monitoring APIs, drift, and the CLI."""

from foedus.client_sdk.client import (
    Client,
    DeploymentsAPI,
    KeysAPI,
    ModelsAPI,
    MonitoringAPI,
    TenantsAPI,
    TlsConfig,
)
from foedus.client_sdk.drift import DriftReport, DriftThresholds, compare_datasets
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
    "DeploymentsAPI",
    "DriftReport",
    "DriftThresholds",
    "FailedPrecondition",
    "FoedusError",
    "IntegrityError",
    "InvalidArgument",
    "KeysAPI",
    "ModelsAPI",
    "MonitoringAPI",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StatusCode",
    "TenantsAPI",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "compare_datasets",
    "compute_reference_profile",
]
