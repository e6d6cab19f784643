"""Fixtures of the integration tests that run the server as a real process."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerPool, ServerSet


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


@pytest.fixture
def start_control_plane(request: pytest.FixtureRequest, pool: ServerPool) -> Callable[..., ServerSet]:
    """`start_control_plane(data_dir, **settings)`: the control plane as real processes, started.
    One server on SQLite; with --replicas two replicas on a fresh PostgreSQL database with the
    artifacts in it (skipped with the reason when PostgreSQL is not reachable)."""
    replicas = bool(request.config.getoption("--replicas"))

    def start(data_dir: Path, **settings: Any) -> ServerSet:
        if not replicas:
            return pool.start_set(data_dir, 1, **settings)
        db = str(request.getfixturevalue("postgres_url"))
        return pool.start_set(data_dir, 2, db=db, artifact_store="database", **settings)

    return start
