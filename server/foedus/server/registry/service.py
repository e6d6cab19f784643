"""Registry rules: models, versions, aliases, archiving, and registration with its gates."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from foedus.server import validation
from foedus.server.artifacts.local import BlobWriter, LocalBlobStore
from foedus.server.errors import InvalidArgument, NotFound, ResourceExhausted
from foedus.server.registry import gates
from foedus.server.store.base import Store
from foedus.server.store.records import (
    Evaluation,
    LatencyProfile,
    Lineage,
    ModelRecord,
    NewVersion,
    Page,
    ReferenceProfile,
    Signature,
    VersionRecord,
)
from foedus.server.tenancy.principal import Principal
from foedus.server.tenancy.service import now_us

ONNX = "onnx"


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """What a caller declares before sending a version's artifact."""

    model: str
    framework: str
    size_bytes: int
    create_model: bool = False
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    lineage: Lineage = field(default_factory=Lineage)
    reference_profile: ReferenceProfile | None = None


@dataclass(frozen=True, slots=True)
class RegistryLimits:
    max_artifact_bytes: int = 8 * 1024**3
    """Largest artifact accepted (default 8 GiB)."""
    tenant_max_models: int = 0
    """Models a tenant may have; 0: unlimited."""
    tenant_max_artifact_bytes: int = 0
    """Bytes of artifacts a tenant's versions may hold in all; 0: unlimited."""


class Registration:
    """One registration in progress: the artifact streams in, then `finish` gates and records it."""

    def __init__(self, registry: RegistryService, caller: Principal, tenant: str, spec: VersionSpec) -> None:
        self._registry = registry
        self._caller = caller
        self._tenant = tenant
        self.spec = spec
        self._writer: BlobWriter = registry.blobs.writer()
        self._done = False

    @property
    def received(self) -> int:
        return self._writer.size

    def write(self, chunk: bytes) -> None:
        if self._writer.size + len(chunk) > self.spec.size_bytes:
            raise InvalidArgument(
                f"artifact is larger than the declared size_bytes={self.spec.size_bytes}; "
                "declare the exact size of the file"
            )
        self._writer.write(chunk)

    def finish(self, sha256: str) -> VersionRecord:
        """Verifies digest and size, runs the gates on the uploaded file, then stores blob and version."""
        try:
            digest = self._writer.verify(sha256, self.spec.size_bytes)
            opset, signature, latency = self._registry.run_gates(self.spec, self._writer.path)
            self._writer.commit(digest)
            self._done = True
        finally:
            if not self._done:
                self._writer.abort()
        new = NewVersion(
            description=self.spec.description,
            tags=self.spec.tags,
            artifact_sha256=digest,
            artifact_size=self.spec.size_bytes,
            framework=self.spec.framework,
            onnx_opset=opset,
            signature=signature,
            latency=latency,
            lineage=self.spec.lineage,
            reference_profile=self.spec.reference_profile,
            created_by=self._caller.key_id,
        )
        return self._registry.store.create_version(
            self._tenant,
            self.spec.model,
            new,
            create_model=self.spec.create_model,
            aliases=self.spec.aliases,
            now_us=self._registry.clock(),
        )

    def abort(self) -> None:
        if not self._done:
            self._writer.abort()
            self._done = True


