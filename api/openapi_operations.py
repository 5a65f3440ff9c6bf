"""What the OpenAPI document says about each route we know: summaries, parameters and statuses.

The bodies' schemas live in `api.openapi_schemas`; this table adds what a type cannot say:
what an operation does, its query and header parameters, and which statuses it answers with.
"""

from __future__ import annotations

import copy
from typing import Any

from api.artifacts import CONTENT_SECURITY_POLICY
from api.cross_site import STATE_CHANGING_METHODS
from api.functions import REPLAYED_HEADER, WAIT_SKIPPED_HEADER
from api.openapi_schemas import (
    LOCATION,
    documented_error,
    documented_errors,
    header,
    json_response,
    ref,
)
from runner.config import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Settings
from runner.services.callback_target import MAX_URL_LENGTH
from runner.services.callbacks import (
    CALLBACK_EVENTS,
    DELIVERY_BACKOFF,
    DELIVERY_TIMEOUT_SECONDS,
    EVENT_HEADER,
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
)
from runner.services.callbacks import HEADER as CALLBACK_HEADER
from runner.services.idempotency import HEADER as IDEMPOTENCY_HEADER
from runner.services.invocation import MAX_SCHEDULE_AHEAD
from runner.status import STATUS_WORDS

# RFC 3339 with a zone, as `?at=` takes it (Python's `datetime.fromisoformat`).
AT_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
# 1 to 255 printable ASCII characters (HTTP drops spaces at either end of a header value).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
CALLBACK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[\x21-\x7e]+$"

