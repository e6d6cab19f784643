"""FederationService."""

from __future__ import annotations

from typing import Any

import grpc

from foedus.server.errors import InvalidArgument
from foedus.server.federation.service import FederationService
from foedus.server.interceptors import current_call, current_principal
from foedus.server.rollouts.spec import CanaryStep
from foedus.server.servicers import convert
from foedus.server.servicers.base import BlockingRunner, ServicerBase
from foedus.server.store.records import FederationRunRecord, FederationRunState, NodeKeyRecord, OptInRecord
from foedus.server.tenancy.principal import Principal
from foedus.v1 import federation_pb2, federation_pb2_grpc

Ctx = grpc.aio.ServicerContext[Any, Any]


def node_key(rec: NodeKeyRecord) -> federation_pb2.NodeKey:
    return federation_pb2.NodeKey(
        fingerprint=rec.fingerprint,
        tenant=rec.tenant,
        public_key=rec.public_key,
        description=rec.description,
        meta=convert.meta(rec.created_at_us, rec.created_by),
        revoked_at=convert.ts(rec.revoked_at_us),
    )


def run(rec: FederationRunRecord, caller: Principal) -> federation_pb2.FederationRun:
    p = rec.privacy
    return federation_pb2.FederationRun(
        id=rec.id,
        model_kind=rec.model_kind,
        strategy=rec.strategy,
        rounds=rec.rounds,
        privacy=federation_pb2.FederationPrivacy(
            mode=str(p.get("mode", "")),
            noise_multiplier=float(p.get("noise_multiplier", 0.0)),  # type: ignore[arg-type]
            clipping_norm=float(p.get("clipping_norm", 0.0)),  # type: ignore[arg-type]
            epsilon=float(p.get("epsilon", 0.0)),  # type: ignore[arg-type]
            delta=float(p.get("delta", 0.0)),  # type: ignore[arg-type]
            secagg=bool(p.get("secagg", False)),
            sample_rate=float(p.get("sample_rate", 0.0)),  # type: ignore[arg-type]
        ),
        state=int(rec.state),  # type: ignore[arg-type]
        # A tenant learns its own participation and how many took part, not who the others are.
        tenants=list(rec.tenants) if caller.is_admin else [t for t in rec.tenants if t == caller.tenant],
        tenant_count=len(rec.tenants),
        history=[
            federation_pb2.FederationRound(
                round=int(h["round"]),  # type: ignore[call-overload]
                metrics={str(k): float(v) for k, v in dict(h["metrics"]).items()},  # type: ignore[call-overload]
                nodes=int(h["nodes"]),  # type: ignore[call-overload]
                bytes=int(h["bytes"]),  # type: ignore[call-overload]
                seconds=float(h["seconds"]),  # type: ignore[arg-type]
            )
            for h in rec.history
        ],
        result_model=rec.result_model,
        result_version=rec.result_version,
        message=rec.message,
        meta=convert.meta(rec.created_at_us, rec.created_by, rec.updated_at_us),
        finished_at=convert.ts(rec.finished_at_us) if rec.finished_at_us else None,
    )


def opt_in(rec: OptInRecord) -> federation_pb2.FederationOptIn:
    return federation_pb2.FederationOptIn(
        tenant=rec.tenant,
        model_kind=rec.model_kind,
        deployment=rec.deployment,
        meta=convert.meta(rec.created_at_us, rec.created_by),
    )


