"""Lifecycle events reach the structured log: one JSON line per event, in order."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient


def test_each_job_event_is_one_json_log_line(
    client: FlaskClient, run_jobs: Callable[..., bool], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runner.events")
    ok = client.post("/functions/simple_calculation/invocations", json={"expression": "6*7"}).get_json()["id"]
    bad = client.post("/functions/simple_calculation/invocations", json={"expression": "1/0"}).get_json()["id"]
    run_jobs()
    lines: list[dict[str, Any]] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "runner.events"]
    assert [(line["event"], line["job_id"]) for line in lines if line["job_id"] == ok] == [
        ("accepted", ok), ("started", ok), ("finished", ok)
    ]
    failed = [line for line in lines if line["job_id"] == bad]
    assert [line["event"] for line in failed] == ["accepted", "started", "failed"]
    assert failed[-1]["error"]["type"] == "PermanentError" and failed[-1]["attempt"] == 1
    finished = next(line for line in lines if line["job_id"] == ok and line["event"] == "finished")
    assert finished["function"] == "simple_calculation" and finished["duration_seconds"] >= 0
