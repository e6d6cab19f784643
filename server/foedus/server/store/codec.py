"""JSON encodings of the structured columns (signature, latency, lineage, reference profile)."""

from __future__ import annotations

from typing import Any

from foedus.server.store.records import (
    Evaluation,
    FeatureProfile,
    LatencyProfile,
    Lineage,
    ReferenceProfile,
    Signature,
    TensorSpec,
)


def signature_to_json(sig: Signature) -> dict[str, Any]:
    return {
        "inputs": [[t.name, t.dtype, list(t.shape)] for t in sig.inputs],
        "outputs": [[t.name, t.dtype, list(t.shape)] for t in sig.outputs],
    }


def signature_from_json(data: dict[str, Any]) -> Signature:
    return Signature(
        inputs=tuple(TensorSpec(n, d, tuple(s)) for n, d, s in data.get("inputs", ())),
        outputs=tuple(TensorSpec(n, d, tuple(s)) for n, d, s in data.get("outputs", ())),
    )


def latency_to_json(lat: LatencyProfile | None) -> dict[str, Any] | None:
    if lat is None:
        return None
    return {
        "p50_ms": lat.p50_ms,
        "p99_ms": lat.p99_ms,
        "runs": lat.runs,
        "batch_size": lat.batch_size,
        "execution_provider": lat.execution_provider,
    }


def latency_from_json(data: dict[str, Any] | None) -> LatencyProfile | None:
    return None if data is None else LatencyProfile(**data)


def evaluation_to_json(ev: Evaluation) -> dict[str, Any]:
    return {
        "dataset": ev.dataset,
        "metrics": dict(ev.metrics),
        "rows": ev.rows,
        "baseline_version": ev.baseline_version,
        "baseline_metrics": dict(ev.baseline_metrics),
        "dataset_fingerprint": ev.dataset_fingerprint,
        "time_us": ev.time_us,
        "recorded_by": ev.recorded_by,
    }


def evaluation_from_json(data: dict[str, Any]) -> Evaluation:
    return Evaluation(
        dataset=data["dataset"],
        metrics={k: float(v) for k, v in data["metrics"].items()},
        rows=int(data.get("rows", 0)),
        baseline_version=int(data.get("baseline_version", 0)),
        baseline_metrics={k: float(v) for k, v in data.get("baseline_metrics", {}).items()},
        dataset_fingerprint=data.get("dataset_fingerprint", ""),
        time_us=int(data.get("time_us", 0)),
        recorded_by=data.get("recorded_by", ""),
    )


def lineage_to_json(lin: Lineage) -> dict[str, Any]:
    return {
        "data_fingerprint": lin.data_fingerprint,
        "code_revision": lin.code_revision,
        "parent_version": lin.parent_version,
        "properties": dict(lin.properties),
        "code_revision_time_us": lin.code_revision_time_us,
        "evaluations": [evaluation_to_json(e) for e in lin.evaluations],
    }


def lineage_from_json(data: dict[str, Any]) -> Lineage:
    return Lineage(
        data_fingerprint=data["data_fingerprint"],
        code_revision=data["code_revision"],
        parent_version=data["parent_version"],
        properties=dict(data["properties"]),
        code_revision_time_us=int(data.get("code_revision_time_us", 0)),
        evaluations=tuple(evaluation_from_json(e) for e in data.get("evaluations", [])),
    )


def profile_to_json(profile: ReferenceProfile | None) -> dict[str, Any] | None:
    if profile is None:
        return None
    features = []
    for f in profile.features:
        item: dict[str, Any] = {
            "name": f.name,
            "kind": f.kind,
            "missing": f.missing,
            "counts": list(f.counts),
        }
        if f.kind == "numeric":
            item.update(edges=list(f.edges), underflow=f.underflow, overflow=f.overflow)
        else:
            item.update(categories=list(f.categories), other=f.other)
        features.append(item)
    return {"row_count": profile.row_count, "features": features}


def profile_from_json(data: dict[str, Any] | None) -> ReferenceProfile | None:
    if data is None:
        return None
    features = []
    for f in data["features"]:
        features.append(
            FeatureProfile(
                name=f["name"],
                kind=f["kind"],
                edges=tuple(f.get("edges", ())),
                counts=tuple(f["counts"]),
                underflow=f.get("underflow", 0),
                overflow=f.get("overflow", 0),
                categories=tuple(f.get("categories", ())),
                other=f.get("other", 0),
                missing=f["missing"],
            )
        )
    return ReferenceProfile(row_count=data["row_count"], features=tuple(features))
