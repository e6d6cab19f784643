"""`foedus server start --workers N`: several processes serve one port and stop together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from foedus.client_sdk import Client


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to watch the worker processes")
def test_two_workers_share_the_port_and_stop_together(tmp_path: Path, onnx_model: Path) -> None:
    cmd = [sys.executable, "-m", "foedus.client_sdk.cli.main", "server", "start",
           "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--workers", "2"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOEDUS_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while sum("listening on" in line for line in lines) < 2:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        target = re.search(r"listening on (\S+)", next(x for x in lines if "listening on" in x)).group(1)  # type: ignore[union-attr]
        assert len(_children(proc.pid)) >= 2

        admin_key = (tmp_path / "admin.key").read_text().strip()
        with Client.connect(target, api_key=admin_key) as admin:
            owner = admin.tenants.create("multi").owner_key_secret
        with Client.connect(target, api_key=owner) as client:
            client.models.register("iris", onnx_model, aliases=["production"])

        before = {pid: _cpu_ticks(pid) for pid in _children(proc.pid)}
        # New connections are spread over the workers by the kernel; every one sees the same data.
        for _ in range(300):
            with Client.connect(target, api_key=owner) as c:
                assert c.models.get_version("iris", alias="production").version == 1
        busy = [pid for pid, ticks in before.items() if _cpu_ticks(pid) - ticks >= 5]
        assert len(busy) >= 2, f"only {busy} of {list(before)} served requests"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, "".join(lines)
    assert sum("shutting down" in line for line in lines) == 2
