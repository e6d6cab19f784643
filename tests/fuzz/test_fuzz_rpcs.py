"""Fuzzing of every RPC against a real server process: malformed input never gets INTERNAL, UNKNOWN
or DATA_LOSS, never hangs a unary call and never takes the server down.

A fixed seed keeps the inputs the same from run to run; scripts/fuzz_rpcs.py runs the same fuzzing
at any size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fuzz.rpcfuzz import Fuzzer, Input, Keys, fuzz, logged_errors, request_messages, server_rpcs, start_server
from hypothesis import given, settings
from hypothesis import strategies as st

from foedus.v1 import registry_pb2, rollout_pb2

pytestmark = pytest.mark.slow

EXAMPLES_PER_RPC = 40
SEED = 20260901


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The control plane as a real process: a crash ends it, and its log shows every error."""
    proc = start_server(tmp_path_factory.mktemp("fuzz") / "data")
    try:
        yield proc
    finally:
        if proc.alive:
            proc.stop()


def test_every_served_rpc_is_fuzzed() -> None:
    names = {rpc.name for rpc in server_rpcs()}
    assert "foedus.v1.RegistryService/CreateModelVersion" in names  # client streaming
    assert "foedus.v1.AgentService/ReportTelemetry" in names  # bidirectional
    assert "foedus.v1.RolloutService/WatchRollout" in names  # server streaming
    assert "grpc.health.v1.Health/Check" in names
    assert len(names) >= 57


@settings(max_examples=200, database=None, derandomize=True)
@given(request_messages(rollout_pb2.StartRolloutRequest.DESCRIPTOR))
def test_generated_messages_round_trip(message: rollout_pb2.StartRolloutRequest) -> None:
    # Every generated message is a valid message of its type: it survives the wire unchanged.
    again = rollout_pb2.StartRolloutRequest.FromString(message.SerializeToString())
    assert again.SerializeToString(deterministic=True) == message.SerializeToString(deterministic=True)


@settings(max_examples=100, database=None, derandomize=True)
@given(st.data())
def test_generated_oneofs_hold_at_most_one_field(data: st.DataObject) -> None:
    message = data.draw(request_messages(registry_pb2.CreateModelVersionRequest.DESCRIPTOR))
    assert len([f for f, _ in message.ListFields()]) <= 1


def test_malformed_requests_are_invalid_argument(server: Any) -> None:
    # grpc's own answer to bytes that do not parse is UNKNOWN (unary) or INTERNAL (streams).
    admin = server.admin_key
    fuzzer = Fuzzer(server.target, Keys(admin=admin, owner=admin, agent=admin, viewer=admin), tenant="none")
    rpcs = {rpc.name: rpc for rpc in server_rpcs()}
    garbage = Input((b"\xff\xff\xff",), "raw", "valid", "garbage")
    for name in (
        "foedus.v1.AdminService/GetTenant",
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
    ):
        code, details = fuzzer.call(rpcs[name], garbage)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert "malformed request" in details and "do not parse" in details
    fuzzer.close()


def test_fuzzing_every_rpc(server: Any, onnx_model: Path) -> None:
    report = fuzz(
        server.target,
        server.admin_key,
        onnx_model,
        examples_per_rpc=EXAMPLES_PER_RPC,
        seed=SEED,
        rounds=2,
        alive=lambda: bool(server.alive),
    )
    print(report.table())
    assert not report.server_died
    assert not report.violations, "\n".join(v.line() for v in report.violations[:20])
    assert len(report.inputs) == len(server_rpcs())
    assert report.total >= EXAMPLES_PER_RPC * len(server_rpcs()) * 0.9
    assert logged_errors(server.log()) == []
    # Fuzzed requests reached the services, not only the checks in front of them.
    assert report.code_totals()["OK"] > report.total // 20
