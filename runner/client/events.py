"""Server-Sent Events as the HTTP client reads them from `GET /jobs/<id>/events`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerEvent:
    """One Server-Sent Event."""

    event: str
    data: str
    retry_ms: int | None = None

    def json(self) -> Any:
        """The data, parsed as JSON."""
        return json.loads(self.data)


def parse_events(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """Server-Sent Events from a stream's lines (comments skipped, multi-line data joined)."""
    event, retry = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(event, "\n".join(data), retry)
            event, data, retry = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "retry" and value.isdigit():
            retry = int(value)
