"""The SQL schema: one row per invocation, keyed by the RQ job id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# How much of a job's input and result a row of a page of history carries (GET /jobs): characters
# of JSON text. A page of 100 rows then stays under a megabyte whatever the jobs took or returned.
LISTED_JSON_CHARS = 4096


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the runner's tables."""


class InvocationRecord(Base):
    """One accepted invocation and everything known about its outcome."""

    __tablename__ = "invocations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    function: Mapped[str] = mapped_column(String(128))
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(JSON)
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    progress_percent: Mapped[int] = mapped_column(Integer, default=0)
    progress_message: Mapped[str] = mapped_column(String(500), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifacts: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    # The jobs it waited for (`?after=`), in the order given; NULL when none.
    after_ids: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # The attempt (execution) that wrote the row last, and the journal position of that write
    # (runner.journal.entries): a write older on either count is not applied.
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    journal_position: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The schedule whose tick made the job (None for an invocation over HTTP).
    schedule: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("ix_invocations_created", "created_at", "id"),
        Index("ix_invocations_schedule_created", "schedule", "created_at"),
        # The pages of GET /jobs, whole or filtered (migration 0006).
        Index("ix_invocations_function_created", "function", "created_at", "id"),
        Index("ix_invocations_status_created", "status", "created_at", "id"),
        Index("ix_invocations_function_status_created", "function", "status", "created_at", "id"),
        Index("ix_invocations_idempotency_key", "idempotency_key"),
    )


@dataclass(frozen=True, slots=True)
class NewInvocation:
    """The row of an invocation as it is first written, without an ORM object: every invocation
    makes one, and an InvocationRecord's instrumented attributes cost more than the rest of it."""

    id: str
    function: str
    queue: str
    status: str
    input: Any
    created_at: datetime
    idempotency_key: str | None = None
    callback_url: str | None = None
    progress_percent: int = 0
    attempts: int = 0
    result: Any | None = None
    error: Any | None = None
    artifacts: Any | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    schedule: str | None = None
    after_ids: list[str] | None = None

    @property
    def progress_message(self) -> str:
        """A new job's progress says what it is waiting for: "queued", "scheduled" or "deferred"."""
        return self.status

    def column_values(self) -> dict[str, Any]:
        """The columns to insert (those left out are NULL)."""
        values = {
            "id": self.id, "function": self.function, "queue": self.queue, "status": self.status,
            "input": self.input, "progress_percent": self.progress_percent,
            "progress_message": self.progress_message, "attempts": self.attempts,
            "created_at": self.created_at, "updated_at": self.created_at,
        }  # fmt: skip
        if self.idempotency_key is not None:
            values["idempotency_key"] = self.idempotency_key
        if self.callback_url is not None:
            values["callback_url"] = self.callback_url
        if self.schedule is not None:
            values["schedule"] = self.schedule
        if self.after_ids:
            values["after_ids"] = self.after_ids
        return values


class ScheduleRecord(Base):
    """A schedule's definition, kept in SQL so it outlives Redis (its live state: runner.services.schedules)."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    function: Mapped[str] = mapped_column(String(128))
    input: Mapped[Any] = mapped_column(JSON)
    cron: Mapped[str | None] = mapped_column(String(255), nullable=True)
    timezone: Mapped[str] = mapped_column(String(64))
    every: Mapped[int | None] = mapped_column(Integer, nullable=True)
    catch_up: Mapped[str] = mapped_column(String(8))
    # Each run's X-Callback-Url, as the schedule's creation sent it.
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # Declared with `@function(schedule=...)` rather than created over HTTP.
    declared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# What a job view reads an invocation's row from: the stored record, or the row as first written.
InvocationRow: TypeAlias = "InvocationRecord | NewInvocation"


@dataclass(frozen=True, slots=True)
class ListedInvocation:
    """A row of a page of history: the record without its input and result (reading them raises),
    and the first LISTED_JSON_CHARS + 1 characters of their JSON text (None for SQL NULL)."""

    record: InvocationRecord
    input_head: str | None
    result_head: str | None
