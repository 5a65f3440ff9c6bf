"""The opaque cursors of `GET /jobs` pages: where the last page ended (created_at, id)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from runner.errors import MalformedRequest
from runner.store.database import as_utc
from runner.store.models import InvocationRecord


def encode_cursor(record: InvocationRecord) -> str:
    """An opaque cursor pointing after `record`."""
    created_at = as_utc(record.created_at)
    assert created_at is not None
    raw = f"{created_at.isoformat()}|{record.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor points after; MalformedRequest when it was not made by us."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_text, last_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        # Compare in the stored form: naive UTC on SQLite, aware elsewhere; both order the same.
        created_at = datetime.fromisoformat(created_text).astimezone(UTC)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise MalformedRequest("The cursor is not one this API returned.", details={"cursor": cursor}) from None
    return created_at, last_id
