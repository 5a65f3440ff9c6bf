"""The Alembic migrations create exactly the schema the models declare."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from runner.store.models import Base
from runner.store.sql_store import Store


def test_migrations_match_models(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/schema.db")
    store.migrate()
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/twice.db")
    store.migrate()
    store.migrate()
    with store.engine.connect() as connection:
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version == "0006"