class FederationServicer(ServicerBase, federation_pb2_grpc.FederationServiceServicer):
    def __init__(self, federation: FederationService, runner: BlockingRunner) -> None:
        super().__init__(runner)
        self._federation = federation

    async def RegisterNodeKey(
        self, request: federation_pb2.RegisterNodeKeyRequest, context: Ctx
    ) -> federation_pb2.RegisterNodeKeyResponse:
        current_call().resource = f"tenants/{request.tenant}/node-keys"
        key = await self.run(
            self._federation.register_node_key,
            current_principal(),
            request.tenant,
            request.public_key,
            request.description,
        )
        current_call().detail = key.fingerprint
        return federation_pb2.RegisterNodeKeyResponse(key=node_key(key))

    async def ListNodeKeys(
        self, request: federation_pb2.ListNodeKeysRequest, context: Ctx
    ) -> federation_pb2.ListNodeKeysResponse:
        keys = await self.read(
            self._federation.list_node_keys, current_principal(), request.tenant, request.include_revoked
        )
        return federation_pb2.ListNodeKeysResponse(keys=[node_key(k) for k in keys])

    async def RevokeNodeKey(
        self, request: federation_pb2.RevokeNodeKeyRequest, context: Ctx
    ) -> federation_pb2.RevokeNodeKeyResponse:
        current_call().resource = f"tenants/{request.tenant}/node-keys/{request.fingerprint}"
        key = await self.run(
            self._federation.revoke_node_key, current_principal(), request.tenant, request.fingerprint
        )
        return federation_pb2.RevokeNodeKeyResponse(key=node_key(key))

    async def CreateRun(
        self, request: federation_pb2.CreateRunRequest, context: Ctx
    ) -> federation_pb2.CreateRunResponse:
        caller = current_principal()
        p = request.privacy
        privacy: dict[str, object] = {
            "mode": p.mode,
            "noise_multiplier": p.noise_multiplier,
            "clipping_norm": p.clipping_norm,
            "epsilon": p.epsilon,
            "delta": p.delta,
            "secagg": p.secagg,
            "sample_rate": p.sample_rate,
        }
        rec = await self.run(
            self._federation.create_run,
            caller,
            request.model_kind,
            request.strategy,
            request.rounds,
            privacy,
            list(request.tenants),
        )
        current_call().resource = f"federation/runs/{rec.id}"
        return federation_pb2.CreateRunResponse(run=run(rec, caller))

    async def RecordRound(
        self, request: federation_pb2.RecordRoundRequest, context: Ctx
    ) -> federation_pb2.RecordRoundResponse:
        caller = current_principal()
        current_call().resource = f"federation/runs/{request.id}"
        r = request.round
        rec = await self.run(
            self._federation.record_round,
            caller,
            request.id,
            r.round,
            dict(r.metrics),
            r.nodes,
            r.bytes,
            r.seconds,
        )
        return federation_pb2.RecordRoundResponse(run=run(rec, caller))

    async def FinishRun(
        self, request: federation_pb2.FinishRunRequest, context: Ctx
    ) -> federation_pb2.FinishRunResponse:
        caller = current_principal()
        current_call().resource = f"federation/runs/{request.id}"
        if request.id <= 0:
            raise InvalidArgument("the run id must be a positive number")
        if request.state not in FederationRunState._value2member_map_:
            raise InvalidArgument("a run finishes as SUCCEEDED or FAILED")
        rec = await self.run(
            self._federation.finish_run,
            caller,
            request.id,
            FederationRunState(request.state),
            request.result_model,
            request.result_version,
            request.message,
            request.epsilon,
        )
        return federation_pb2.FinishRunResponse(run=run(rec, caller))

    async def GetRun(
        self, request: federation_pb2.GetRunRequest, context: Ctx
    ) -> federation_pb2.GetRunResponse:
        caller = current_principal()
        rec = await self.read(self._federation.get_run, caller, request.id)
        return federation_pb2.GetRunResponse(run=run(rec, caller))

    async def ListRuns(
        self, request: federation_pb2.ListRunsRequest, context: Ctx
    ) -> federation_pb2.ListRunsResponse:
        caller = current_principal()
        page = await self.read(
            self._federation.list_runs, caller, request.page.page_token, request.page.page_size
        )
        return federation_pb2.ListRunsResponse(
            runs=[run(r, caller) for r in page.items], next_page_token=page.next_token
        )

    async def SetOptIn(
        self, request: federation_pb2.SetOptInRequest, context: Ctx
    ) -> federation_pb2.SetOptInResponse:
        current_call().resource = f"federation/opt-ins/{request.model_kind}"
        current_call().detail = request.deployment or "(opted out)"
        items = await self.run(
            self._federation.set_opt_in, current_principal(), request.model_kind, request.deployment
        )
        return federation_pb2.SetOptInResponse(opt_ins=[opt_in(o) for o in items])

    async def ListOptIns(
        self, request: federation_pb2.ListOptInsRequest, context: Ctx
    ) -> federation_pb2.ListOptInsResponse:
        items = await self.read(self._federation.list_opt_ins, current_principal(), request.model_kind)
        return federation_pb2.ListOptInsResponse(opt_ins=[opt_in(o) for o in items])

    async def DeliverResult(
        self, request: federation_pb2.DeliverResultRequest, context: Ctx
    ) -> federation_pb2.DeliverResultResponse:
        current_call().resource = f"federation/runs/{request.id}"
        steps = tuple(
            CanaryStep(s.weight, s.min_duration_s or 60, s.min_requests or 100) for s in request.steps
        )
        done = await self.run(self._federation.deliver_result, current_principal(), request.id, steps)
        current_call().detail = ", ".join(
            f"{d.tenant}/{d.deployment}: "
            + (f"v{d.version} rollout {d.rollout_id}" if d.version else "skipped")
            for d in done
        )[:1000]
        return federation_pb2.DeliverResultResponse(
            deliveries=[
                federation_pb2.Delivery(
                    tenant=d.tenant,
                    deployment=d.deployment,
                    model=d.model,
                    version=d.version,
                    rollout_id=d.rollout_id,
                    skipped=d.skipped,
                )
                for d in done
            ]
        )
