"""Helpers the test modules share: the CLI in-process, waiting for a condition, the shared data."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Runs `foedus ARGS...` in-process: (exit code, stdout, stderr)."""
    from foedus.client_sdk.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `condition` every 50 ms; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def raises_soon(
    error: type[Exception], match: str, call: Callable[[], object], timeout: float = 10.0
) -> None:
    """Waits until `call` raises `error` (its message matching `match`) every time. One server
    refuses at once; replicas learn of a revoked key or a disabled tenant through a notification,
    a few milliseconds later, so a call sent at once to another replica may still pass. Calls go
    round-robin over the replicas, so four refusals in a row mean that each replica refuses."""
    streak = 0

    def refused_in_a_row() -> bool:
        nonlocal streak
        try:
            call()
        except error:
            streak += 1
            return streak >= 4
        streak = 0
        return False

    wait_for(refused_in_a_row, timeout, f"{call!r} to raise {error.__name__}")
    with pytest.raises(error, match=match):
        call()


def shared_data_dir() -> Path | None:
    """FOEDUS_DATA_DIR, else the nearest `shared/data` beside the repository or above it."""
    configured = os.environ.get("FOEDUS_DATA_DIR")
    if configured:
        return Path(configured)
    for ancestor in Path(__file__).resolve().parents:
        candidate = ancestor / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None
