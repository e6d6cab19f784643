"""Shared fixtures: a real server on port 0, tenants and their keys, a real ONNX model, PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from foedus.client_sdk import Client
from foedus.client_sdk.testing import LocalServer

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


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"foedus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX classifier: logistic regression on scikit-learn's iris data, via skl2onnx."""
    from foedus_testdata import iris_onnx

    return iris_onnx(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(latency_runs=5) as srv:
        yield srv


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
