"""DeploymentService."""

from __future__ import annotations

from typing import Any

import grpc

from foedus.server.deployments.service import DeploymentService
from foedus.server.interceptors import current_call, current_principal
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.v1 import deployment_pb2, deployment_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


class DeploymentServicer(ServicerBase, deployment_pb2_grpc.DeploymentServiceServicer):
    def __init__(self, deployments: DeploymentService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._deployments = deployments

    async def CreateDeployment(
        self, request: deployment_pb2.CreateDeploymentRequest, context: Ctx
    ) -> deployment_pb2.CreateDeploymentResponse:
        current_call().resource = f"deployments/{request.name}"
        record = await self.run(
            self._deployments.create,
            current_principal(),
            request.name,
            request.model,
            request.description,
            convert.traffic_from_proto(request.traffic),
            request.shadow_version,
        )
        return deployment_pb2.CreateDeploymentResponse(deployment=convert.deployment(record))

    async def GetDeployment(
        self, request: deployment_pb2.GetDeploymentRequest, context: Ctx
    ) -> deployment_pb2.GetDeploymentResponse:
        record = await self.read(self._deployments.get, current_principal(), request.name)
        return deployment_pb2.GetDeploymentResponse(deployment=convert.deployment(record))

    async def ListDeployments(
        self, request: deployment_pb2.ListDeploymentsRequest, context: Ctx
    ) -> deployment_pb2.ListDeploymentsResponse:
        page = await self.read(
            self._deployments.list_page, current_principal(), request.page.page_token, request.page.page_size
        )
        return deployment_pb2.ListDeploymentsResponse(
            deployments=[convert.deployment(d) for d in page.items], next_page_token=page.next_token
        )

    async def SetTraffic(
        self, request: deployment_pb2.SetTrafficRequest, context: Ctx
    ) -> deployment_pb2.SetTrafficResponse:
        current_call().resource = f"deployments/{request.name}"
        current_call().detail = ", ".join(f"v{t.version}={t.weight:g}" for t in request.traffic) + (
            f", shadow v{request.shadow_version}" if request.shadow_version else ""
        )
        record = await self.run(
            self._deployments.set_traffic,
            current_principal(),
            request.name,
            convert.traffic_from_proto(request.traffic),
            request.shadow_version,
        )
        return deployment_pb2.SetTrafficResponse(deployment=convert.deployment(record))
