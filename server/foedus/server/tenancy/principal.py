"""Who is calling: the authenticated key, its role and its tenant."""

from __future__ import annotations

from dataclasses import dataclass

from foedus.server.errors import PermissionDenied
from foedus.server.store.records import Role

TENANT_ROLES = (Role.VIEWER, Role.EDITOR, Role.OWNER)


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Role
    tenant: str | None
    """None for the platform admin."""

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def may(self, allowed: frozenset[Role]) -> bool:
        """True when the role is allowed; owner ⊇ editor ⊇ viewer, agent and admin stand alone."""
        if self.role in allowed:
            return True
        if self.role in TENANT_ROLES:
            return any(r in TENANT_ROLES and self.role >= r for r in allowed)
        return False

    def own_tenant(self) -> str:
        """The caller's tenant, for calls that only tenants make."""
        if self.tenant is None:
            raise PermissionDenied("this call acts inside a tenant; use a key of that tenant")
        return self.tenant
