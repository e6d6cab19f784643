"""The storage contract of the control plane.

Every backend implements `Store`; the contract test suite (tests/contract) runs against each one.
The docstrings say what MUST hold. Every method that touches tenant data takes the tenant and never
returns or changes another tenant's rows: a resource of another tenant is reported as not found.
Methods are synchronous and thread-safe; the servicers call them from a thread pool.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence

from foedus.server.store.records import (
    AgentRecord,
    AlertRecord,
    AuditRecord,
    DeploymentRecord,
    Evaluation,
    FederationRunRecord,
    IncidentEventRecord,
    IncidentRecord,
    IncidentState,
    IntervalRecord,
    KeyRecord,
    LabelRecord,
    MetricPointRecord,
    MetricSeriesRecord,
    ModelRecord,
    NewVersion,
    NodeKeyRecord,
    NumberedInterval,
    OptInRecord,
    Page,
    PerformanceRecord,
    RolloutEventRecord,
    RolloutRecord,
    TenantRecord,
    TenantState,
    TrafficChange,
    VersionRecord,
    WebhookRecord,
)


class Store(abc.ABC):
    """Durable state of the control plane. A method that returns has committed its change."""

    # --- tenants ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_tenant(self, name: str, display_name: str, created_by: str, now_us: int) -> TenantRecord:
        """Creates an active tenant. MUST raise AlreadyExists when the name is taken."""

    @abc.abstractmethod
    def get_tenant(self, name: str) -> TenantRecord:
        """MUST raise NotFound when no tenant has that name."""

    @abc.abstractmethod
    def list_tenants(self, page_token: str, page_size: int) -> Page[TenantRecord]:
        """Tenants ordered by name. MUST raise InvalidArgument for a token it did not issue."""

    @abc.abstractmethod
    def set_tenant_state(self, name: str, state: TenantState) -> TenantRecord:
        """MUST raise NotFound when no tenant has that name."""

    # --- keys ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_key(self, key: KeyRecord) -> None:
        """Stores a key (its secret only as a hash). Its tenant, if any, MUST exist (else NotFound)."""

    @abc.abstractmethod
    def find_key(self, key_id: str) -> tuple[KeyRecord, TenantState | None] | None:
        """The key and the state of its tenant (None for platform keys), or None if unknown.

        Used on every call to authenticate, so it MUST be a single indexed lookup.
        """

    @abc.abstractmethod
    def list_keys(
        self, tenant: str | None, include_revoked: bool, page_token: str, page_size: int
    ) -> Page[KeyRecord]:
        """Keys of one tenant (or the platform keys when tenant is None), ordered by key id."""

    @abc.abstractmethod
    def revoke_key(self, tenant: str | None, key_id: str, now_us: int) -> KeyRecord:
        """Marks the key revoked (idempotent: a second revoke keeps the first time).

        MUST raise NotFound when the key does not belong to `tenant`.
        """

    @abc.abstractmethod
    def count_keys(self, role: int) -> int:
        """Number of unrevoked keys with that role across the platform."""

    # --- audit -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_audit(self, entry: AuditRecord) -> None:
        """Appends one entry; ids increase with insertion order."""

    @abc.abstractmethod
    def list_audit(self, tenant: str | None, page_token: str, page_size: int) -> Page[AuditRecord]:
        """Entries newest first: of one tenant, or of the platform's own calls when tenant is None."""

    # --- models ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_model(
        self, tenant: str, name: str, description: str, tags: dict[str, str], created_by: str, now_us: int
    ) -> ModelRecord:
        """MUST raise AlreadyExists when the tenant already has a model of that name."""

    @abc.abstractmethod
    def get_model(self, tenant: str, name: str) -> ModelRecord:
        """The model with its aliases. MUST raise NotFound when the tenant has no such model."""

    @abc.abstractmethod
    def list_models(
        self, tenant: str, name_prefix: str, page_token: str, page_size: int
    ) -> Page[ModelRecord]:
        """The tenant's models ordered by name."""

    @abc.abstractmethod
    def registry_usage(self, tenant: str) -> tuple[int, int]:
        """(models, artifact bytes) of the tenant: its models, and the sizes of all its versions'
        artifacts (archived included; an artifact shared by several versions counts each time)."""

    @abc.abstractmethod
    def create_version(
        self,
        tenant: str,
        model: str,
        version: NewVersion,
        *,
        create_model: bool,
        aliases: tuple[str, ...],
        now_us: int,
    ) -> VersionRecord:
        """Adds the next version of a model, and points `aliases` at it, in one transaction.

        Version numbers start at 1 and MUST never repeat within a model, also under concurrent
        registrations on several server replicas. Either all of it is visible afterwards, or none.
        MUST raise NotFound when the model does not exist and `create_model` is false.
        """

    @abc.abstractmethod
    def get_version(self, tenant: str, model: str, version: int) -> VersionRecord:
        """MUST raise NotFound for an unknown model or version."""

    @abc.abstractmethod
    def get_version_by_alias(self, tenant: str, model: str, alias: str) -> VersionRecord:
        """MUST raise NotFound for an unknown model or alias."""

    @abc.abstractmethod
    def list_versions(
        self, tenant: str, model: str, include_archived: bool, page_token: str, page_size: int
    ) -> Page[VersionRecord]:
        """Versions newest first, without their reference profiles. NotFound for an unknown model."""

    @abc.abstractmethod
    def set_alias(
        self, tenant: str, model: str, alias: str, version: int, now_us: int
    ) -> tuple[ModelRecord, int]:
        """Points the alias at the version atomically; returns the model and the previous version (0).

        MUST raise NotFound for an unknown model or version, FailedPrecondition for an archived one.
        """

    @abc.abstractmethod
    def delete_alias(self, tenant: str, model: str, alias: str, now_us: int) -> ModelRecord:
        """MUST raise NotFound for an unknown model or alias."""

    @abc.abstractmethod
    def archive_version(self, tenant: str, model: str, version: int, now_us: int) -> VersionRecord:
        """Archives a version (idempotent). MUST raise FailedPrecondition while an alias points at it
        or a deployment serves or mirrors it."""

    @abc.abstractmethod
    def referenced_digests(self) -> set[str]:
        """Every artifact digest any version references, in any tenant and state."""

    # --- deployments -----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_deployment(
        self,
        tenant: str,
        name: str,
        model: str,
        description: str,
        traffic: tuple[tuple[int, float], ...],
        shadow_version: int,
        created_by: str,
        now_us: int,
    ) -> DeploymentRecord:
        """Creates a deployment at generation 1. MUST raise AlreadyExists when the name is taken.

        The caller has checked that the model and versions exist.
        """

    @abc.abstractmethod
    def get_deployment(self, tenant: str, name: str) -> DeploymentRecord:
        """MUST raise NotFound when the tenant has no such deployment."""

    @abc.abstractmethod
    def list_deployments(self, tenant: str, page_token: str, page_size: int) -> Page[DeploymentRecord]:
        """The tenant's deployments ordered by name."""

    @abc.abstractmethod
    def set_traffic(
        self, tenant: str, name: str, traffic: tuple[tuple[int, float], ...], shadow_version: int, now_us: int
    ) -> DeploymentRecord:
        """Replaces traffic and shadow version and increments the generation, atomically."""

    # --- agents and telemetry --------------------------------------------------------------------
    @abc.abstractmethod
    def register_agent(
        self, tenant: str, deployment: str, name: str, info: dict[str, object], now_us: int
    ) -> None:
        """Creates or updates the agent of a deployment; NotFound for an unknown deployment."""

    @abc.abstractmethod
    def list_agents(self, tenant: str, deployment: str) -> list[AgentRecord]:
        """The deployment's agents ordered by name."""

    @abc.abstractmethod
    def ingest_telemetry(
        self,
        tenant: str,
        deployment: str,
        agent: str,
        batch_id: str,
        intervals_: list[IntervalRecord],
        alerts_: list[AlertRecord],
        series: list[MetricSeriesRecord],
        now_us: int,
    ) -> bool:
        """Stores one batch in one transaction; returns True when its id was committed before.

        A batch id is stored with the batch, so a retried batch is never counted twice, and an
        acknowledged batch (this method returned) is durable. The agent's last-seen time moves on.
        """

    @abc.abstractmethod
    def query_intervals(
        self,
        tenant: str,
        deployment: str,
        version: int | None,
        start_ms: int,
        end_ms: int,
        *,
        counts_only: bool = False,
    ) -> list[IntervalRecord]:
        """Intervals starting in [start_ms, end_ms), oldest first. `counts_only` leaves out the bulky
        drift counts (features empty, predictions None): what status and metric queries need."""

    def stream_intervals(
        self, tenant: str, deployment: str, version: int | None, start_ms: int, end_ms: int
    ) -> Iterator[IntervalRecord]:
        """The intervals of `query_intervals(..., counts_only=True)`, one at a time, for callers that
        aggregate as they go: memory stays that of one batch of rows, however long the range."""
        yield from self.query_intervals(tenant, deployment, version, start_ms, end_ms, counts_only=True)

    @abc.abstractmethod
    def query_metric_points(
        self, tenant: str, deployment: str, name: str, start_ms: int, end_ms: int
    ) -> list[MetricPointRecord]:
        """Logged points of one series in [start_ms, end_ms), oldest first."""

    @abc.abstractmethod
    def list_alerts(
        self, tenant: str, deployment: str | None, page_token: str, page_size: int
    ) -> Page[AlertRecord]:
        """Alerts newest first, of one deployment or of all the tenant's."""

    @abc.abstractmethod
    def first_alert_ms(
        self, tenant: str, deployment: str, version: int | None, start_ms: int, end_ms: int
    ) -> int | None:
        """Time of the first alert of `version` (None: of any version) on the deployment in
        [start_ms, end_ms), or None."""

    @abc.abstractmethod
    def request_rate_history(
        self, tenant: str, deployment: str, start_ms: int, end_ms: int, bucket_ms: int
    ) -> list[tuple[int, int, int]]:
        """(bucket start ms, live requests, summed interval ms) per bucket with any report, oldest first.

        Mirrored (shadow) requests are not counted. Buckets are aligned to multiples of `bucket_ms`.
        """

    # --- incidents -------------------------------------------------------------------------------
    @abc.abstractmethod
    def ungrouped_alert_deployments(self) -> list[tuple[str, str]]:
        """(tenant, deployment) of every deployment with alerts not yet grouped into an incident."""

    @abc.abstractmethod
    def group_alerts(
        self, tenant: str, deployment: str, gap_ms: int, now_us: int
    ) -> list[IncidentEventRecord]:
        """Groups the deployment's ungrouped alerts into incidents, in alert id order, in one
        transaction, and returns the events it appended (one per incident it opened or updated).

        An alert joins the deployment's open (firing or acknowledged) incident when its time is at
        most `gap_ms` after that incident's last alert time (and not more than `gap_ms` before its
        first); otherwise it opens a new firing incident. An alert is grouped once: concurrent
        calls on several replicas never group it twice nor open two incidents for one burst.
        NotFound for an unknown deployment.
        """

    @abc.abstractmethod
    def resolve_quiet_incidents(self, quiet_before_us: int, now_us: int) -> list[IncidentEventRecord]:
        """Resolves (by "auto") every open incident of every tenant whose last alert was grouped
        before `quiet_before_us`, and returns one "resolved" event per incident it resolved."""

    @abc.abstractmethod
    def get_incident(self, tenant: str, incident_id: int) -> IncidentRecord:
        """NotFound for an unknown id or another tenant's incident."""

    @abc.abstractmethod
    def list_incidents(
        self, tenant: str, deployment: str | None, open_only: bool, page_token: str, page_size: int
    ) -> Page[IncidentRecord]:
        """Newest first; NotFound for an unknown deployment."""

    @abc.abstractmethod
    def set_incident_state(
        self,
        tenant: str,
        incident_id: int,
        state: IncidentState,
        allowed_from: tuple[IncidentState, ...],
        actor: str,
        now_us: int,
    ) -> tuple[IncidentRecord, IncidentEventRecord | None]:
        """Moves the incident to `state` when it is in one of `allowed_from`, appending an event.

        An incident already in `state` is returned unchanged with no event. FailedPrecondition
        when it is in another state; NotFound for an unknown id or another tenant's incident.
        """

    @abc.abstractmethod
    def incident_alerts(self, tenant: str, incident_id: int, limit: int) -> list[AlertRecord]:
        """The incident's newest alerts (at most `limit`), newest first; NotFound as get_incident."""

    @abc.abstractmethod
    def incident_events_after(
        self, tenant: str, deployment: str | None, after_id: int, limit: int
    ) -> list[IncidentEventRecord]:
        """The tenant's incident events with an id above `after_id`, oldest first, at most `limit`."""

    @abc.abstractmethod
    def last_incident_event_id(self, tenant: str) -> int:
        """The tenant's largest incident event id, 0 when none."""

    # --- webhooks --------------------------------------------------------------------------------
    @abc.abstractmethod
    def set_webhook(self, webhook: WebhookRecord) -> WebhookRecord:
        """Adds the tenant's webhook for the URL, or replaces the secret and description of the one
        it has (keeping its id); returns it with its id. NotFound for an unknown tenant."""

    @abc.abstractmethod
    def list_webhooks(self, tenant: str) -> list[WebhookRecord]:
        """The tenant's webhooks, secrets included, by id."""

    @abc.abstractmethod
    def delete_webhook(self, tenant: str, webhook_id: int) -> None:
        """NotFound for an unknown id or another tenant's webhook."""

    # --- evaluations -----------------------------------------------------------------------------
    @abc.abstractmethod
    def add_evaluation(self, tenant: str, model: str, version: int, evaluation: Evaluation) -> VersionRecord:
        """Appends an evaluation to the version's lineage; NotFound for an unknown version."""

    # --- rollouts --------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_rollout(
        self,
        rollout: RolloutRecord,
        events: list[RolloutEventRecord],
        traffic: TrafficChange | None,
    ) -> RolloutRecord:
        """Stores a new rollout (its `id` and `revision` are assigned), its first events and, when
        given, the deployment's new traffic, in one transaction.

        FailedPrecondition when the deployment already has an active rollout; NotFound for an
        unknown deployment.
        """

    @abc.abstractmethod
    def get_rollout(self, tenant: str, rollout_id: int) -> RolloutRecord:
        """NotFound for an unknown id or another tenant's rollout."""

    @abc.abstractmethod
    def latest_rollout(self, tenant: str, deployment: str) -> RolloutRecord:
        """The deployment's newest rollout; NotFound when it has none."""

    @abc.abstractmethod
    def list_rollouts(
        self, tenant: str, deployment: str | None, active_only: bool, page_token: str, page_size: int
    ) -> Page[RolloutRecord]:
        """Newest first."""

    @abc.abstractmethod
    def list_rollout_events(
        self, tenant: str, rollout_id: int, after_seq: int, limit: int
    ) -> list[RolloutEventRecord]:
        """Events with seq > after_seq, oldest first; NotFound for an unknown rollout."""

    @abc.abstractmethod
    def update_rollout(
        self,
        rollout: RolloutRecord,
        events: list[RolloutEventRecord],
        traffic: TrafficChange | None,
    ) -> RolloutRecord:
        """Writes the rollout's new state, appends its events (their seq continue the rollout's) and,
        when given, sets the deployment's traffic (a new generation), all in one transaction.

        Aborted when the stored revision is no longer `rollout.revision` (someone else changed it
        first): nothing is written. Returns the record with its new revision. A terminal phase frees
        the deployment for its next rollout.
        """

    @abc.abstractmethod
    def active_rollouts(self) -> list[RolloutRecord]:
        """Every scheduled, progressing or paused rollout of every tenant (the controller's view)."""

    @abc.abstractmethod
    def finished_rollouts(self, tenant: str, model: str | None, since_us: int) -> list[RolloutRecord]:
        """The tenant's rollouts that finished at or after `since_us`, oldest first."""

    @abc.abstractmethod
    def intervals_after(
        self, tenant: str, deployment: str, after_id: int, limit: int
    ) -> list[NumberedInterval]:
        """Intervals stored with an id above `after_id`, in id order, at most `limit`."""

    @abc.abstractmethod
    def last_interval_id(self, tenant: str, deployment: str) -> int:
        """The largest interval id of the deployment, 0 when none."""

    @abc.abstractmethod
    def acquire_lease(self, name: str, owner: str, now_us: int, ttl_us: int) -> bool:
        """Takes or renews the named lease for `owner` until now + ttl when it is free, expired or
        already `owner`'s; True when `owner` holds it afterwards."""

    @abc.abstractmethod
    def renew_member(self, member: str, now_us: int, ttl_us: int) -> int:
        """Registers the server process `member`, or renews its row, at `now_us`; deletes the rows
        of members not renewed since now - ttl, and returns how many members are left (with
        `member`: at least 1)."""

    @abc.abstractmethod
    def remove_member(self, member: str) -> None:
        """Deletes `member`'s row (a server process that stops); nothing when there is none."""

    # --- artifacts in the database ------------------------------------------------------------
    @abc.abstractmethod
    def put_blob(self, sha256: str, size: int, chunks: Iterable[bytes], now_us: int) -> bool:
        """Stores a blob's chunks in order, atomically; False (and nothing written) when the blob is
        stored already, in which case its time is refreshed (garbage collection spares it)."""

    @abc.abstractmethod
    def blob_size(self, sha256: str) -> int | None:
        """The size of a stored blob; None when it is not stored."""

    @abc.abstractmethod
    def blob_chunks(self, sha256: str) -> Iterator[bytes]:
        """The chunks of a stored blob in order, read one at a time; NotFound when it is not stored."""

    @abc.abstractmethod
    def blob_digests(self) -> list[tuple[str, int]]:
        """Every stored blob with the time (us) it was stored or last refreshed."""

    @abc.abstractmethod
    def delete_blob(self, sha256: str) -> None:
        """Deletes a blob and its chunks; nothing when it is not stored."""

    # --- federation ------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_node_key(self, key: NodeKeyRecord) -> NodeKeyRecord:
        """AlreadyExists when the fingerprint is registered (to any tenant); NotFound for an unknown tenant."""

    @abc.abstractmethod
    def list_node_keys(self, tenant: str | None, include_revoked: bool) -> list[NodeKeyRecord]:
        """One tenant's keys (every tenant's with None), by tenant and registration time."""

    @abc.abstractmethod
    def revoke_node_key(self, tenant: str, fingerprint: str, now_us: int) -> NodeKeyRecord:
        """NotFound unless the key is the tenant's; revoking twice keeps the first time."""

    @abc.abstractmethod
    def create_federation_run(self, run: FederationRunRecord) -> FederationRunRecord:
        """Stores a run with its tenants; its id is assigned."""

    @abc.abstractmethod
    def get_federation_run(self, run_id: int, tenant: str | None) -> FederationRunRecord:
        """NotFound for an unknown id, or for a tenant that did not take part (None: any)."""

    @abc.abstractmethod
    def update_federation_run(self, run: FederationRunRecord) -> FederationRunRecord:
        """Writes state, history, result, message and times; NotFound for an unknown id."""

    @abc.abstractmethod
    def list_federation_runs(
        self, tenant: str | None, page_token: str, page_size: int
    ) -> Page[FederationRunRecord]:
        """Newest first; only the runs `tenant` took part in (None: all)."""

    @abc.abstractmethod
    def set_opt_in(self, opt_in: OptInRecord, enabled: bool) -> None:
        """Creates or replaces the tenant's opt-in for the kind, or removes it."""

    @abc.abstractmethod
    def list_opt_ins(self, tenant: str | None, model_kind: str | None) -> list[OptInRecord]:
        """By tenant and kind."""

    # --- labels and performance --------------------------------------------------------------------
    @abc.abstractmethod
    def add_labels(
        self, tenant: str, deployment: str, request_ids: Sequence[str], labels: Sequence[str], now_us: int
    ) -> tuple[int, int]:
        """Stores labels in order; returns the first and last sequence. Sequences increase per
        deployment in commit order: a reader that saw sequence s never later finds a new label
        of the deployment at or below s. NotFound for an unknown deployment (nothing stored)."""

    @abc.abstractmethod
    def labels_after(self, tenant: str, deployment: str, after: int, limit: int) -> list[LabelRecord]:
        """Labels of the deployment with a sequence above `after`, ascending, at most `limit`."""

    @abc.abstractmethod
    def delete_labels_before(self, before_us: int, limit: int) -> int:
        """Deletes at most `limit` labels of any deployment logged before `before_us`, oldest
        first, in one transaction; returns how many. Sequences of deleted labels are not reused."""

    @abc.abstractmethod
    def ingest_performance(
        self,
        tenant: str,
        deployment: str,
        batch_id: str,
        rows: Sequence[PerformanceRecord],
        now_us: int,
    ) -> bool:
        """Stores the rows once per (tenant, batch_id), sharing the telemetry batch ids; returns
        True, storing nothing, for a batch committed before."""

    @abc.abstractmethod
    def query_performance(
        self, tenant: str, deployment: str, version: int | None, start_ms: int, end_ms: int
    ) -> list[PerformanceRecord]:
        """Rows with start_ms <= window_start_ms < end_ms, of one version or all (None)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases connections."""
