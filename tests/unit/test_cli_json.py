"""`-o json` data: 64-bit integers are JSON numbers, everything else as protobuf's JSON mapping has it."""

from __future__ import annotations

import json

from foedus.client_sdk.cli.common import to_dict
from foedus.v1 import common_pb2, registry_pb2


def test_int64_fields_are_numbers_at_every_depth() -> None:
    version = registry_pb2.ModelVersion(
        model="churn",
        version=12,
        state=registry_pb2.VERSION_STATE_READY,
        aliases=["production"],
        artifact=registry_pb2.Artifact(sha256="ab" * 32, size_bytes=5_000_000_000),
        lineage=registry_pb2.Lineage(parent_version=11, properties={"owner": "ml"}),
        reference_profile=common_pb2.ReferenceProfile(
            row_count=200,
            features=[
                common_pb2.FeatureProfile(
                    name="x",
                    numeric=common_pb2.NumericBins(edges=[0.0, 0.5, 1.0], counts=[120, 80], overflow=3),
                ),
                common_pb2.FeatureProfile(
                    name="c", categorical=common_pb2.CategoricalCounts(categories=["a"], counts=[7], other=2)
                ),
            ],
        ),
    )
    version.meta.created_at.FromSeconds(1_700_000_000)
    data = to_dict(version)
    assert data["version"] == 12
    assert data["artifact"]["size_bytes"] == 5_000_000_000
    assert data["lineage"] == {"parent_version": 11, "properties": {"owner": "ml"}}
    profile = data["reference_profile"]
    assert profile["row_count"] == 200
    assert profile["features"][0]["numeric"] == {"edges": [0.0, 0.5, 1.0], "counts": [120, 80], "overflow": 3}
    assert profile["features"][1]["categorical"] == {"categories": ["a"], "counts": [7], "other": 2}
    assert data["state"] == "VERSION_STATE_READY"  # enums stay names
    assert data["meta"]["created_at"] == "2023-11-14T22:13:20Z"  # timestamps stay RFC 3339
    assert json.loads(json.dumps(data)) == data


def test_int64_map_values_are_numbers_and_keys_stay_strings() -> None:
    model = registry_pb2.Model(name="churn", latest_version=3, aliases={"production": 2, "candidate": 3})
    assert to_dict(model) == {
        "name": "churn",
        "latest_version": 3,
        "aliases": {"production": 2, "candidate": 3},
    }


def test_fields_left_at_their_defaults_stay_out() -> None:
    assert to_dict(registry_pb2.ModelVersion(model="m")) == {"model": "m"}
