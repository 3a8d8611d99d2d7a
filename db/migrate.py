"""Schema upgrades through Alembic, run by the app, the CLI and the worker on start.

The upgrade runs inside one write transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: an
advisory lock), so processes starting together upgrade once and never half-way.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_ID = 7_453_001


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    with engine.execution_options(vqa_write=True).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
