"""Hot-path statements compiled once by SQLAlchemy, then sent straight through the driver's cursor.

Every invocation inserts a row and every job updates it. Through `Connection.execute`,
SQLAlchemy looks up its compiled-statement cache, builds an execution context and a result
for each, which cost more CPU than SQLite's own insert. Here a statement is compiled once per
dialect and column set; each execution only converts its values with the same bind processors
SQLAlchemy would apply (JSON, dates) and hands them to the DB-API cursor, inside the caller's
SQLAlchemy transaction. Only for single rows: for many, SQLAlchemy's cost is shared out, and
its dialects batch them better than a plain `executemany` (psycopg2 would send one per row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

BindProcessor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class DriverStatement:
    """A compiled statement: its SQL in the driver's paramstyle, and how to turn values into parameters."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[BindProcessor, ...]
    positional: bool

    def parameters(self, values: dict[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The driver's parameters for one row of `values` (keyed by bind name)."""
        converted = [value if process is None else process(value)
                     for process, value in zip(self.processors, (values[name] for name in self.names), strict=True)]
        return converted if self.positional else dict(zip(self.names, converted, strict=True))

    def execute(self, connection: sa.Connection, values: dict[str, Any]) -> int:
        """Run the statement for one row, in `connection`'s current transaction; the rows it touched.

        The driver's errors come wrapped as SQLAlchemy wraps them (OperationalError, IntegrityError...),
        so callers tell a lost database from a bad row as they do for any statement."""
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        parameters = self.parameters(values)
        dbapi_error: type[Exception] = connection.dialect.loaded_dbapi.Error
        try:
            cursor.execute(self.sql, parameters)
            return int(cursor.rowcount)
        except dbapi_error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, parameters, exc, dbapi_error,
                                             dialect=connection.dialect) from exc
        finally:
            cursor.close()


def compile_for_driver(statement: sa.Insert | sa.Update, dialect: sa.Dialect) -> DriverStatement | None:
    """`statement` compiled for `dialect`; None when SQLAlchemy would compute values at execution
    (Python-side defaults of columns the statement leaves out): those go through `Connection.execute`."""
    compiled = statement.compile(dialect=dialect)
    if compiled.insert_prefetch or compiled.update_prefetch:  # type: ignore[attr-defined]
        return None
    names: tuple[str, ...] = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)  # type: ignore[attr-defined]
    processors = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)  # type: ignore[attr-defined]
                       for name in names)
    return DriverStatement(str(compiled), names, processors, compiled.positional)
