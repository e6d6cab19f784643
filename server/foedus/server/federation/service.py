"""Federation rules: who may join (SuperNode keys), what a run records, who sees which run.

A run's data stays with the tenants: the control plane holds only the run's settings, its per-round
aggregate metrics and the registered result. A tenant sees the runs it took part in, with itself as
the only named participant (and the number of participants); the admin sees everything.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from foedus.server import validation
from foedus.server.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from foedus.server.rollouts.spec import DEFAULT_STEPS, CanaryStep, RolloutSpec, validate
from foedus.server.store.base import Store
from foedus.server.store.records import (
    FederationRunRecord,
    FederationRunState,
    Lineage,
    NewVersion,
    NodeKeyRecord,
    OptInRecord,
    Page,
    Role,
    RolloutRecord,
    Signature,
    TenantState,
    TensorSpec,
    VersionRecord,
)
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

MODEL_KINDS = ("anomaly", "resource")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
PRIVACY_MODES = ("", "central-server", "central-client", "local", "record")
MAX_ROUNDS = 1000
MAX_TENANTS = 1000
MAX_KEY_BYTES = 16_384
PLATFORM_TENANT = "platform"
"""The tenant that holds the platform scope: shared models, such as the federated ops models."""
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----\s*")


def fingerprint(public_key: str) -> str:
    """sha256 (hex) of the key's DER bytes: the same key in any PEM layout has one fingerprint."""
    match = _PEM.fullmatch(public_key.strip() + "\n")
    if match is None:
        raise InvalidArgument("public_key must be one PEM public key (-----BEGIN PUBLIC KEY----- ...)")
    try:
        der = base64.b64decode("".join(match[1].split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("public_key holds invalid base64") from None
    if len(der) < 32:
        raise InvalidArgument("public_key is too short to be a key")
    return hashlib.sha256(der).hexdigest()


def _compatible(a: Signature, b: Signature) -> bool:
    """Same tensors (names, types, ranks) and the same last dimension (an ops model's features);
    the leading dimensions (batch, window length) may differ: agents read the window from the
    model's metadata."""

    def same(x: tuple[TensorSpec, ...], y: tuple[TensorSpec, ...]) -> bool:
        return len(x) == len(y) and all(
            p.name == q.name
            and p.dtype == q.dtype
            and len(p.shape) == len(q.shape)
            and p.shape[-1:] == q.shape[-1:]
            for p, q in zip(x, y, strict=True)
        )

    return same(a.inputs, b.inputs) and same(a.outputs, b.outputs)


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """What one opted-in tenant got from `FederationService.deliver_result`."""

    tenant: str
    deployment: str
    model: str = ""
    version: int = 0
    rollout_id: int = 0
    skipped: str = ""


class RolloutStarter(Protocol):
    def start(self, caller: Principal, spec: RolloutSpec) -> RolloutRecord: ...


class FederationService:
    def __init__(
        self,
        store: Store,
        *,
        rollouts: RolloutStarter | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._store = store
        self._rollouts = rollouts
        self._clock = clock

    # --- node keys -----------------------------------------------------------------------------
    def register_node_key(
        self, caller: Principal, tenant: str, public_key: str, description: str
    ) -> NodeKeyRecord:
        validation.tenant_name(tenant)
        if len(public_key) > MAX_KEY_BYTES:
            raise InvalidArgument(f"public_key is longer than {MAX_KEY_BYTES} characters")
        validation.description(description)
        self._store.get_tenant(tenant)
        record = NodeKeyRecord(
            fingerprint=fingerprint(public_key),
            tenant=tenant,
            public_key=public_key.strip() + "\n",
            description=description,
            created_at_us=self._clock(),
            created_by=caller.key_id,
        )
        return self._store.add_node_key(record)

    def _tenant_of(self, caller: Principal, tenant: str) -> str:
        if caller.is_admin:
            if not tenant:
                raise InvalidArgument("the admin names the tenant")
            self._store.get_tenant(validation.tenant_name(tenant))
            return tenant
        if tenant and tenant != caller.tenant:
            raise NotFound(f"tenant {tenant!r} not found")
        return caller.own_tenant()

    def list_node_keys(self, caller: Principal, tenant: str, include_revoked: bool) -> list[NodeKeyRecord]:
        return self._store.list_node_keys(self._tenant_of(caller, tenant), include_revoked)

    def revoke_node_key(self, caller: Principal, tenant: str, key_fingerprint: str) -> NodeKeyRecord:
        validation.tenant_name(tenant)
        if not re.fullmatch(r"[0-9a-f]{64}", key_fingerprint):
            raise InvalidArgument("fingerprint must be 64 lowercase hex digits (sha256)")
        return self._store.revoke_node_key(tenant, key_fingerprint, self._clock())

    # --- runs ----------------------------------------------------------------------------------
    @staticmethod
    def _privacy(privacy: dict[str, object]) -> dict[str, object]:
        mode = privacy.get("mode", "")
        if mode not in PRIVACY_MODES:
            raise InvalidArgument(f"privacy mode must be one of {', '.join(repr(m) for m in PRIVACY_MODES)}")
        numbers = {
            k: privacy.get(k, 0.0)
            for k in ("noise_multiplier", "clipping_norm", "epsilon", "delta", "sample_rate")
        }
        for name, value in numbers.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"privacy {name} must be a finite number >= 0")
        if mode and not float(numbers["clipping_norm"]) > 0:  # type: ignore[arg-type]
            raise InvalidArgument("differential privacy needs a clipping_norm above 0")
        if not 0 <= float(numbers["delta"]) < 1:  # type: ignore[arg-type]
            raise InvalidArgument("privacy delta must be in [0, 1)")
        if not 0 <= float(numbers["sample_rate"]) <= 1:  # type: ignore[arg-type]
            raise InvalidArgument("privacy sample_rate must be in [0, 1]")
        if mode == "record" and not float(numbers["sample_rate"]) > 0:  # type: ignore[arg-type]
            raise InvalidArgument("record-level privacy (DP-SGD) needs a sample_rate above 0")
        return {"mode": mode, **numbers, "secagg": bool(privacy.get("secagg", False))}

    def create_run(
        self,
        caller: Principal,
        model_kind: str,
        strategy: str,
        rounds: int,
        privacy: dict[str, object],
        tenants: Sequence[str],
    ) -> FederationRunRecord:
        if model_kind not in MODEL_KINDS:
            raise InvalidArgument(f"model_kind must be one of {', '.join(MODEL_KINDS)}")
        if strategy not in STRATEGIES:
            raise InvalidArgument(f"strategy must be one of {', '.join(STRATEGIES)}")
        if not 1 <= rounds <= MAX_ROUNDS:
            raise InvalidArgument(f"rounds must be between 1 and {MAX_ROUNDS}")
        checked = self._privacy(privacy)
        if not tenants or len(tenants) > MAX_TENANTS or len(set(tenants)) != len(tenants):
            raise InvalidArgument(f"name 1 to {MAX_TENANTS} participating tenants, each once")
        for tenant in tenants:
            if self._store.get_tenant(validation.tenant_name(tenant)).state != TenantState.ACTIVE:
                raise FailedPrecondition(f"tenant {tenant!r} is disabled")
            if not self._store.list_node_keys(tenant, False):
                raise FailedPrecondition(f"tenant {tenant!r} has no registered SuperNode key")
        now = self._clock()
        return self._store.create_federation_run(
            FederationRunRecord(
                id=0,
                model_kind=model_kind,
                strategy=strategy,
                rounds=rounds,
                privacy=checked,
                state=FederationRunState.RUNNING,
                tenants=tuple(sorted(tenants)),
                history=(),
                result_model="",
                result_version=0,
                message="",
                created_at_us=now,
                created_by=caller.key_id,
                updated_at_us=now,
                finished_at_us=0,
            )
        )

    def _running(self, run_id: int) -> FederationRunRecord:
        if run_id <= 0:
            raise InvalidArgument("the run id must be a positive number")
        run = self._store.get_federation_run(run_id, None)
        if run.state != FederationRunState.RUNNING:
            raise FailedPrecondition(f"federation run {run_id} has finished ({run.state.name.lower()})")
        return run

    def record_round(
        self,
        caller: Principal,
        run_id: int,
        number: int,
        metrics: dict[str, float],
        nodes: int,
        size: int,
        seconds: float,
    ) -> FederationRunRecord:
        for name, value in metrics.items():
            if not name or len(name) > 64 or not math.isfinite(value):
                raise InvalidArgument(f"metric {name!r}: names are 1 to 64 characters, values finite numbers")
        if nodes < 0 or size < 0 or not math.isfinite(seconds) or seconds < 0:
            raise InvalidArgument("nodes, bytes and seconds must not be negative")
        if number <= 0:
            raise InvalidArgument("rounds are numbered from 1")
        run = self._running(run_id)
        if number != len(run.history) + 1 or number > run.rounds:
            raise FailedPrecondition(
                f"run {run_id} expects round {len(run.history) + 1} of {run.rounds}, not {number}"
            )
        entry: dict[str, object] = {
            "round": number,
            "metrics": dict(metrics),
            "nodes": nodes,
            "bytes": size,
            "seconds": seconds,
        }
        updated = dataclasses.replace(run, history=(*run.history, entry), updated_at_us=self._clock())
        return self._store.update_federation_run(updated)

    def finish_run(
        self,
        caller: Principal,
        run_id: int,
        state: FederationRunState,
        result_model: str,
        result_version: int,
        message: str,
        epsilon: float,
    ) -> FederationRunRecord:
        if state not in (FederationRunState.SUCCEEDED, FederationRunState.FAILED):
            raise InvalidArgument("a run finishes as SUCCEEDED or FAILED")
        if len(message) > 10_000:
            raise InvalidArgument("the message is at most 10000 characters")
        if not math.isfinite(epsilon) or epsilon < 0:
            raise InvalidArgument("epsilon must be a finite number >= 0")
        if result_model or result_version:
            validation.model_name(result_model)
            validation.version_number(result_version)
        elif state == FederationRunState.SUCCEEDED:
            raise InvalidArgument(
                "a succeeded run names its registered result (result_model, result_version)"
            )
        run = self._running(run_id)
        if result_model:
            self._store.get_version(PLATFORM_TENANT, result_model, result_version)
        now = self._clock()
        privacy = dict(run.privacy)
        if epsilon:
            privacy["epsilon"] = epsilon
        done = dataclasses.replace(
            run,
            state=state,
            result_model=result_model,
            result_version=result_version,
            message=message,
            privacy=privacy,
            updated_at_us=now,
            finished_at_us=now,
        )
        return self._store.update_federation_run(done)

    def get_run(self, caller: Principal, run_id: int) -> FederationRunRecord:
        if run_id <= 0:
            raise InvalidArgument("the run id must be a positive number")
        return self._store.get_federation_run(run_id, None if caller.is_admin else caller.own_tenant())

    def list_runs(self, caller: Principal, page_token: str, page_size: int) -> Page[FederationRunRecord]:
        return self._store.list_federation_runs(
            None if caller.is_admin else caller.own_tenant(), page_token, page_size
        )

    # --- opt-ins -------------------------------------------------------------------------------
    def set_opt_in(self, caller: Principal, model_kind: str, deployment: str) -> list[OptInRecord]:
        tenant = caller.own_tenant()
        if model_kind not in MODEL_KINDS:
            raise InvalidArgument(f"model_kind must be one of {', '.join(MODEL_KINDS)}")
        if deployment:
            self._store.get_deployment(tenant, validation.deployment_name(deployment))
        record = OptInRecord(tenant, model_kind, deployment, self._clock(), caller.key_id)
        self._store.set_opt_in(record, bool(deployment))
        return self._store.list_opt_ins(tenant, None)

    def list_opt_ins(self, caller: Principal, model_kind: str) -> list[OptInRecord]:
        if model_kind and model_kind not in MODEL_KINDS:
            raise InvalidArgument(f"model_kind must be one of {', '.join(MODEL_KINDS)}")
        return self._store.list_opt_ins(None if caller.is_admin else caller.own_tenant(), model_kind or None)

    # --- delivery ------------------------------------------------------------------------------
    def deliver_result(
        self, caller: Principal, run_id: int, steps: Sequence[CanaryStep] = ()
    ) -> list[Delivery]:
        """Give a succeeded run's result to every tenant opted in to its kind, through a canary.

        The platform's version becomes the next version of the model the opted-in deployment
        serves (the artifact is content-addressed, so it is shared, not copied), with lineage
        naming the run and the platform version; then a canary rollout with the default steps
        and analysis starts on the deployment. A tenant whose deployment cannot take it (it
        serves nothing yet, has a rollout going, or expects other inputs) is skipped with the
        reason; the others still get it.
        """
        if run_id <= 0:
            raise InvalidArgument("the run id must be a positive number")
        if steps:  # the same checks as a rollout's, before anything is delivered
            validate(RolloutSpec(deployment="probe", version=1, steps=tuple(steps)))
        run = self._store.get_federation_run(run_id, None)
        if run.state != FederationRunState.SUCCEEDED or not run.result_model:
            raise FailedPrecondition(
                f"federation run {run_id} has no registered result to deliver ({run.state.name.lower()})"
            )
        if self._rollouts is None:
            raise FailedPrecondition("this server cannot start rollouts")
        result = self._store.get_version(PLATFORM_TENANT, run.result_model, run.result_version)
        out: list[Delivery] = []
        for opt in self._store.list_opt_ins(None, run.model_kind):
            if opt.tenant == PLATFORM_TENANT or not opt.deployment:
                continue
            try:
                out.append(self._deliver(caller, run, result, opt, tuple(steps)))
            except DomainError as exc:
                out.append(Delivery(opt.tenant, opt.deployment, skipped=str(exc)))
        return out

    def _deliver(
        self,
        caller: Principal,
        run: FederationRunRecord,
        result: VersionRecord,
        opt: OptInRecord,
        steps: tuple[CanaryStep, ...],
    ) -> Delivery:
        tenant = opt.tenant
        if self._store.get_tenant(tenant).state != TenantState.ACTIVE:
            return Delivery(tenant, opt.deployment, skipped="the tenant is disabled")
        deployment = self._store.get_deployment(tenant, opt.deployment)
        active = self._store.list_rollouts(tenant, opt.deployment, True, "", 1).items
        if active:
            return Delivery(
                tenant,
                opt.deployment,
                deployment.model,
                skipped=f"the deployment has an active rollout ({active[0].id})",
            )
        live = [v for v, w in deployment.traffic if w > 0]
        if len(live) != 1:
            why = "serves no version yet" if not live else "splits its traffic between versions"
            return Delivery(tenant, opt.deployment, deployment.model, skipped=f"the deployment {why}")
        stable = self._store.get_version(tenant, deployment.model, live[0])
        if stable.signature.inputs and not _compatible(stable.signature, result.signature):
            return Delivery(
                tenant,
                opt.deployment,
                deployment.model,
                skipped=f"the result's inputs and outputs differ from version {stable.version}'s",
            )
        lineage = Lineage(
            data_fingerprint=result.lineage.data_fingerprint,
            code_revision=result.lineage.code_revision,
            parent_version=stable.version,
            properties={
                **result.lineage.properties,
                "federation_run": str(run.id),
                "platform_model": run.result_model,
                "platform_version": str(run.result_version),
            },
        )
        spec = RolloutSpec(
            deployment=opt.deployment,
            version=stable.version + 1,  # checked before the version exists; set below
            steps=steps or tuple(CanaryStep(w, d, n) for w, d, n in DEFAULT_STEPS),
            description=f"federated run {run.id}",
        )
        validate(spec)
        version = self._store.create_version(
            tenant,
            deployment.model,
            NewVersion(
                description=f"federated {run.model_kind} model of run {run.id}",
                tags={"federated": "true"},
                artifact_sha256=result.artifact_sha256,
                artifact_size=result.artifact_size,
                framework=result.framework,
                onnx_opset=result.onnx_opset,
                signature=result.signature,
                latency=result.latency,
                lineage=lineage,
                reference_profile=stable.reference_profile,
                created_by=caller.key_id,
            ),
            create_model=False,
            aliases=(),
            now_us=self._clock(),
        )
        acting = Principal(key_id=caller.key_id, role=Role.OWNER, tenant=tenant)
        assert self._rollouts is not None
        rollout = self._rollouts.start(acting, dataclasses.replace(spec, version=version.version))
        return Delivery(tenant, opt.deployment, deployment.model, version.version, int(rollout.id))
