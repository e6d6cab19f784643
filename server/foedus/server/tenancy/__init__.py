"""Tenants, principals, API keys and the audit log."""

from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import TenancyService

__all__ = ["Principal", "TenancyService"]
