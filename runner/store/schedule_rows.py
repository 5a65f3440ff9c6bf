"""Schedules' definitions in SQL: written when a schedule is created, paused, resumed or deleted.

Redis holds their live state (runner.services.schedules); these rows are what survives Redis.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from runner.store.models import ScheduleRecord
from runner.store.sql_store import Store


def save_schedule(store: Store, values: dict[str, Any]) -> None:
    """Insert the schedule, or replace the definition of the one with its id."""
    with store.session() as session:
        session.merge(ScheduleRecord(**values))


def delete_schedule(store: Store, schedule_id: str) -> bool:
    """Delete a schedule's row; whether there was one."""
    with store.session() as session:
        result = session.execute(sa.delete(ScheduleRecord).where(ScheduleRecord.id == schedule_id))
    return bool(getattr(result, "rowcount", 0))


def all_schedules(store: Store) -> list[dict[str, Any]]:
    """Every schedule's row as column values, oldest first."""
    columns = [column.key for column in ScheduleRecord.__table__.columns]
    with store.session() as session:
        records = session.scalars(sa.select(ScheduleRecord).order_by(ScheduleRecord.created_at, ScheduleRecord.id))
        return [{name: getattr(record, name) for name in columns} for record in records]
