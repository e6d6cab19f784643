"""Channel targets over several replicas: addresses, the authority, and which calls are retried."""

from __future__ import annotations

import json

import pytest

from foedus.client_sdk.errors import InvalidArgument
from foedus.client_sdk.targets import resolve_target, service_config


def test_a_replica_list_becomes_one_round_robin_target_with_the_first_host_as_authority() -> None:
    target, options = resolve_target("127.0.0.1:5001, 127.0.0.1:5002,127.0.0.1:5001")
    assert target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert dict(options)["grpc.default_authority"] == "127.0.0.1:5001"
    assert resolve_target("[::1]:5001,[::1]:5002")[0] == "ipv6:[::1]:5001,[::1]:5002"


def test_single_targets_and_uris_are_left_to_grpc() -> None:
    for given in ("cp.example:50051", "dns:///cp-headless:50051", "ipv4:10.0.0.1:1"):
        target, options = resolve_target(given)
        assert target == given
        assert "grpc.default_authority" not in dict(options)


def test_an_address_list_uri_takes_its_first_address_as_authority() -> None:
    # gRPC would check TLS certificates against the whole list, which no certificate names
    for given, first in (("ipv4:10.0.0.1:1,10.0.0.2:1", "10.0.0.1:1"), ("ipv6:[::1]:5,[::2]:5", "[::1]:5")):
        target, options = resolve_target(given)
        assert target == given
        assert dict(options)["grpc.default_authority"] == first


@pytest.mark.parametrize("bad", ["127.0.0.1,127.0.0.2:1", "a:1,b:port", "a:1,b:70000"])
def test_a_malformed_replica_list_is_refused_with_the_entry_named(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        resolve_target(bad)


def test_only_reads_are_retried_and_only_on_unavailable() -> None:
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "loadBalancingConfig" not in json.loads(service_config(balanced=False))
    assert json.loads(dict(resolve_target("127.0.0.1:1,127.0.0.1:2")[1])["grpc.service_config"])[
        "loadBalancingConfig"
    ]
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    retried = {(n["service"].rsplit(".", 1)[1], n["method"]) for n in method_config["name"]}
    assert ("RegistryService", "GetModelVersion") in retried
    assert ("RegistryService", "DownloadArtifact") in retried
    assert ("MonitoringService", "WatchAlerts") in retried
    for write in ("CreateModel", "CreateModelVersion", "SetAlias", "ArchiveModelVersion"):
        assert ("RegistryService", write) not in retried
    assert not any(method.startswith(("Create", "Set", "Delete", "Revoke", "Log")) for _, method in retried)