class RegistryService:
    def __init__(
        self,
        store: Store,
        blobs: LocalBlobStore,
        *,
        gate_config: gates.GateConfig | None = None,
        limits: RegistryLimits | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.clock = clock
        self.gate_config = gate_config or gates.GateConfig()
        self.limits = limits or RegistryLimits()
        # Latency profiles are measured one at a time so that concurrent registrations don't skew them.
        self._gate_lock = threading.Lock()

    # --- models --------------------------------------------------------------------------------
    def _check_quota(self, tenant: str, new_model: bool, size_bytes: int) -> None:
        """A soft quota: checked before the work, so concurrent calls may overshoot it by a little."""
        limits = self.limits
        if not (limits.tenant_max_models and new_model) and not limits.tenant_max_artifact_bytes:
            return
        count, used = self.store.registry_usage(tenant)
        if new_model and limits.tenant_max_models and count >= limits.tenant_max_models:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {count} models, its quota is {limits.tenant_max_models}; "
                "register new versions into an existing model, or ask the operator for a larger quota "
                "(the server's --tenant-max-models)"
            )
        if limits.tenant_max_artifact_bytes and used + size_bytes > limits.tenant_max_artifact_bytes:
            raise ResourceExhausted(
                f"tenant {tenant!r} holds {used} bytes of artifacts; {size_bytes} more would pass its "
                f"quota of {limits.tenant_max_artifact_bytes} bytes (archived versions keep their artifacts "
                "and count too); ask the operator for a larger quota (the server's --tenant-max-artifact-bytes)"
            )

    def create_model(
        self, caller: Principal, name: str, description: str, tags: dict[str, str]
    ) -> ModelRecord:
        self._check_quota(caller.own_tenant(), True, 0)
        return self.store.create_model(
            caller.own_tenant(),
            validation.model_name(name),
            validation.description(description),
            validation.tags(tags),
            caller.key_id,
            self.clock(),
        )

    def get_model(self, caller: Principal, name: str) -> ModelRecord:
        return self.store.get_model(caller.own_tenant(), validation.model_name(name))

    def list_models(
        self, caller: Principal, name_prefix: str, page_token: str, page_size: int
    ) -> Page[ModelRecord]:
        if len(name_prefix) > 128:
            raise InvalidArgument("name_prefix is longer than 128 characters")
        return self.store.list_models(caller.own_tenant(), name_prefix, page_token, page_size)

    # --- versions ------------------------------------------------------------------------------
    def begin_registration(self, caller: Principal, spec: VersionSpec) -> Registration:
        """Validates the spec before any byte of the artifact is accepted."""
        tenant = caller.own_tenant()
        validation.model_name(spec.model)
        validation.framework(spec.framework)
        validation.description(spec.description)
        validation.tags(spec.tags)
        validation.tags(spec.lineage.properties, "lineage properties")
        for alias in spec.aliases:
            validation.alias(alias)
        if len(spec.aliases) != len(set(spec.aliases)):
            raise InvalidArgument("aliases must not repeat")
        if spec.lineage.parent_version < 0:
            raise InvalidArgument("lineage.parent_version must not be negative")
        if len(spec.lineage.data_fingerprint) > 256 or len(spec.lineage.code_revision) > 256:
            raise InvalidArgument("lineage fingerprints and revisions are at most 256 characters")
        if not 0 < spec.size_bytes <= self.limits.max_artifact_bytes:
            raise InvalidArgument(
                f"size_bytes must be between 1 and {self.limits.max_artifact_bytes} (the server's limit), "
                f"got {spec.size_bytes}"
            )
        if spec.reference_profile is not None:
            validation.reference_profile(spec.reference_profile)
        new_model = False
        if not spec.create_model:
            self.store.get_model(tenant, spec.model)  # NotFound before the upload, not after it
        else:
            try:
                self.store.get_model(tenant, spec.model)
            except NotFound:
                new_model = True
        # versions are never deleted, so a parent that exists now still exists at the commit
        parent = spec.lineage.parent_version
        if parent and (new_model or not self._has_version(tenant, spec.model, parent)):
            raise InvalidArgument(f"lineage.parent_version {parent} is not a version of model {spec.model!r}")
        self._check_quota(tenant, new_model, spec.size_bytes)  # before the upload, not after it
        return Registration(self, caller, tenant, spec)

    def _has_version(self, tenant: str, model: str, version: int) -> bool:
        try:
            self.store.get_version(tenant, model, version)
        except NotFound:
            return False
        return True

    def run_gates(self, spec: VersionSpec, path: Path) -> tuple[int, Signature, LatencyProfile | None]:
        if spec.framework != ONNX:
            return 0, Signature(), None
        with self._gate_lock:
            report = gates.check_onnx(path, self.gate_config)
        if spec.reference_profile is not None:
            gates.check_profile_matches(report.signature, spec.reference_profile)
        return report.opset, report.signature, report.latency

    def get_version(
        self, caller: Principal, model: str, version: int | None, alias: str | None
    ) -> VersionRecord:
        tenant = caller.own_tenant()
        validation.model_name(model)
        if alias is not None:
            return self.store.get_version_by_alias(tenant, model, validation.alias(alias))
        if version is None:
            raise InvalidArgument("give a version number or an alias")
        return self.store.get_version(tenant, model, validation.version_number(version))

    def list_versions(
        self, caller: Principal, model: str, include_archived: bool, page_token: str, page_size: int
    ) -> Page[VersionRecord]:
        return self.store.list_versions(
            caller.own_tenant(), validation.model_name(model), include_archived, page_token, page_size
        )

    def set_alias(self, caller: Principal, model: str, alias: str, version: int) -> tuple[ModelRecord, int]:
        return self.store.set_alias(
            caller.own_tenant(),
            validation.model_name(model),
            validation.alias(alias),
            validation.version_number(version),
            self.clock(),
        )

    def delete_alias(self, caller: Principal, model: str, alias: str) -> ModelRecord:
        return self.store.delete_alias(
            caller.own_tenant(), validation.model_name(model), validation.alias(alias), self.clock()
        )

    def archive_version(self, caller: Principal, model: str, version: int) -> VersionRecord:
        return self.store.archive_version(
            caller.own_tenant(),
            validation.model_name(model),
            validation.version_number(version),
            self.clock(),
        )

    def record_evaluation(
        self, caller: Principal, model: str, version: int, evaluation: Evaluation
    ) -> VersionRecord:
        tenant = caller.own_tenant()
        validation.model_name(model)
        validation.version_number(version)
        if not evaluation.dataset or len(evaluation.dataset) > 200:
            raise InvalidArgument("an evaluation needs a dataset name of 1 to 200 characters")
        if not evaluation.metrics:
            raise InvalidArgument("an evaluation needs at least one metric")
        for name, value in (*evaluation.metrics.items(), *evaluation.baseline_metrics.items()):
            if not name or len(name) > 64 or not math.isfinite(value):
                raise InvalidArgument(f"metric {name!r}: names are 1 to 64 characters, values finite numbers")
        if evaluation.rows < 0 or evaluation.baseline_version < 0:
            raise InvalidArgument("rows and baseline_version must not be negative")
        if evaluation.baseline_version:
            self.store.get_version(tenant, model, evaluation.baseline_version)
        stamped = dataclasses.replace(evaluation, time_us=self.clock(), recorded_by=caller.key_id)
        return self.store.add_evaluation(tenant, model, version, stamped)

    def open_artifact(
        self, caller: Principal, model: str, version: int | None, alias: str | None
    ) -> tuple[VersionRecord, BinaryIO]:
        record = self.get_version(caller, model, version, alias)
        return record, self.blobs.open(record.artifact_sha256)

    # --- housekeeping --------------------------------------------------------------------------
    def collect_garbage(self, grace_s: float = 3600.0) -> int:
        """Deletes stale uploads and blobs no version references that are older than `grace_s`.

        The grace period covers a registration between its blob's rename and its version's commit.
        """
        import time

        removed = self.blobs.remove_stale_uploads()
        referenced = self.store.referenced_digests()
        cutoff = time.time() - grace_s
        for digest, mtime in list(self.blobs.digests()):
            if digest not in referenced and mtime < cutoff:
                self.blobs.delete(digest)
                removed += 1
        return removed
