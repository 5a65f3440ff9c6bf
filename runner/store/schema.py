"""Whether the database holds the tables this code needs: its Alembic revision against the newest one."""

from __future__ import annotations

import functools
from enum import StrEnum

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from runner.store.sql_store import MIGRATIONS_DIR

MIGRATE_HINT = "run `python -m runner migrate` (or `runner migrate`)"


class SchemaState(StrEnum):
    """Where the database stands against this code's migrations."""

    CURRENT = "current"  # at the newest revision (or at a newer one, from newer code)
    MISSING = "missing"  # no tables: never migrated, or another database than intended
    BEHIND = "behind"  # migrated by older code: columns this code writes are missing


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    """The newest migration this code ships."""
    head = _scripts().get_current_head()
    assert head is not None, "the migrations folder has no revision"
    return head


def schema_state(engine: Engine) -> SchemaState:
    """Read the database's revision; raises the driver's errors when it cannot be reached."""
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None:
        return SchemaState.MISSING
    if revision == head_revision():
        return SchemaState.CURRENT
    known = {script.revision for script in _scripts().walk_revisions()}
    return SchemaState.BEHIND if revision in known else SchemaState.CURRENT


def schema_problem(state: SchemaState) -> str | None:
    """What to tell an operator about `state`, or None when the schema is usable."""
    if state is SchemaState.MISSING:
        return f"it has no tables: {MIGRATE_HINT}"
    if state is SchemaState.BEHIND:
        return f"its tables are older than this code (newest revision {head_revision()}): {MIGRATE_HINT}"
    return None
