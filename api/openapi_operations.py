"""What the OpenAPI document says about each route we know: summaries, parameters and statuses.

The bodies' schemas live in `api.openapi_schemas`; this table adds what a type cannot say:
what an operation does, its query and header parameters, and which statuses it answers with.
"""

from __future__ import annotations

import copy
from typing import Any

from api.artifacts import CONTENT_SECURITY_POLICY
from api.cross_site import STATE_CHANGING_METHODS
from api.openapi_invocations import (
    INVOCATION_DESCRIPTION,
    completion_callback,
    invocation_parameters,
    invocation_responses,
)
from api.openapi_schedules import schedule_operations
from api.openapi_schemas import (
    LOCATION,
    documented_error,
    documented_errors,
    header,
    json_response,
    query_parameter,
    ref,
)
from runner.config import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Settings
from runner.services.callbacks import HEADER as CALLBACK_HEADER
from runner.status import STATUS_WORDS

ARTIFACT_DESCRIPTION = (
    "Every answer carries `X-Content-Type-Options: nosniff` and a Content-Security-Policy that lets no "
    "script, fetch, form or frame run (`sandbox`): a file a function wrote is never active content on "
    "this API's origin, even shown inline."
)


def _artifact_headers() -> dict[str, Any]:
    return {
        "Content-Disposition": header("`attachment` or `inline` (see `inline`), with the file name.",
                                      {"type": "string", "pattern": "^(attachment|inline);"}),
        "X-Content-Type-Options": header("Browsers keep the declared media type.",
                                         {"type": "string", "enum": ["nosniff"]}),
        "Content-Security-Policy": header("No script, fetch, form or framing; a sandbox.",
                                          {"type": "string", "enum": [CONTENT_SECURITY_POLICY]}),
    }


