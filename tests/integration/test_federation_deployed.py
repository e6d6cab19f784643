"""The federation as it is operated across machines, each command a real process on loopback:
`foedus federation superlink` (admin) admits only SuperNodes whose keys are registered in the
control plane, tenants run `foedus federation supernode` on their own data, and `foedus
federation run --superlink` trains on them and registers the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from testkit import run_cli as run
from testkit import wait_for

from foedus.client_sdk import Client
from foedus.client_sdk.testing import LocalServer

pytest.importorskip("flwr")
pytest.importorskip("torch")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


def _spawn(log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FOEDUS_TORCH_THREADS": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "foedus.client_sdk.cli.main", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)
    return int(proc.returncode)


def test_superlink_and_supernodes_as_separate_commands(
    server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tenants = [f"org-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    owners = {t: server.create_tenant(t) for t in tenants}
    admin = ("--server", server.target, "--api-key", server.admin_key)
    # every tenant makes its key pair on its SuperNode's machine ...
    data: dict[str, Path] = {}
    t = np.arange(900)
    for i, tenant in enumerate(tenants):
        code, pem, err = run(capsys, "federation", "keys", "create", tenant, "--dir", str(tmp_path / tenant))
        assert code == 0, err
        assert pem.startswith("-----BEGIN PUBLIC KEY-----")
        assert (tmp_path / tenant / tenant).stat().st_mode & 0o077 == 0  # the private key stays private
        x = np.column_stack([np.sin(t / 12), np.cos(t / 12)]) * (i + 1) + 5.0 * i
        data[tenant] = tmp_path / f"{tenant}.npz"
        np.savez(data[tenant], train=x.astype(np.float32))
    # ... and the admin registers two of them (the OpenSSH .pub file as it comes)
    for tenant in tenants[:2]:
        code, _, err = run(
            capsys, *admin, "federation", "keys", "register", tenant, str(tmp_path / tenant / f"{tenant}.pub")
        )
        assert code == 0, err

    from foedus.federation.flower.runner import free_port

    port = str(free_port())
    link_dir = tmp_path / "superlink"
    link = _spawn(
        tmp_path / "superlink.log",
        *admin,
        "federation",
        "superlink",
        "--workdir",
        str(link_dir),
        "--port",
        port,
        "--sync-interval",
        "1",
    )
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        log = tmp_path / "superlink.log"
        wait_for(lambda: log.read_text().count("registered") >= 2 or link.poll() is not None, 90, "key sync")
        assert link.poll() is None, log.read_text()
        ca = link_dir / "certs" / "ca.crt"
        for tenant in tenants:
            nodes[tenant] = _spawn(
                tmp_path / f"node-{tenant}.log",
                "federation",
                "supernode",
                "--superlink",
                f"127.0.0.1:{port}",
                "--ca",
                str(ca),
                "--key",
                str(tmp_path / tenant / tenant),
                "--data",
                str(data[tenant]),
                "--workdir",
                str(tmp_path / f"node-{tenant}"),
            )
        # the SuperNode whose key the admin did not register is turned away
        outsider = nodes[tenants[2]]
        wait_for(lambda: outsider.poll() is not None, 120, "the unregistered SuperNode to be refused")
        refused = (tmp_path / f"node-{tenants[2]}.log").read_text()
        assert outsider.returncode != 0 and "its public key is not registered" in refused, refused

        code, out, err = run(
            capsys,
            *admin,
            "-o",
            "json",
            "federation",
            "run",
            "--superlink",
            f"127.0.0.1:{port}",
            "--superlink-ca",
            str(ca),
            "--tenant",
            tenants[0],
            "--tenant",
            tenants[1],
            "--rounds",
            "2",
            "--features",
            "2",
            "--window",
            "4",
            "--hidden",
            "8",
            "--workdir",
            str(tmp_path / "runs"),
            "--timeout",
            "300",
        )
        assert code == 0, err
        assert "round 1/2: 2 nodes" in err and "round 2/2: 2 nodes" in err
        recorded = json.loads(out)
        assert recorded["state"] == "FEDERATION_RUN_STATE_SUCCEEDED"
        assert sorted(recorded["tenants"]) == sorted(tenants[:2])
        with Client.connect(server.target, api_key=owners[tenants[2]]) as outsider_client:
            assert outsider_client.federation.runs() == []  # not a participant: it sees nothing

        # a revoked key's SuperNode is unregistered from the SuperLink at the next sync
        with server.client() as root:
            [key] = root.federation.node_keys(tenant=tenants[1])
            root.federation.revoke_node_key(tenants[1], key.fingerprint)
        wait_for(lambda: "unregistered" in log.read_text(), 60, "the revoked key to be unregistered")
    finally:
        codes = {name: _stop(proc) for name, proc in nodes.items()}
        link_code = _stop(link)
    assert link_code == 0, (tmp_path / "superlink.log").read_text()[-3000:]
    assert "stopping the SuperLink" in (tmp_path / "superlink.log").read_text()
    assert codes[tenants[0]] == 0, codes  # stopped by SIGTERM, cleanly
