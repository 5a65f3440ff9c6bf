"""The dashboard's Schedules page (/dashboard/schedules): every schedule, its timing, state and next run.

rq-dashboard knows nothing of schedules (they are the runner's, in runner.services.schedules), so
this page is served next to its views, under its prefix and auth, in its stylesheet. Every value
is HTML-escaped: a schedule's input is whatever a client sent.
"""

from __future__ import annotations

import html
import json

from flask import Response, request

from api.state import runner_state
from runner.services.schedules import ScheduleView, list_schedules

COLUMNS = ("id", "function", "when", "catch up", "state", "next run (UTC)", "input", "jobs")


def schedules_page() -> Response:
    """The Schedules page; a JSON 503 when Redis is away, as elsewhere in the dashboard."""
    views = list_schedules(runner_state().backends)
    root = html.escape(request.script_root)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    rows = "".join(_row(view, root) for view in views) or (
        f'<tr><td colspan="{len(COLUMNS)}">No schedules yet: POST /schedules or `runner schedules create`.</td></tr>')
    page = (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Schedules - RQ dashboard</title>"
        f"<link rel=\"stylesheet\" href=\"{root}/dashboard/static/css/bootstrap.min.css\"></head>"
        f"<body><div class=\"container\"><p><a href=\"{root}/dashboard/\">&larr; Queues, workers and jobs</a></p>"
        f"<h1>Schedules</h1><table class=\"table table-bordered\" id=\"schedules\"><thead><tr>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table></div></body></html>"
    )
    return Response(page, mimetype="text/html")


def _row(view: ScheduleView, root: str) -> str:
    timing = f"every {view.every} s" if view.every is not None else f"{view.cron} ({view.timezone})"
    state = "paused" if view.paused else "active"
    cells = [view.id, view.function, timing, view.catch_up, state, view.next_run_at or "-",
             json.dumps(view.input)[:200]]
    jobs = f'<a href="{root}/jobs?schedule={html.escape(view.id)}">history</a>'
    return "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + f"<td>{jobs}</td></tr>"
