"""Functions: list, describe, invoke."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from api.clients import client_identity
from api.jobs import job_location
from api.payload import read_json_object, read_number
from api.schedule import read_after, read_expires, read_schedule
from api.state import runner_state
from runner.authoring.spec import FunctionSpec
from runner.services.callbacks import HEADER as CALLBACK_HEADER
from runner.services.idempotency import HEADER as IDEMPOTENCY_HEADER
from runner.services.idempotency import check_key
from runner.services.invocation import InvocationOptions, accept_invocation
from runner.services.job_views import get_job_view, view_from_record, wait_for_job

REPLAYED_HEADER = "Idempotent-Replayed"
# Set when `?wait=` was not honoured because the process's or the client's waits were all taken.
WAIT_SKIPPED_HEADER = "Wait-Skipped"

blueprint = Blueprint("functions", __name__)


def describe(spec: FunctionSpec) -> dict[str, Any]:
    """The public description of a function."""
    return {
        "name": spec.name,
        "description": spec.description,
        **spec.policy(),
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
    options = InvocationOptions(
        idempotency_key=check_key(request.headers.get(IDEMPOTENCY_HEADER)),
        callback_url=request.headers.get(CALLBACK_HEADER),
        run_at=read_schedule(request),
        expires=read_expires(request),
        after=read_after(request),
    )
    accepted = accept_invocation(spec, read_json_object(request), state.backends, options)
    headers = {"Location": job_location(accepted.job_id)}
    if accepted.row is None:
        headers[REPLAYED_HEADER] = "true"
    if wait:
        with state.waits.holding(client_identity()) as refused:
            if refused is None:
                view = wait_for_job(accepted.job_id, state.backends, wait, fresh=not accepted.replayed)
                return view.to_dict(), 200 if view.is_terminal else 202, headers
        # Beyond the bounds a wait answers at once, as one that timed out would (see runner.services.slots).
        headers[WAIT_SKIPPED_HEADER] = f"{refused}-limit"
    # A replay (or a job settled since, `after`) shows the job as it is now; a new job is what was just recorded.
    fresh = accepted.row is not None and not accepted.settled
    view = view_from_record(accepted.row) if fresh and accepted.row else get_job_view(accepted.job_id, state.backends)
    return view.to_dict(), 202, headers