INVOCATION_DESCRIPTION = (
    "Validates the body against the function's input schema and enqueues a job (nothing invalid is "
    "enqueued); answers 202 with the job and its `Location`.\n\n"
    "- `?wait=S` waits up to S seconds for the job to end: 200 when it did, 202 otherwise.\n"
    "- `?delay=S` or `?at=<date-time>` schedules the job (status `scheduled`); an `at` already passed runs now.\n"
    f"- `{IDEMPOTENCY_HEADER}`: the same key, function and input within RUNNER_IDEMPOTENCY_TTL seconds answer "
    f"with the first job (`{REPLAYED_HEADER}: true`) instead of enqueueing another; the same key with another "
    "function or input is a 409 `idempotency_conflict`.\n"
    f"- `{CALLBACK_HEADER}`: when the job finishes, fails or is stopped, its final view is POSTed there "
    "(signed with RUNNER_CALLBACK_SECRET in `X-Runner-Signature` when set).\n"
    "- A function with `max_queued` refuses invocations beyond that many waiting jobs with 429."
)


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def invocation_parameters(settings: Settings) -> list[dict[str, Any]]:
    """The query and header parameters every `POST /functions/<name>/invocations` takes."""
    days = MAX_SCHEDULE_AHEAD.days
    return [
        _query("wait", {"type": "number", "minimum": 0, "maximum": settings.max_wait_seconds},
               f"Seconds to wait for the job to end (200 when it did); more than {settings.max_wait_seconds:g} "
               "(RUNNER_MAX_WAIT_SECONDS) waits that long. Beyond the waits a process or a client may have "
               f"under way, the answer is at once (`{WAIT_SKIPPED_HEADER}`)."),
        _query("delay", {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SCHEDULE_AHEAD.total_seconds()},
               f"Run the job this many seconds from now (at most {days} days); not with `at`."),
        _query("at", {"type": "string", "format": "date-time", "pattern": AT_PATTERN},
               f"Run the job at this RFC 3339 time with a zone (`…T09:30:00Z`, `…T09:30:00+02:00`), at most {days} "
               "days ahead; a time already passed runs the job now. Not with `delay`."),
        _header(IDEMPOTENCY_HEADER,
                {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
                "Deduplicates retries of one invocation: 1 to 255 printable ASCII characters."),
        _header(CALLBACK_HEADER,
                {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH, "pattern": CALLBACK_URL_PATTERN},
                "An http(s) URL that gets a POST of the job's final view when it ends; its host must resolve to "
                "public addresses only (unless RUNNER_CALLBACK_ALLOW_PRIVATE is on), or the invocation is a 422."),
    ]


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


def _invocation_headers() -> dict[str, Any]:
    replayed = header(f"`true` when the {IDEMPOTENCY_HEADER} named an earlier invocation: this is its job.",
                      {"type": "string", "enum": ["true"]}, required=False)
    skipped = header("Set when `wait` was not honoured: this process (`process-limit`, "
                     "RUNNER_WAIT_MAX_PER_PROCESS) or this client (`client-limit`, RUNNER_WAIT_MAX_PER_CLIENT) "
                     "already has its waits under way; the job view is as it is now.",
                     {"type": "string", "enum": ["process-limit", "client-limit"]}, required=False)
    return {**LOCATION, REPLAYED_HEADER: replayed, WAIT_SKIPPED_HEADER: skipped}


def invocation_responses() -> dict[str, Any]:
    """What `POST /functions/<name>/invocations` answers."""
    return {
        "202": json_response("Accepted: the job is queued or scheduled (or, with `wait`, has not ended yet).",
                             ref("JobView"), _invocation_headers()),
        "200": json_response("The job ended within `wait`.", ref("JobView"), _invocation_headers()),
        **documented_errors(400, 401, 404),
        "409": documented_error(409, f"The {IDEMPOTENCY_HEADER} was used for another function or input (or a "
                                   "request with it is still being processed).", ("idempotency_conflict",)),
        **documented_errors(413, 415),
        "422": documented_error(422, f"The input fails the schema (`details` names each field), or the "
                                   f"{CALLBACK_HEADER} is refused."),
        "429": documented_error(429, "The function already has `max_queued` jobs waiting; retry after "
                                   "`Retry-After` seconds."),
        **documented_errors(503),
    }


def completion_callback() -> dict[str, Any]:
    """The POST a job's `X-Callback-Url` receives when the job ends (an OpenAPI callback)."""
    retries = ", ".join(str(seconds) for seconds in DELIVERY_BACKOFF)
    return {"completion": {f"{{$request.header.{CALLBACK_HEADER}}}": {"post": {
        "summary": "The job's final view, when it finishes, fails or is stopped",
        "parameters": [
            _header(JOB_ID_HEADER, {"type": "string"}, "The job's id."),
            _header(EVENT_HEADER, {"type": "string", "enum": sorted(CALLBACK_EVENTS)}, "How the job ended."),
            _header(SIGNATURE_HEADER, {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
                    "HMAC-SHA256 of the exact body with RUNNER_CALLBACK_SECRET (only when that is set)."),
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref("JobView")}}},
        "responses": {
            "2XX": {"description": "Delivered."},
            "default": {"description": f"A 429, a 5xx or no answer (no status line and headers within "
                                       f"{DELIVERY_TIMEOUT_SECONDS} s of the delivery's start, however slowly "
                                       f"they trickle) is retried after {retries} s; any other status is final."},
        },
    }}}}


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
                _query("function", {"type": "string"}, "Only jobs of this function."),
                _query("status", {"type": "string", "enum": sorted(STATUS_WORDS)}, "Only jobs in this status."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                                 "default": DEFAULT_PAGE_SIZE}, "Page size."),
                _query("cursor", {"type": "string"}, "`next` of the previous page."),
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
            "parameters": [_query("inline", {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no"]},
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
            "summary": "The workers registered in Redis", "tags": ["operations"],
            "responses": {"200": json_response("Every worker.", ref("WorkerList")), **documented_errors(503)},
        },
        ("GET", "/queues"): {
            "summary": "Queue depths: queued, started, scheduled, deferred, failed, finished, canceled",
            "tags": ["operations"],
            "responses": {"200": json_response("Every queue.", ref("QueueList")), **documented_errors(503)},
        },
        ("GET", "/scaling"): {
            "summary": "Per queue: jobs queued, running, due within 60 s, the oldest's age, workers, workers wanted",
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
