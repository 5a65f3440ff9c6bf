"""Renders the invocation report of `generate_report` as CSV, a self-contained HTML page and a PNG chart."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# RQ's status words, always reported (even with no rows) so every report has the same columns.
KNOWN_STATUSES = ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled", "stopped")
# Fixed colours, so a status looks the same in every report.
STATUS_COLOURS = {
    "finished": "#2e7d32", "failed": "#c62828", "canceled": "#757575", "stopped": "#6d4c41",
    "started": "#1565c0", "queued": "#90caf9", "scheduled": "#b39ddb", "deferred": "#ffcc80",
}
OTHER_COLOUR = "#000000"
LABEL_CHARS = 24
CHART_DPI = 100
METRIC_COLUMNS = ("success_rate", "p50_seconds", "p95_seconds", "retries")


def status_columns(functions: Sequence[dict[str, Any]]) -> list[str]:
    """RQ's status words, then any other status word the report holds."""
    columns = dict.fromkeys(KNOWN_STATUSES)
    for entry in functions:
        columns.update(dict.fromkeys(entry["statuses"]))
    return list(columns)


def _rows(functions: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    statuses = status_columns(functions)
    header = ["function", "count", *statuses, *METRIC_COLUMNS]
    rows = [
        [entry["function"], entry["count"], *(entry["statuses"].get(s, 0) for s in statuses),
         *(entry[column] for column in METRIC_COLUMNS)]
        for entry in functions
    ]
    return header, rows


def render_csv(functions: Sequence[dict[str, Any]]) -> str:
    """One row per function after a header row; an empty cell stands for null."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    header, rows = _rows(functions)
    writer.writerow(header)
    writer.writerows([["" if value is None else value for value in row] for row in rows])
    return buffer.getvalue()


def _cell(column: str, value: Any) -> str:
    # The HTML is for reading: a rate as a percentage, durations to the millisecond (the CSV keeps full values).
    if value is None:
        return "—"
    if column == "success_rate":
        return f"{value:.1%}"
    if column.endswith("_seconds"):
        return f"{value:.3f}"
    return html.escape(str(value))


def _html_row(header: list[str], row: list[Any]) -> str:
    cells = "".join(f"<td>{_cell(column, value)}</td>" for column, value in zip(header[1:], row[1:], strict=True))
    return f"<tr><th scope=\"row\">{html.escape(str(row[0]))}</th>{cells}</tr>"


def render_html(functions: Sequence[dict[str, Any]], period: dict[str, str | None], total: int,
                chart_png: bytes | None = None) -> str:
    """A standalone HTML page (inline style, the chart inline as a data: URI, nothing external); every value escaped."""
    header, rows = _rows(functions)
    head = "".join(f"<th scope=\"col\">{html.escape(name)}</th>" for name in header)
    body = "".join(_html_row(header, row) for row in rows) or (
        f"<tr><td colspan=\"{len(header)}\">no invocations</td></tr>"
    )
    caption = html.escape(f"{total} invocations from {period['since'] or 'the beginning'} "
                          f"until {period['until'] or 'now'}")
    # The page travels alone (a download, an e-mail attachment): the chart goes inside it, not beside it.
    chart = "" if chart_png is None else (
        f"<p><img src=\"data:image/png;base64,{base64.b64encode(chart_png).decode('ascii')}\" "
        "alt=\"Invocations by status and duration of ended jobs, per function\"></p>\n"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>Invocation report</title>\n<style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "th[scope=row]{text-align:left}caption{text-align:left;margin-bottom:.5em}img{max-width:100%}"
        "</style>\n</head>\n<body>\n<h1>Invocation report</h1>\n"
        f"<table>\n<caption>{caption}</caption>\n<thead><tr>{head}</tr></thead>\n"
        f"<tbody>{body}</tbody>\n</table>\n{chart}</body>\n</html>\n"
    )


def _plain(text: str) -> str:
    # Text from data: escape '$' so matplotlib draws it as is instead of reading mathtext.
    return text.replace("$", r"\$")


def _label(name: str) -> str:
    short = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"
    return _plain(short) or "(unnamed)"


def render_chart(functions: Sequence[dict[str, Any]], period: dict[str, str | None]) -> bytes:
    """PNG bytes: counts per function stacked by status, and p50/p95 durations per function."""
    # Imported here: the registry imports every function module at API start-up, and the Agg
    # canvas draws without a display and without switching pyplot's process-wide backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    title = f"Invocations from {period['since'] or 'the beginning'} until {period['until'] or 'now'}"
    width = min(30.0, max(10.0, 4 + 0.5 * len(functions)))
    figure = Figure(figsize=(width, 6.5), dpi=CHART_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(_plain(title))
    if not functions:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no invocations", ha="center", va="center", fontsize=20, transform=axes.transAxes)
    else:
        _draw(figure, functions)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw(figure: Figure, functions: Sequence[dict[str, Any]]) -> None:
    counts_axes, duration_axes = figure.subplots(1, 2)
    positions = list(range(len(functions)))
    labels = [_label(entry["function"]) for entry in functions]
    bottoms = [0] * len(functions)
    for status in status_columns(functions):
        heights = [entry["statuses"].get(status, 0) for entry in functions]
        if any(heights):
            counts_axes.bar(positions, heights, bottom=bottoms, label=status,
                            color=STATUS_COLOURS.get(status, OTHER_COLOUR))
            bottoms = [low + height for low, height in zip(bottoms, heights, strict=True)]
    counts_axes.set_title("Invocations by status")
    counts_axes.set_ylabel("invocations")
    counts_axes.legend(fontsize="small")

    half = 0.4
    for offset, key, colour in ((-half / 2, "p50_seconds", "#42a5f5"), (half / 2, "p95_seconds", "#ef6c00")):
        # A function with no ended job has no duration: drawn as an empty slot.
        heights = [entry[key] or 0.0 for entry in functions]
        duration_axes.bar([p + offset for p in positions], heights, width=half, label=key.split("_")[0], color=colour)
    duration_axes.set_title("Duration of ended jobs")
    duration_axes.set_ylabel("seconds")
    duration_axes.legend(fontsize="small")

    rotation, alignment = (30, "right") if len(functions) > 3 else (0, "center")
    for axes in (counts_axes, duration_axes):
        axes.set_xticks(positions, labels, rotation=rotation, ha=alignment)
