"""generate_report over real HTTP: gunicorn -> Redis -> worker processes -> SQL store -> report artifacts."""

from __future__ import annotations

import base64
import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image

from api.artifacts import CONTENT_SECURITY_POLICY
from tests.integration.conftest import TERMINAL_STATUSES, Stack

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW_TIMEOUT = 10.0
RETRY_TIMEOUT = 30.0
# The first chart of a fresh worker imports matplotlib and may have to build its font cache.
REPORT_TIMEOUT = 120.0
CALCULATIONS = {"1+1": "finished", "2*3": "finished", "10/4": "finished", "1/0": "failed"}
ARTIFACT_TYPES = {"report.csv": "text/csv", "report.html": "text/html", "report.png": "image/png"}


def invoke(stack: Stack, name: str, payload: dict[str, Any]) -> str:
    """Invoke and return the accepted job id."""
    response = stack.invoke(name, payload)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_for_ended_rows(stack: Stack, job_ids: list[str]) -> None:
    """Wait until the store (not only Redis) shows every job as ended: the report reads the store."""
    deadline = time.monotonic() + ROW_TIMEOUT
    while True:
        rows = [stack.store.get(job_id) for job_id in job_ids]
        if all(row is not None and row.status in TERMINAL_STATUSES and row.ended_at for row in rows):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"store rows never all ended: {[(r.id, r.status) if r else None for r in rows]}")
        time.sleep(0.05)


def test_report_counts_real_invocations_and_serves_artifacts(stack: Stack) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    calculations = {invoke(stack, "simple_calculation", {"expression": text}): status
                    for text, status in CALCULATIONS.items()}
    flaky = invoke(stack, "unreliable_task", {"fail_times": 1})  # one retry, after a 1 s backoff
    for job_id, status in calculations.items():
        assert stack.wait_until_terminal(job_id)["status"] == status
    assert stack.wait_until_terminal(flaky, timeout=RETRY_TIMEOUT)["attempts"] == 2
    wait_for_ended_rows(stack, [*calculations, flaky])

    until = datetime.now(UTC) + timedelta(hours=1)
    report_id = invoke(stack, "generate_report", {"since": since.isoformat(), "until": until.isoformat()})
    view = stack.wait_until_terminal(report_id, timeout=REPORT_TIMEOUT)
    assert view["status"] == "finished", view
    assert view["progress"] == {"percent": 100, "message": "saved report.html"}
    result = view["result"]
    assert (result["since"], result["until"]) == (since.isoformat(), until.isoformat())

    entries = {entry["function"]: entry for entry in result["functions"]}
    # The report's own job, still running while it reads, is not in it.
    assert set(entries) == {"simple_calculation", "unreliable_task"}
    calc, retried = entries["simple_calculation"], entries["unreliable_task"]
    assert (calc["count"], calc["statuses"]["finished"], calc["statuses"]["failed"]) == (4, 3, 1)
    assert (calc["success_rate"], calc["retries"]) == (0.75, 0)
    assert 0 <= calc["p50_seconds"] <= calc["p95_seconds"] < 10
    assert (retried["count"], retried["statuses"]["finished"], retried["retries"]) == (1, 1, 1)
    assert result["total"] == 5
    assert result["artifacts"] == list(ARTIFACT_TYPES)

    listed = {entry["name"]: entry for entry in view["artifacts"]}
    assert set(listed) == set(ARTIFACT_TYPES)
    downloads = {}
    for name, media_type in ARTIFACT_TYPES.items():
        response = stack.get(listed[name]["url"])
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].split(";")[0] == media_type
        assert len(response.content) == listed[name]["size"]
        # A function's output never runs as this origin's page: kept type, sandboxed, HTML downloaded.
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        disposition = "attachment" if name == "report.html" else "inline"
        assert response.headers["Content-Disposition"] == f"{disposition}; filename={name}"
        downloads[name] = response.content
    shown = stack.get(listed["report.html"]["url"], params={"inline": "1"})
    assert shown.headers["Content-Disposition"] == "inline; filename=report.html"
    assert shown.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert shown.content == downloads["report.html"]

    parsed = {line["function"]: line for line in csv.DictReader(io.StringIO(downloads["report.csv"].decode()))}
    assert {name: int(line["count"]) for name, line in parsed.items()} == {n: e["count"] for n, e in entries.items()}
    calc_line = parsed["simple_calculation"]
    assert (int(calc_line["failed"]), float(calc_line["success_rate"])) == (1, 0.75)
    assert int(parsed["unreliable_task"]["retries"]) == 1
    page = downloads["report.html"].decode()
    assert page.startswith("<!DOCTYPE html>") and "<th scope=\"row\">simple_calculation</th>" in page
    assert "<td>75.0%</td>" in page
    assert downloads["report.png"].startswith(PNG_SIGNATURE)
    assert f'<img src="data:image/png;base64,{base64.b64encode(downloads["report.png"]).decode()}"' in page
    assert Image.open(io.BytesIO(downloads["report.png"])).size[0] >= 800


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"}, "until"),
        ({"since": "not a time"}, "since"),
        ({"function": "f" * 129}, "function"),
    ],
)
def test_bad_input_is_refused_before_enqueueing(stack: Stack, payload: dict[str, Any], field: str) -> None:
    rows_before = stack.row_count()
    response = stack.invoke("generate_report", payload)
    assert response.status_code == 422, response.text
    assert field in {detail["field"] for detail in response.json()["details"]}
    assert stack.row_count() == rows_before
