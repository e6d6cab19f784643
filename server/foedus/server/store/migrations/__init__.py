"""Alembic migrations of the SQL store; `migrate()` brings a database to the newest schema."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

_HERE = Path(__file__).resolve().parent


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Upgrades the database to the newest revision (a no-op when it is there already)."""
    command.upgrade(alembic_config(engine), "head")
