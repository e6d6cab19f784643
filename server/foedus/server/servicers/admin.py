"""AdminService and KeyService."""

from __future__ import annotations

from typing import Any

import grpc

from foedus.server.errors import InvalidArgument
from foedus.server.interceptors import current_call, current_principal
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.server.store.records import TenantState
from foedus.server.tenancy.service import TenancyService
from foedus.v1 import admin_pb2, admin_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(ServicerBase, admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, tenancy: TenancyService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._tenancy = tenancy

    async def CreateTenant(
        self, request: admin_pb2.CreateTenantRequest, context: Ctx
    ) -> admin_pb2.CreateTenantResponse:
        current_call().resource = f"tenants/{request.name}"
        tenant, owner = await self.run(
            self._tenancy.create_tenant,
            current_principal(),
            request.name,
            request.display_name,
            request.create_owner_key,
        )
        response = admin_pb2.CreateTenantResponse(tenant=convert.tenant(tenant))
        if owner is not None:
            response.owner_key.CopyFrom(convert.api_key(owner.record))
            response.owner_key_secret = owner.secret
        return response

    async def GetTenant(
        self, request: admin_pb2.GetTenantRequest, context: Ctx
    ) -> admin_pb2.GetTenantResponse:
        tenant = await self.read(self._tenancy.get_tenant, current_principal(), request.name)
        return admin_pb2.GetTenantResponse(tenant=convert.tenant(tenant))

    async def ListTenants(
        self, request: admin_pb2.ListTenantsRequest, context: Ctx
    ) -> admin_pb2.ListTenantsResponse:
        page = await self.read(self._tenancy.list_tenants, request.page.page_token, request.page.page_size)
        return admin_pb2.ListTenantsResponse(
            tenants=[convert.tenant(t) for t in page.items], next_page_token=page.next_token
        )

    async def _set_state(self, name: str, state: TenantState) -> admin_pb2.Tenant:
        current_call().resource = f"tenants/{name}"
        return convert.tenant(await self.run(self._tenancy.set_tenant_state, name, state))

    async def DisableTenant(
        self, request: admin_pb2.DisableTenantRequest, context: Ctx
    ) -> admin_pb2.DisableTenantResponse:
        return admin_pb2.DisableTenantResponse(
            tenant=await self._set_state(request.name, TenantState.DISABLED)
        )

    async def EnableTenant(
        self, request: admin_pb2.EnableTenantRequest, context: Ctx
    ) -> admin_pb2.EnableTenantResponse:
        return admin_pb2.EnableTenantResponse(tenant=await self._set_state(request.name, TenantState.ACTIVE))

    async def WhoAmI(self, request: admin_pb2.WhoAmIRequest, context: Ctx) -> admin_pb2.WhoAmIResponse:
        p = current_principal()
        return admin_pb2.WhoAmIResponse(key_id=p.key_id, role=int(p.role), tenant=p.tenant or "")  # type: ignore[arg-type]

    async def ListAuditEntries(
        self, request: admin_pb2.ListAuditEntriesRequest, context: Ctx
    ) -> admin_pb2.ListAuditEntriesResponse:
        page = await self.read(
            self._tenancy.list_audit,
            current_principal(),
            request.tenant,
            request.page.page_token,
            request.page.page_size,
        )
        return admin_pb2.ListAuditEntriesResponse(
            entries=[convert.audit(a) for a in page.items], next_page_token=page.next_token
        )


class KeyServicer(ServicerBase, admin_pb2_grpc.KeyServiceServicer):
    def __init__(self, tenancy: TenancyService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._tenancy = tenancy

    async def CreateKey(
        self, request: admin_pb2.CreateKeyRequest, context: Ctx
    ) -> admin_pb2.CreateKeyResponse:
        role = convert.role(request.role)
        if role is None:
            raise InvalidArgument(f"unknown role value {request.role}")
        new = await self.run(
            self._tenancy.create_key, current_principal(), request.tenant, role, request.description
        )
        current_call().resource = f"tenants/{new.record.tenant}/keys/{new.record.key_id}"
        return admin_pb2.CreateKeyResponse(key=convert.api_key(new.record), secret=new.secret)

    async def ListKeys(self, request: admin_pb2.ListKeysRequest, context: Ctx) -> admin_pb2.ListKeysResponse:
        page = await self.read(
            self._tenancy.list_keys,
            current_principal(),
            request.tenant,
            request.include_revoked,
            request.page.page_token,
            request.page.page_size,
        )
        return admin_pb2.ListKeysResponse(
            keys=[convert.api_key(k) for k in page.items], next_page_token=page.next_token
        )

    async def RevokeKey(
        self, request: admin_pb2.RevokeKeyRequest, context: Ctx
    ) -> admin_pb2.RevokeKeyResponse:
        current_call().resource = f"keys/{request.key_id}"
        record = await self.run(self._tenancy.revoke_key, current_principal(), request.tenant, request.key_id)
        return admin_pb2.RevokeKeyResponse(key=convert.api_key(record))
