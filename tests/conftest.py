"""Shared fixtures: a real server on port 0, tenants and their keys, a real ONNX model, PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foedus.client_sdk import Client
from foedus.client_sdk.testing import LocalServer, ReplicaSet

POSTGRES_URL = os.environ.get("FOEDUS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_reason() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return f"PostgreSQL is not reachable at {POSTGRES_URL} ({str(exc).strip().splitlines()[0]}); set FOEDUS_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    reason = _postgres_reason()
    if reason is not None:
        pytest.skip(reason)
    return POSTGRES_URL


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--replicas",
        action="store_true",
        help="run the `server` fixture as two replicas on one PostgreSQL database (artifacts in the "
        "database; clients spread their calls over both) instead of one server on SQLite",
    )


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"foedus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX classifier: logistic regression on scikit-learn's iris data, via skl2onnx."""
    from foedus_testdata import iris_onnx

    return iris_onnx(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def make_server(request: pytest.FixtureRequest) -> Iterator[Callable[..., LocalServer]]:
    """`make_server(data_dir=None, **settings)` starts a server with these ServerConfig settings:
    one LocalServer on SQLite; with --replicas a ReplicaSet of two replicas with the same settings
    on a fresh PostgreSQL database, artifacts in the database. The tests use either through the same
    interface (target, admin_key, create_tenant, client, data_dir, settings, store, halt, start).
    `listen` applies to the single server only: replicas keep ports of their own, so a halted set
    starts again at the same addresses. What still runs at the module's end is stopped then, and
    the databases are dropped."""
    replicas = request.config.getoption("--replicas")
    if replicas:
        reason = _postgres_reason()
        if reason is not None:
            pytest.skip(reason)
    with contextlib.ExitStack() as stack:

        def make(data_dir: str | Path | None = None, **settings: Any) -> LocalServer:
            if not replicas:
                return stack.enter_context(LocalServer(data_dir, **settings))
            url = stack.enter_context(fresh_database(POSTGRES_URL))
            settings.pop("listen", None)
            servers = ReplicaSet(2, data_dir, db=url, artifact_store="database", **settings)
            return stack.enter_context(servers)  # type: ignore[return-value]  # the same interface

        yield make


@pytest.fixture(scope="module")
def server(make_server: Callable[..., LocalServer]) -> LocalServer:
    """One server on SQLite; with --replicas two replicas on one PostgreSQL database."""
    return make_server(latency_runs=5)


@pytest.fixture
def tenant(server: LocalServer) -> Iterator[Client]:
    """An owner client of a new tenant."""
    key = server.create_tenant(f"t-{uuid.uuid4().hex[:10]}")
    with Client.connect(server.target, api_key=key) as client:
        yield client


@pytest.fixture
def other_tenant(server: LocalServer) -> Iterator[Client]:
    key = server.create_tenant(f"o-{uuid.uuid4().hex[:10]}")
    with Client.connect(server.target, api_key=key) as client:
        yield client
