"""Functions: list, describe, invoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from api.payload import read_json_object, read_number
from api.state import runner_state
from runner.invocation import enqueue_invocation
from runner.jobs import view_from_record, wait_for_job
from runner.registry import FunctionSpec

blueprint = Blueprint("functions", __name__)


def describe(spec: FunctionSpec) -> dict[str, Any]:
    """The public description of a function."""
    return {
        "name": spec.name,
        "description": spec.description,
        "queue": spec.queue,
        "timeout": spec.timeout,
        "retries": spec.retries,
        "backoff": list(spec.backoff),
        "input_schema": spec.input_schema(),
        "invocations_url": url_for("functions.invoke", name=spec.name),
    }


@blueprint.get("/functions")
def list_functions() -> dict[str, Any]:
    return {"functions": [describe(spec) for spec in runner_state().registry]}


@blueprint.get("/functions/<name>")
def get_function(name: str) -> dict[str, Any]:
    return describe(runner_state().registry.get(name))


@blueprint.post("/functions/<name>/invocations")
def invoke(name: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    state = runner_state()
    spec = state.registry.get(name)
    wait = read_number(request, "wait", minimum=0, maximum=state.backends.settings.max_wait_seconds)
    record = enqueue_invocation(spec, read_json_object(request), state.backends)
    headers = {"Location": url_for("jobs.get_job", job_id=record.id)}
    if wait:
        view = wait_for_job(record.id, state.backends, wait)
        return view.to_dict(), 200 if view.is_terminal else 202, headers
    return view_from_record(record).to_dict(), 202, headers
