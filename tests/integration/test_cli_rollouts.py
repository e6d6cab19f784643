"""`foedus rollout | report dora | deployment windows` against a real server: output and exit codes."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from testkit import run_cli as run

from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.testing import LocalServer


def test_a_rollout_steered_from_the_shell(
    server: LocalServer, onnx_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner = server.create_tenant(f"cli-{uuid.uuid4().hex[:8]}")
    me = ("--server", server.target, "--api-key", owner)
    for _ in range(3):
        code, _, err = run(capsys, *me, "model", "register", "iris", str(onnx_model))
        assert code == 0, err
    code, _, err = run(capsys, *me, "deployment", "create", "web", "--model", "iris", "--version", "1")
    assert code == 0, err

    # bad command lines and refused specs, with their documented exit codes
    code, _, err = run(capsys, *me, "rollout", "start", "web", "2", "--step", "ten")
    assert code == exit_codes.USAGE and "WEIGHT[:MIN_SECONDS[:MIN_REQUESTS]]" in err
    code, _, err = run(capsys, *me, "rollout", "start", "web", "2", "--gate", "vibes")
    assert code == exit_codes.INVALID and "unknown gate" in err
    code, _, err = run(
        capsys, *me, "rollout", "start", "web", "2", "--step", "50", "--step", "20", "--step", "100"
    )
    assert code == exit_codes.INVALID and "increase" in err
    code, _, err = run(capsys, *me, "rollout", "start", "web", "2", "--gate", "quality=holdout:accuracy")
    assert code == exit_codes.INVALID and "no evaluation of version 2" in err
    code, _, err = run(capsys, *me, "rollout", "start", "ghost", "2")
    assert code == exit_codes.NOT_FOUND, err

    code, out, err = run(capsys, *me, "rollout", "start", "web", "2", "--step", "20:60:10", "--step", "100")
    assert code == 0, err
    row = re.search(r"^(\d+)\s+web\s+canary\s+1\s+2\s+progressing\s+1/2\s+20%\s+canary 20%", out, re.M)
    assert row, out
    first = row[1]
    code, out, _ = run(capsys, *me, "-o", "json", "deployment", "get", "web")
    assert json.loads(out)[0]["traffic"] == [
        {"version": 1, "weight": 80.0},
        {"version": 2, "weight": 20.0},
    ]
    code, _, err = run(capsys, *me, "deployment", "set", "web", "--version", "1")
    assert code == exit_codes.INVALID and "active rollout" in err

    code, out, _ = run(capsys, *me, "rollout", "pause", first, "--reason", "checking dashboards")
    assert code == 0 and re.search(r"\bpaused\b.*checking dashboards", out), out
    code, out, _ = run(capsys, *me, "rollout", "resume", first)
    assert code == 0 and "progressing" in out
    code, out, _ = run(capsys, *me, "rollout", "abort", first, "--reason", "wrong build")
    assert code == 0 and re.search(r"\baborted\b.*wrong build", out), out
    # watching a rollout that ended without promoting its candidate exits 9
    code, out, _ = run(capsys, *me, "rollout", "watch", first)
    assert code == exit_codes.NOT_PROMOTED
    assert [line.split()[2] for line in out.splitlines() if "#" + first in line] == [
        "started",
        "paused",
        "resumed",
        "aborted",
    ]

    code, out, err = run(capsys, *me, "rollout", "start", "web", "3", "--strategy", "blue-green")
    assert code == 0, err
    second = re.search(r"^(\d+)\s+web\s+blue-green", out, re.M)[1]  # type: ignore[index]
    code, out, _ = run(capsys, *me, "rollout", "promote", second)
    assert code == 0 and "succeeded" in out
    code, out, _ = run(capsys, *me, "rollout", "watch", second)
    assert code == 0, out
    code, out, _ = run(capsys, *me, "rollout", "status", "--deployment", "web")
    assert code == 0 and f"#{second} promoted" in out

    code, out, _ = run(capsys, *me, "rollout", "list", "--deployment", "web")
    assert [line.split()[0] for line in out.splitlines()] == ["ID", second, first]
    code, out, _ = run(capsys, *me, "rollout", "list", "--active")
    assert out.strip() == "(none)"

    code, out, _ = run(capsys, *me, "report", "dora")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["iris"][1] == "1" and rows["(all)"][1] == "1"
    code, out, _ = run(capsys, *me, "-o", "json", "report", "dora", "--model", "iris")
    assert [m["model"] for m in json.loads(out)["metrics"]] == ["iris"]

    code, _, err = run(capsys, *me, "deployment", "windows", "web")
    assert code == exit_codes.INVALID and "hour" in err


def test_federation_records_from_the_shell(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import base64

    tenant = f"fed-{uuid.uuid4().hex[:8]}"
    owner = server.create_tenant(tenant)
    admin = ("--server", server.target, "--api-key", server.admin_key)
    me = ("--server", server.target, "--api-key", owner)
    key = tmp_path / "node.pub"
    der = b"a supernode public key of tenant " + tenant.encode()
    key.write_text(
        f"-----BEGIN PUBLIC KEY-----\n{base64.b64encode(der).decode()}\n-----END PUBLIC KEY-----\n"
    )
    code, out, err = run(
        capsys, *admin, "federation", "keys", "register", tenant, str(key), "--description", "dc1"
    )
    assert code == 0, err
    assert re.search(rf"\b{tenant}\s+dc1\b", out), out
    code, _, err = run(capsys, *me, "federation", "keys", "register", tenant, str(key))
    assert code == exit_codes.DENIED, err  # only the admin registers keys
    code, _, err = run(capsys, *admin, "federation", "keys", "register", tenant, str(key))
    assert code == exit_codes.CONFLICT, err
    code, out, _ = run(capsys, *me, "-o", "json", "federation", "keys", "list")
    assert [k["tenant"] for k in json.loads(out)] == [tenant]
    code, out, _ = run(capsys, *me, "federation", "runs", "list")
    assert code == 0 and out.strip() == "(none)"
    code, _, err = run(capsys, *me, "federation", "opt-in", "anomaly", "ghost-dep")
    assert code == exit_codes.NOT_FOUND, err
    code, _, err = run(capsys, *me, "federation", "opt-in", "vibes", "")
    assert code == exit_codes.INVALID and "model_kind" in err
