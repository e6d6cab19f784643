"""Conversions between store records and foedus.v1 messages."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.timestamp_pb2 import Timestamp

from foedus.server.store.records import (
    AgentRecord,
    AlertRecord,
    AuditRecord,
    DeploymentRecord,
    Evaluation,
    FeatureProfile,
    IntervalRecord,
    KeyRecord,
    Lineage,
    MetricSeriesRecord,
    ModelRecord,
    ReferenceProfile,
    Role,
    TenantRecord,
    VersionRecord,
)
from foedus.v1 import admin_pb2, agent_pb2, common_pb2, deployment_pb2, monitoring_pb2, registry_pb2


def ts(us: int | None) -> Timestamp | None:
    if us is None:
        return None
    t = Timestamp()
    t.seconds, micros = divmod(us, 1_000_000)
    t.nanos = micros * 1000
    return t


def meta(created_us: int, created_by: str, updated_us: int | None = None) -> common_pb2.Meta:
    return common_pb2.Meta(created_at=ts(created_us), created_by=created_by, updated_at=ts(updated_us))


def tenant(rec: TenantRecord) -> admin_pb2.Tenant:
    return admin_pb2.Tenant(
        name=rec.name,
        display_name=rec.display_name,
        state=int(rec.state),  # type: ignore[arg-type]
        meta=meta(rec.created_at_us, rec.created_by),
    )


def api_key(rec: KeyRecord) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=rec.key_id,
        tenant=rec.tenant or "",
        role=int(rec.role),  # type: ignore[arg-type]
        description=rec.description,
        meta=meta(rec.created_at_us, rec.created_by),
        revoked_at=ts(rec.revoked_at_us),
    )


def audit(rec: AuditRecord) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        id=rec.id,
        time=ts(rec.time_us),
        tenant=rec.tenant or "",
        key_id=rec.key_id,
        role=0 if rec.role is None else int(rec.role),  # type: ignore[arg-type]
        method=rec.method,
        resource=rec.resource,
        outcome=rec.outcome,
        detail=rec.detail,
    )


def role(value: int) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None


def model(rec: ModelRecord) -> registry_pb2.Model:
    return registry_pb2.Model(
        name=rec.name,
        description=rec.description,
        tags=rec.tags,
        latest_version=rec.latest_version,
        aliases=rec.aliases,
        meta=meta(rec.created_at_us, rec.created_by, rec.updated_at_us),
    )


def profile_to_proto(p: ReferenceProfile) -> common_pb2.ReferenceProfile:
    out = common_pb2.ReferenceProfile(row_count=p.row_count)
    for f in p.features:
        fp = out.features.add(name=f.name, missing=f.missing)
        if f.kind == "numeric":
            fp.numeric.edges.extend(f.edges)
            fp.numeric.counts.extend(f.counts)
            fp.numeric.underflow = f.underflow
            fp.numeric.overflow = f.overflow
        else:
            fp.categorical.categories.extend(f.categories)
            fp.categorical.counts.extend(f.counts)
            fp.categorical.other = f.other
    return out


def profile_from_proto(p: common_pb2.ReferenceProfile) -> ReferenceProfile:
    features = []
    for f in p.features:
        kind = f.WhichOneof("kind")
        if kind == "categorical":
            c = f.categorical
            features.append(
                FeatureProfile(
                    f.name,
                    "categorical",
                    counts=tuple(c.counts),
                    categories=tuple(c.categories),
                    other=c.other,
                    missing=f.missing,
                )
            )
        else:
            n = f.numeric
            features.append(
                FeatureProfile(
                    f.name,
                    "numeric" if kind == "numeric" else "",
                    edges=tuple(n.edges),
                    counts=tuple(n.counts),
                    underflow=n.underflow,
                    overflow=n.overflow,
                    missing=f.missing,
                )
            )
    return ReferenceProfile(row_count=p.row_count, features=tuple(features))


def lineage_from_proto(lin: registry_pb2.Lineage) -> Lineage:
    """The lineage a client registers; evaluations are recorded apart (RecordEvaluation)."""
    revision_time = lin.code_revision_time
    return Lineage(
        data_fingerprint=lin.data_fingerprint,
        code_revision=lin.code_revision,
        parent_version=lin.parent_version,
        properties=dict(lin.properties),
        code_revision_time_us=revision_time.seconds * 1_000_000 + revision_time.nanos // 1000
        if lin.HasField("code_revision_time")
        else 0,
    )


def evaluation_from_proto(ev: registry_pb2.Evaluation) -> Evaluation:
    return Evaluation(
        dataset=ev.dataset,
        metrics=dict(ev.metrics),
        rows=ev.rows,
        baseline_version=ev.baseline_version,
        baseline_metrics=dict(ev.baseline_metrics),
        dataset_fingerprint=ev.dataset_fingerprint,
    )


def evaluation(ev: Evaluation) -> registry_pb2.Evaluation:
    return registry_pb2.Evaluation(
        dataset=ev.dataset,
        metrics=ev.metrics,
        rows=ev.rows,
        baseline_version=ev.baseline_version,
        baseline_metrics=ev.baseline_metrics,
        dataset_fingerprint=ev.dataset_fingerprint,
        time=ts(ev.time_us) if ev.time_us else None,
        recorded_by=ev.recorded_by,
    )


def version(rec: VersionRecord) -> registry_pb2.ModelVersion:
    msg = registry_pb2.ModelVersion(
        model=rec.model,
        version=rec.version,
        state=int(rec.state),  # type: ignore[arg-type]
        description=rec.description,
        tags=rec.tags,
        aliases=rec.aliases,
        artifact=registry_pb2.Artifact(
            sha256=rec.artifact_sha256,
            size_bytes=rec.artifact_size,
            framework=rec.framework,
            onnx_opset=rec.onnx_opset,
        ),
        lineage=registry_pb2.Lineage(
            data_fingerprint=rec.lineage.data_fingerprint,
            code_revision=rec.lineage.code_revision,
            parent_version=rec.lineage.parent_version,
            properties=rec.lineage.properties,
            code_revision_time=ts(rec.lineage.code_revision_time_us)
            if rec.lineage.code_revision_time_us
            else None,
            evaluations=[evaluation(e) for e in rec.lineage.evaluations],
        ),
        meta=meta(rec.created_at_us, rec.created_by, rec.updated_at_us),
    )
    for spec in rec.signature.inputs:
        msg.signature.inputs.add(name=spec.name, dtype=spec.dtype, shape=spec.shape)
    for spec in rec.signature.outputs:
        msg.signature.outputs.add(name=spec.name, dtype=spec.dtype, shape=spec.shape)
    if rec.latency is not None:
        lat = rec.latency
        msg.latency.CopyFrom(
            registry_pb2.LatencyProfile(
                p50_ms=lat.p50_ms,
                p99_ms=lat.p99_ms,
                runs=lat.runs,
                batch_size=lat.batch_size,
                execution_provider=lat.execution_provider,
            )
        )
    if rec.reference_profile is not None:
        msg.reference_profile.CopyFrom(profile_to_proto(rec.reference_profile))
    return msg


def deployment(rec: DeploymentRecord) -> deployment_pb2.Deployment:
    return deployment_pb2.Deployment(
        name=rec.name,
        model=rec.model,
        description=rec.description,
        traffic=[deployment_pb2.TrafficSplit(version=v, weight=w) for v, w in rec.traffic],
        shadow_version=rec.shadow_version,
        generation=rec.generation,
        meta=meta(rec.created_at_us, rec.created_by, rec.updated_at_us),
    )


def traffic_from_proto(splits: Iterable[deployment_pb2.TrafficSplit]) -> list[tuple[int, float]]:
    return [(s.version, s.weight) for s in splits]


def assigned_version(rec: VersionRecord) -> agent_pb2.AssignedVersion:
    full = version(rec)
    return agent_pb2.AssignedVersion(
        version=rec.version,
        artifact=full.artifact,
        signature=full.signature,
        reference_profile=full.reference_profile if rec.reference_profile is not None else None,
        tags=rec.tags,
    )


def agent_info_to_dict(info: agent_pb2.AgentInfo) -> dict[str, object]:
    return MessageToDict(info, preserving_proto_field_name=True)


def agent_status(rec: AgentRecord) -> monitoring_pb2.AgentStatus:
    info = agent_pb2.AgentInfo()
    ParseDict(rec.info, info, ignore_unknown_fields=True)
    return monitoring_pb2.AgentStatus(
        info=info, registered_unix_ms=rec.registered_at_us // 1000, last_seen_unix_ms=rec.last_seen_us // 1000
    )


def _bins(b: agent_pb2.BinCounts) -> dict[str, object]:
    return {
        "name": b.name,
        "counts": list(b.counts),
        "underflow": b.underflow,
        "overflow": b.overflow,
        "other": b.other,
        "missing": b.missing,
        **({"categories": list(b.categories)} if b.categories else {}),
    }


def interval_from_proto(agent: str, i: agent_pb2.IntervalReport) -> IntervalRecord:
    r = i.resources
    return IntervalRecord(
        agent=agent,
        version=i.version,
        start_ms=i.start_unix_ms,
        duration_ms=i.duration_ms,
        shadow=i.shadow,
        requests=i.requests,
        errors=i.errors,
        invalid=i.invalid,
        latency={
            "buckets": list(i.latency_ms.buckets),
            "counts": list(i.latency_ms.counts),
            "sum": i.latency_ms.sum,
        },
        predictions=_bins(i.predictions) if i.HasField("predictions") else None,
        features=[_bins(f) for f in i.features],
        resources={
            "process_cpu_percent": r.process_cpu_percent,
            "host_cpu_percent": r.host_cpu_percent,
            "process_memory_bytes": float(r.process_memory_bytes),
            "host_memory_used_bytes": float(r.host_memory_used_bytes),
            "gpu_utilization_percent": r.gpu_utilization_percent,
            "gpu_memory_used_bytes": float(r.gpu_memory_used_bytes),
        },
        scores=dict(i.scores),
    )


def alert_from_proto(agent: str, a: agent_pb2.AgentAlert) -> AlertRecord:
    return AlertRecord(
        agent=agent,
        alert_id=a.alert_id,
        time_ms=a.time_unix_ms,
        version=a.version,
        kind=a.kind,
        score=a.score,
        threshold=a.threshold,
        detector=a.detector,
        top=[{"metric": c.metric, "value": c.value, "attribution": c.attribution} for c in a.top],
    )


def series_from_proto(batch: agent_pb2.TelemetryBatch) -> list[MetricSeriesRecord]:
    """The batch's logged metrics as column chunks: its MetricSeries as they are, its single
    MetricPoints grouped by name."""
    out = [
        _chunk(
            s.name,
            np.fromiter(s.time_unix_ms, dtype=np.int64, count=len(s.time_unix_ms)),
            np.fromiter(s.values, dtype=np.float64, count=len(s.values)),
            np.fromiter(s.steps, dtype=np.int64, count=len(s.steps)),
        )
        for s in batch.series
    ]
    by_name: dict[str, list[agent_pb2.MetricPoint]] = {}
    for p in batch.metrics:
        by_name.setdefault(p.name, []).append(p)
    for name, points in by_name.items():
        out.append(
            _chunk(
                name,
                np.asarray([p.time_unix_ms for p in points], dtype=np.int64),
                np.asarray([p.value for p in points], dtype=np.float64),
                np.asarray([p.step for p in points], dtype=np.int64),
            )
        )
    return out


def _chunk(name: str, times: np.ndarray, values: np.ndarray, steps: np.ndarray) -> MetricSeriesRecord:
    return MetricSeriesRecord(
        name=name,
        times_ms=times.astype("<i8").tobytes(),
        values=values.astype("<f8").tobytes(),
        steps=steps.astype("<i8").tobytes(),
        count=len(times),
        start_ms=int(times.min()) if len(times) else 0,
        end_ms=int(times.max()) if len(times) else 0,
    )


def alert(rec: AlertRecord) -> monitoring_pb2.Alert:
    return monitoring_pb2.Alert(
        id=rec.id,
        deployment=rec.deployment,
        agent=rec.agent,
        incident_id=rec.incident_id,
        alert=agent_pb2.AgentAlert(
            alert_id=rec.alert_id,
            time_unix_ms=rec.time_ms,
            version=rec.version,
            kind=rec.kind,
            score=rec.score,
            threshold=rec.threshold,
            detector=rec.detector,
            top=[
                agent_pb2.Contribution(
                    metric=str(c["metric"]),
                    value=float(c["value"]),  # type: ignore[arg-type]
                    attribution=float(c["attribution"]),  # type: ignore[arg-type]
                )
                for c in rec.top
            ],
        ),
    )
