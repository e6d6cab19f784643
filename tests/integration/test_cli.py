"""The `foedus` CLI against a real server: output, one-line errors, documented exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import run_cli as run

from foedus.client_sdk.cli import exit_codes
from foedus.client_sdk.testing import LocalServer

ROOT = Path(__file__).resolve().parents[2]


def test_a_tenant_workflow_from_the_shell(
    server: LocalServer, onnx_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = ("--server", server.target, "--api-key-file", str(server.data_dir / "admin.key"))
    code, out, _ = run(capsys, *admin, "-o", "json", "tenant", "create", "cli-co")
    assert code == 0
    owner = json.loads(out)[0]["owner_key"]
    me = ("--server", server.target, "--api-key", owner)

    ref = tmp_path / "ref.csv"
    ref.write_text("a,b,c,d,color\n" + "\n".join(f"{i},{i * 2},{i % 3},{i % 5},red" for i in range(50)))
    code, out, err = run(capsys, *me, "model", "register", "iris", str(onnx_model), "--alias", "production",
                         "--tag", "team=ml", "--lineage", "code_revision=abc")  # fmt: skip
    assert code == 0, err
    assert re.search(r"^1\s+ready\s+production\s+onnx", out, re.M)

    code, out, _ = run(capsys, *me, "-o", "json", "model", "get", "iris", "--alias", "production")
    version = json.loads(out)
    assert version["lineage"]["code_revision"] == "abc"
    assert version["tags"] == {"team": "ml"}

    code, out, _ = run(capsys, *me, "-o", "json", "model", "get", "iris")
    model = json.loads(out)  # one object, as for a version; int64 values are JSON numbers
    assert (model["name"], model["aliases"], model["latest_version"]) == ("iris", {"production": 1}, 1)
    code, out, _ = run(capsys, *me, "model", "alias", "iris", "candidate", "1")
    assert code == 0
    code, out, _ = run(capsys, *me, "model", "download", "iris", str(tmp_path), "--version", "1")
    assert code == 0
    assert (tmp_path / "iris-v1.onnx").read_bytes() == onnx_model.read_bytes()

    code, out, _ = run(capsys, *me, "-o", "json", "key", "create", "--role", "viewer")
    viewer = json.loads(out)[0]["secret"]
    code, out, _ = run(capsys, *me, "audit")
    assert "CreateModelVersion" in out
    assert "SetAlias" in out

    # a reference CSV with a categorical column, registered as a custom artifact
    code, out, err = run(capsys, *me, "model", "register", "tabular", str(ref), "--reference", str(ref))
    assert code == 0, err

    # errors: one readable line, no traceback, documented exit code
    cases = [
        ((*me, "model", "get", "nope"), exit_codes.NOT_FOUND, "model 'nope' not found"),
        (
            ("--server", server.target, "--api-key", viewer, "model", "archive", "iris", "1"),
            exit_codes.DENIED,
            "viewer",
        ),
        (
            ("--server", server.target, "--api-key", "fds_000000000000_x", "model", "list"),
            exit_codes.DENIED,
            "unknown",
        ),
        ((*me, "model", "get", "Bad Name!"), exit_codes.INVALID, "invalid model name"),
        ((*me, "model", "archive", "iris", "1"), exit_codes.INVALID, "alias"),
        ((*admin, "tenant", "create", "cli-co"), exit_codes.CONFLICT, "already exists"),
        (
            ("--server", "127.0.0.1:1", "--api-key", owner, "model", "list"),
            exit_codes.UNAVAILABLE,
            "cannot reach",
        ),
        ((*me, "model", "get"), exit_codes.USAGE, "Missing argument"),
        (("model", "list"), exit_codes.DENIED, "no API key"),
    ]
    for args, expected, text in cases:
        code, out, err = run(capsys, *args)
        assert code == expected, (args, out, err)
        assert text in err, (args, err)
        assert "Traceback" not in err


def test_console_script_help_and_exit_code_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "foedus.client_sdk.cli.main", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for group in ("server", "tenant", "key", "model", "audit"):
        assert group in result.stdout
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, re.M))
    assert {int(k): v for k, v in table.items()} == exit_codes.HELP
