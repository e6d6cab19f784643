"""Storage of the control plane: the contract every backend honours, and its SQL implementation."""

from foedus.server.store.base import Store
from foedus.server.store.records import (
    AuditRecord,
    FeatureProfile,
    KeyRecord,
    LatencyProfile,
    Lineage,
    ModelRecord,
    NewVersion,
    Page,
    ReferenceProfile,
    Role,
    Signature,
    TenantRecord,
    TenantState,
    TensorSpec,
    VersionRecord,
    VersionState,
)

__all__ = [
    "AuditRecord",
    "FeatureProfile",
    "KeyRecord",
    "LatencyProfile",
    "Lineage",
    "ModelRecord",
    "NewVersion",
    "Page",
    "ReferenceProfile",
    "Role",
    "Signature",
    "Store",
    "TenantRecord",
    "TenantState",
    "TensorSpec",
    "VersionRecord",
    "VersionState",
]
