"""`client.federation`: SuperNode keys, federated runs and opt-ins (the control plane's record of
federated learning; the training itself runs on Flower's SuperLink and SuperNodes)."""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from foedus.client_sdk.rollouts import Step, canary_steps
from foedus.v1 import common_pb2, federation_pb2, federation_pb2_grpc

if TYPE_CHECKING:
    from foedus.client_sdk.client import _Rpc

RUN_STATES = {
    federation_pb2.FEDERATION_RUN_STATE_RUNNING: "running",
    federation_pb2.FEDERATION_RUN_STATE_SUCCEEDED: "succeeded",
    federation_pb2.FEDERATION_RUN_STATE_FAILED: "failed",
}


class FederationAPI:
    def __init__(self, rpc: _Rpc) -> None:
        self._rpc = rpc
        self._stub = federation_pb2_grpc.FederationServiceStub(rpc.channel)

    # --- node keys (admin) -----------------------------------------------------------------------
    def register_node_key(
        self, tenant: str, public_key: str, *, description: str = ""
    ) -> federation_pb2.NodeKey:
        """Lets the SuperNode holding this key (PEM) join federated runs for `tenant` (admin)."""
        req = federation_pb2.RegisterNodeKeyRequest(
            tenant=tenant, public_key=public_key, description=description
        )
        return self._rpc(self._stub.RegisterNodeKey, req).key

    def node_keys(
        self, *, tenant: str = "", include_revoked: bool = False
    ) -> builtins.list[federation_pb2.NodeKey]:
        req = federation_pb2.ListNodeKeysRequest(tenant=tenant, include_revoked=include_revoked)
        return list(self._rpc(self._stub.ListNodeKeys, req).keys)

    def revoke_node_key(self, tenant: str, fingerprint: str) -> federation_pb2.NodeKey:
        req = federation_pb2.RevokeNodeKeyRequest(tenant=tenant, fingerprint=fingerprint)
        return self._rpc(self._stub.RevokeNodeKey, req).key

    # --- runs ------------------------------------------------------------------------------------
    def create_run(
        self,
        model_kind: str,
        tenants: builtins.list[str],
        *,
        strategy: str = "fedavg",
        rounds: int = 3,
        privacy: Mapping[str, object] | None = None,
    ) -> federation_pb2.FederationRun:
        req = federation_pb2.CreateRunRequest(
            model_kind=model_kind,
            strategy=strategy,
            rounds=rounds,
            tenants=tenants,
            privacy=federation_pb2.FederationPrivacy(**dict(privacy or {})),  # type: ignore[arg-type]
        )
        return self._rpc(self._stub.CreateRun, req).run

    def record_round(
        self,
        run_id: int,
        number: int,
        metrics: Mapping[str, float],
        *,
        nodes: int = 0,
        size: int = 0,
        seconds: float = 0.0,
    ) -> federation_pb2.FederationRun:
        r = federation_pb2.FederationRound(
            round=number, metrics=dict(metrics), nodes=nodes, bytes=size, seconds=seconds
        )
        return self._rpc(self._stub.RecordRound, federation_pb2.RecordRoundRequest(id=run_id, round=r)).run

    def finish_run(
        self,
        run_id: int,
        *,
        succeeded: bool,
        result_model: str = "",
        result_version: int = 0,
        message: str = "",
        epsilon: float = 0.0,
    ) -> federation_pb2.FederationRun:
        state = (
            federation_pb2.FEDERATION_RUN_STATE_SUCCEEDED
            if succeeded
            else federation_pb2.FEDERATION_RUN_STATE_FAILED
        )
        req = federation_pb2.FinishRunRequest(
            id=run_id,
            state=state,
            result_model=result_model,
            result_version=result_version,
            message=message,
            epsilon=epsilon,
        )
        return self._rpc(self._stub.FinishRun, req).run

    def get_run(self, run_id: int) -> federation_pb2.FederationRun:
        return self._rpc(self._stub.GetRun, federation_pb2.GetRunRequest(id=run_id)).run

    def runs(self, *, limit: int | None = 100) -> builtins.list[federation_pb2.FederationRun]:
        out: builtins.list[federation_pb2.FederationRun] = []
        token = ""
        while True:
            req = federation_pb2.ListRunsRequest(page=common_pb2.PageRequest(page_token=token))
            resp = self._rpc(self._stub.ListRuns, req)
            out.extend(resp.runs)
            token = resp.next_page_token
            if not token or (limit is not None and len(out) >= limit):
                return out if limit is None else out[:limit]

    # --- opt-ins ---------------------------------------------------------------------------------
    def opt_in(self, model_kind: str, deployment: str) -> builtins.list[federation_pb2.FederationOptIn]:
        """The federated `model_kind` models go to `deployment` (through a rollout); "" opts out."""
        req = federation_pb2.SetOptInRequest(model_kind=model_kind, deployment=deployment)
        return list(self._rpc(self._stub.SetOptIn, req).opt_ins)

    def opt_ins(self, *, model_kind: str = "") -> builtins.list[federation_pb2.FederationOptIn]:
        return list(
            self._rpc(self._stub.ListOptIns, federation_pb2.ListOptInsRequest(model_kind=model_kind)).opt_ins
        )

    def deliver_result(
        self, run_id: int, *, steps: Sequence[Step] = ()
    ) -> builtins.list[federation_pb2.Delivery]:
        """Send a succeeded run's result to every opted-in tenant's deployment as a canary rollout
        (admin); one entry per opted-in tenant, with the reason where it was skipped. `steps` as
        for `client.rollouts.start` (default: 10, 25, 50, 100 percent)."""
        req = federation_pb2.DeliverResultRequest(id=run_id, steps=canary_steps(steps))
        return list(self._rpc(self._stub.DeliverResult, req).deliveries)
