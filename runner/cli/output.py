"""How the client commands print: tables, JSON, times and durations, and the API's error details."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click


def detail_lines(details: Any) -> list[str]:
    """The API's `details` of an error, a line each: `field: message` for invalid input, `key: value` else."""
    if details is None:
        return []
    if isinstance(details, list):
        return [f"{item['field']}: {item['message']}" if isinstance(item, dict) and {"field", "message"} <= set(item)
                else _plain(item) for item in details]
    if isinstance(details, dict):
        return [f"{key}: {_plain(value)}" for key, value in details.items()]
    return [_plain(details)]


def _plain(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ", ".join(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# Piped output is not cut to 80 columns: tables keep one row per line for grep and friends.
PIPED_WIDTH = 240


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=max(console.width, PIPED_WIDTH))


def print_table(title: str, columns: list[str], rows: list[list[Any]], wrap: tuple[str, ...] = ()) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        # Ids and names stay whole (copy-pasteable); only free text wraps on a narrow terminal.
        table.add_column(column, no_wrap=column not in wrap, overflow="fold")
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    console().print(table)


def when(value: str | None) -> str:
    """An ISO timestamp to the second, as `YYYY-MM-DD HH:MM:SS` (UTC, as the API gives it)."""
    return value[:19].replace("T", " ") if value else ""


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def took(view: dict[str, Any]) -> str:
    seconds = duration(view)
    return f" in {seconds} s" if seconds else ""


def duration(view: dict[str, Any]) -> str:

    if not view.get("started_at") or not view.get("ended_at"):
        return ""
    seconds = (datetime.fromisoformat(view["ended_at"]) - datetime.fromisoformat(view["started_at"])).total_seconds()
    return f"{seconds:.3f}"