def _operations(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    state_conflict = ("state_conflict",)
    return {
        ("GET", "/functions"): {
            "summary": "List the functions", "tags": ["functions"],
            "responses": {"200": json_response("Every function.", ref("FunctionList"))},
        },
        ("GET", "/functions/{name}"): {
            "summary": "Describe a function", "tags": ["functions"],
            "responses": {"200": json_response("The function.", ref("Function")), **documented_errors(404)},
        },
        ("POST", "/functions/{name}/invocations"): {
            "summary": "Invoke a function", "tags": ["functions"],
            "description": INVOCATION_DESCRIPTION,
            "parameters": invocation_parameters(settings),
            "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": invocation_responses(),
            "callbacks": completion_callback(),
        },
        ("GET", "/jobs"): {
            "summary": "The job history, newest first", "tags": ["jobs"],
            "parameters": [
                query_parameter("function", {"type": "string"}, "Only jobs of this function."),
                query_parameter("status", {"type": "string", "enum": sorted(STATUS_WORDS)},
                                "Only jobs in this status."),
                query_parameter("schedule", {"type": "string"}, "Only the jobs of this schedule's ticks."),
                query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                                 "default": DEFAULT_PAGE_SIZE}, "Page size."),
                query_parameter("cursor", {"type": "string"}, "`next` of the previous page."),
            ],
            "responses": {"200": json_response("A page of jobs.", ref("JobList")), **documented_errors(400, 503)},
        },
        ("GET", "/jobs/{job_id}"): {
            "summary": "A job: status, progress, result or error", "tags": ["jobs"],
            "responses": {"200": json_response("The job.", ref("JobView")), **documented_errors(404, 503)},
        },
        ("GET", "/jobs/{job_id}/events"): {
            "summary": "Follow a job live (Server-Sent Events)", "tags": ["jobs"],
            "description": "Events: `state` (the job view, first), `status`, `progress`, then one named after "
                           "the terminal status (`finished`, `failed`, `stopped`, `canceled`) with the job view; "
                           "`timeout` (with `retry:`) when the stream reaches RUNNER_SSE_MAX_SECONDS.",
            "responses": {
                "200": {"description": "An event stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                **documented_errors(404, 503),
            },
        },
        ("POST", "/jobs/{job_id}/cancel"): {
            "summary": "Cancel a queued or scheduled job, or stop a running one", "tags": ["jobs"],
            "description": "A `queued`, `scheduled` or `deferred` job is taken off its queue and reads `canceled`. "
                           "A `started` job's worker is told to stop it; the answer waits up to 3 s for it to read "
                           "`stopped` (it may still read `started` if the worker is slow to report). A job that "
                           "has already ended is a 409.",
            "responses": {
                "200": json_response("The job after the cancel.", ref("JobView")),
                **documented_errors(404),
                "409": documented_error(409, "The job has already ended (finished, failed, stopped or canceled), "
                                           "or another cancel or retry of it is in progress.", state_conflict),
                **documented_errors(503),
            },
        },
        ("POST", "/jobs/{job_id}/retry"): {
            "summary": "Requeue a failed, stopped or canceled job", "tags": ["jobs"],
            "description": "Puts the job back on its queue under the same id, with its function's whole retry "
                           "policy again; `attempts` keeps counting. A job Redis has forgotten is enqueued again "
                           "from its stored row (its input checked against the function's current signature).",
            "responses": {
                "202": json_response("The job, queued again.", ref("JobView"), LOCATION),
                "404": documented_error(404, "Unknown job, or its function is no longer registered."),
                "409": documented_error(409, "The job is not failed, stopped or canceled, or another cancel or "
                                           "retry of it is in progress.", state_conflict),
                "422": documented_error(422, "The job's stored input no longer fits its function's signature."),
                "429": documented_error(429, "The function already has `max_queued` jobs waiting."),
                **documented_errors(503),
            },
        },
        ("GET", "/jobs/{job_id}/artifacts/{name}"): {
            "summary": "A file a job wrote", "tags": ["jobs"],
            "description": ARTIFACT_DESCRIPTION,
            "parameters": [query_parameter("inline",
                                           {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no"]},
                                  "`1` serves any artifact for display (`Content-Disposition: inline`), `0` as a "
                                  "download; by default text, CSV, JSON, raster images, audio and video are shown "
                                  "and everything else (HTML, SVG, XML, PDF, unknown types) is downloaded.")],
            "responses": {"200": {"description": "The file, with its media type.", "content": {"*/*": {"schema": {}}},
                                  "headers": _artifact_headers()},
                          **documented_errors(400, 404)},
        },
        ("POST", "/uploads"): {
            "summary": "Upload a file for a function that takes one", "tags": ["uploads"],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}}}},
            "responses": {"201": json_response("Stored.", ref("Upload"),
                                               {"Location": header("The upload's URL.", {"type": "string"})}),
                          **documented_errors(400, 413, 415, 507)},
        },
        ("GET", "/uploads/{upload_id}"): {
            "summary": "What is known of an upload", "tags": ["uploads"],
            "responses": {"200": json_response("The upload.", ref("Upload")), **documented_errors(404)},
        },
        ("GET", "/healthz"): {
            "summary": "Liveness (never needs an API key)", "tags": ["operations"], "security": [],
            "responses": {"200": json_response("Alive.", ref("Health"))},
        },
        ("GET", "/readyz"): {
            "summary": "Readiness: Redis and the database answer, and this process is not saturated",
            "tags": ["operations"],
            "responses": {"200": json_response("Ready.", ref("Readiness")),
                          "503": documented_error(503, "Redis or the database is unavailable, or every wait slot "
                                                  "(RUNNER_WAIT_MAX_PER_PROCESS) or event stream slot "
                                                  "(RUNNER_SSE_MAX_STREAMS) of this process is in use.",
                                                  ("backend_unavailable", "saturated"))},
        },
        ("GET", "/metrics"): {
            "summary": "Prometheus metrics", "tags": ["operations"],
            "responses": {"200": {"description": "Prometheus text format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        },
        ("GET", "/workers"): {
            "summary": "The workers registered in Redis, with their slots (total, busy, free) and loop lag",
            "tags": ["operations"],
            "responses": {"200": json_response("Every worker.", ref("WorkerList")), **documented_errors(503)},
        },
        ("GET", "/queues"): {
            "summary": "Queue depths: queued, started, scheduled, deferred, failed, finished, canceled",
            "tags": ["operations"],
            "responses": {"200": json_response("Every queue.", ref("QueueList")), **documented_errors(503)},
        },
        ("GET", "/scaling"): {
            "summary": "Per queue: jobs queued, running, due within 60 s, the oldest's age, workers, free slots, "
                       "workers wanted",
            "tags": ["operations"],
            "responses": {"200": json_response("Every queue.", ref("ScalingList")), **documented_errors(503)},
        },
        ("POST", "/queues/failed/requeue"): {
            "summary": "Requeue failed jobs (all, or of one queue and/or function)", "tags": ["operations"],
            "requestBody": {"required": False, "content": {"application/json": {"schema": ref("RequeueFilter")}}},
            "responses": {"200": json_response("What was requeued.", ref("RequeueOutcome")),
                          **documented_errors(400, 404, 415, 422, 503)},
        },
        ("GET", "/openapi.json"): {
            "summary": "This document", "tags": ["operations"],
            "responses": {"200": json_response("The OpenAPI 3.1 document.", {"type": "object"})},
        },
        **schedule_operations([parameter for parameter in invocation_parameters(settings)
                               if parameter["name"] == CALLBACK_HEADER]),
    }


def require_api_key(operation: dict[str, Any]) -> None:
    """Add the 401 answer to an operation under the global bearer security (all but `security: []`)."""
    if operation.get("security") != []:
        operation["responses"].setdefault("401", documented_error(401))


def refuse_other_sites(method: str, operation: dict[str, Any]) -> None:
    """Add the 403 answer to a state-changing operation (api.cross_site refuses it from another site)."""
    if method.upper() in STATE_CHANGING_METHODS:
        operation["responses"].setdefault("403", documented_error(403))


def known_operation(method: str, path: str, settings: Settings) -> dict[str, Any] | None:
    """What we say about `method path` (a fresh copy), or None for a route we know nothing of."""
    operation = _operations(settings).get((method, path))
    return None if operation is None else copy.deepcopy(operation)
