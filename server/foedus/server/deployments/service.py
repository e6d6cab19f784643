"""Deployment rules: which versions serve, with which weights, and change notification to agents."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from foedus.server import validation
from foedus.server.errors import FailedPrecondition, InvalidArgument
from foedus.server.store.base import Store
from foedus.server.store.records import DeploymentRecord, Page, VersionRecord, VersionState
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

Traffic = tuple[tuple[int, float], ...]


class DeploymentService:
    def __init__(
        self,
        store: Store,
        *,
        on_change: Callable[[str, str], None] | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        """`on_change(tenant, deployment)` is called after every committed change of traffic."""
        self._store = store
        self._on_change = on_change
        self._clock = clock

    def _check_traffic(
        self, tenant: str, model: str, traffic: Sequence[tuple[int, float]], shadow: int
    ) -> Traffic:
        seen: set[int] = set()
        for version, weight in traffic:
            validation.version_number(version)
            if version in seen:
                raise InvalidArgument(f"version {version} appears twice in the traffic split")
            seen.add(version)
            if not math.isfinite(weight) or weight < 0:
                raise InvalidArgument(f"the weight of version {version} must be a finite number >= 0")
        if traffic and sum(w for _, w in traffic) <= 0:
            raise InvalidArgument("the traffic weights must add up to more than 0")
        if shadow < 0:
            raise InvalidArgument("shadow_version must not be negative")
        for version in (*seen, *([shadow] if shadow else [])):
            if self._store.get_version(tenant, model, version).state != VersionState.READY:
                raise FailedPrecondition(f"version {version} of model {model!r} is archived")
        return tuple((int(v), float(w)) for v, w in traffic)

    def create(
        self,
        caller: Principal,
        name: str,
        model: str,
        description: str,
        traffic: Sequence[tuple[int, float]],
        shadow_version: int,
    ) -> DeploymentRecord:
        tenant = caller.own_tenant()
        validation.deployment_name(name)
        validation.model_name(model)
        validation.description(description)
        self._store.get_model(tenant, model)
        checked = self._check_traffic(tenant, model, traffic, shadow_version)
        record = self._store.create_deployment(
            tenant, name, model, description, checked, shadow_version, caller.key_id, self._clock()
        )
        self._changed(tenant, name)
        return record

    def get(self, caller: Principal, name: str) -> DeploymentRecord:
        return self._store.get_deployment(caller.own_tenant(), validation.deployment_name(name))

    def list_page(self, caller: Principal, page_token: str, page_size: int) -> Page[DeploymentRecord]:
        return self._store.list_deployments(caller.own_tenant(), page_token, page_size)

    def set_traffic(
        self, caller: Principal, name: str, traffic: Sequence[tuple[int, float]], shadow_version: int
    ) -> DeploymentRecord:
        tenant = caller.own_tenant()
        current = self._store.get_deployment(tenant, validation.deployment_name(name))
        active = self._store.list_rollouts(tenant, name, True, "", 1).items
        if active:
            raise FailedPrecondition(
                f"deployment {name!r} has an active rollout ({active[0].id}) that sets its traffic; "
                "pause, promote or abort it first"
            )
        checked = self._check_traffic(tenant, current.model, traffic, shadow_version)
        record = self._store.set_traffic(tenant, name, checked, shadow_version, self._clock())
        self._changed(tenant, name)
        return record

    def assignment(
        self, caller: Principal, name: str, agent: str = ""
    ) -> tuple[DeploymentRecord, list[VersionRecord]]:
        """The deployment and every version it serves or mirrors, with artifacts and profiles.

        `agent`, when given, is the name of the agent asking (checked like every agent name).
        """
        tenant = caller.own_tenant()
        if agent:
            validation.agent_name(agent)
        deployment = self._store.get_deployment(tenant, validation.deployment_name(name))
        numbers = [v for v, _ in deployment.traffic]
        if deployment.shadow_version and deployment.shadow_version not in numbers:
            numbers.append(deployment.shadow_version)
        versions = [self._store.get_version(tenant, deployment.model, v) for v in numbers]
        return deployment, versions

    def _changed(self, tenant: str, name: str) -> None:
        if self._on_change is not None:
            self._on_change(tenant, name)
