"""Fixtures of the integration tests that run the server as a real process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import ServerPool


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[ServerPool]:
    """Servers that are stopped (or killed) after the test; then the bulky files go, the logs stay."""
    servers = ServerPool()
    try:
        yield servers
    finally:
        servers.close()
        for bulky in [*tmp_path.rglob("*.bin"), *tmp_path.glob("*/artifacts")]:
            if bulky.is_dir():
                shutil.rmtree(bulky, ignore_errors=True)
            else:
                bulky.unlink(missing_ok=True)
