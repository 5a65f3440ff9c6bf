"""What the OpenAPI document says of `POST /functions/<name>/invocations`: its parameters, its
answers, and the completion callback it may ask for."""

from __future__ import annotations

from typing import Any

from api.functions import REPLAYED_HEADER, WAIT_SKIPPED_HEADER
from api.openapi_schemas import (
    LOCATION,
    documented_error,
    documented_errors,
    header,
    header_parameter,
    json_response,
    query_parameter,
    ref,
)
from runner.config import Settings
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
from runner.services.dependencies import MAX_AFTER
from runner.services.idempotency import HEADER as IDEMPOTENCY_HEADER
from runner.services.invocation import MAX_SCHEDULE_AHEAD
from runner.services.job_views import JOB_ID_PATTERN

# RFC 3339 with a zone, as `?at=` takes it (Python's `datetime.fromisoformat`).
AT_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
# 1 to 255 printable ASCII characters (HTTP drops spaces at either end of a header value).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
CALLBACK_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[\x21-\x7e]+$"
AFTER_PATTERN = rf"^{JOB_ID_PATTERN.pattern[1:-1]}(,{JOB_ID_PATTERN.pattern[1:-1]}){{0,{MAX_AFTER - 1}}}$"

INVOCATION_DESCRIPTION = (
    "Validates the body against the function's input schema and enqueues a job (nothing invalid is "
    "enqueued); answers 202 with the job and its `Location`.\n\n"
    "- `?wait=S` waits up to S seconds for the job to end: 200 when it did, 202 otherwise.\n"
    "- `?delay=S` or `?at=<date-time>` schedules the job (status `scheduled`); an `at` already passed runs now.\n"
    "- `?after=<id>,<id>` defers the job (status `deferred`) until those jobs have finished; one that fails, "
    "is canceled or stopped cancels it (error type `DependencyFailed`); unknown ids are a 422.\n"
    "- `?expires=S`: a job not started S seconds after acceptance is canceled (error type `Expired`).\n"
    f"- `{IDEMPOTENCY_HEADER}`: the same key, function and input within RUNNER_IDEMPOTENCY_TTL seconds answer "
    f"with the first job (`{REPLAYED_HEADER}: true`) instead of enqueueing another; the same key with another "
    "function or input is a 409 `idempotency_conflict`.\n"
    f"- `{CALLBACK_HEADER}`: when the job finishes, fails, is stopped or canceled by the runner, its final view "
    "is POSTed there "
    "(signed with RUNNER_CALLBACK_SECRET in `X-Runner-Signature` when set).\n"
    "- A function with `max_queued` refuses invocations beyond that many waiting jobs with 429."
)


def invocation_parameters(settings: Settings) -> list[dict[str, Any]]:
    """The query and header parameters every `POST /functions/<name>/invocations` takes."""
    days = MAX_SCHEDULE_AHEAD.days
    most_seconds = MAX_SCHEDULE_AHEAD.total_seconds()
    return [
        query_parameter("wait", {"type": "number", "minimum": 0, "maximum": settings.max_wait_seconds},
               f"Seconds to wait for the job to end (200 when it did); more than {settings.max_wait_seconds:g} "
               "(RUNNER_MAX_WAIT_SECONDS) waits that long. Beyond the waits a process or a client may have "
               f"under way, the answer is at once (`{WAIT_SKIPPED_HEADER}`)."),
        query_parameter("delay", {"type": "number", "exclusiveMinimum": 0, "maximum": most_seconds},
                        f"Run the job this many seconds from now (at most {days} days); not with `at`."),
        query_parameter("at", {"type": "string", "format": "date-time", "pattern": AT_PATTERN},
               f"Run the job at this RFC 3339 time with a zone (`…T09:30:00Z`, `…T09:30:00+02:00`), at most {days} "
               "days ahead; a time already passed runs the job now. Not with `delay`."),
        query_parameter("after", {"type": "string", "pattern": AFTER_PATTERN},
               f"Ids of the jobs to wait for, separated by commas (at most {MAX_AFTER}); not with `delay` or `at`."),
        query_parameter("expires", {"type": "number", "exclusiveMinimum": 0, "maximum": most_seconds},
                        "Cancel the job (`Expired`) if not started this many seconds after acceptance "
                        f"(at most {days} days)."),
        header_parameter(IDEMPOTENCY_HEADER,
                {"type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
                "Deduplicates retries of one invocation: 1 to 255 printable ASCII characters."),
        header_parameter(CALLBACK_HEADER,
                {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH, "pattern": CALLBACK_URL_PATTERN},
                "An http(s) URL that gets a POST of the job's final view when it ends; its host must resolve to "
                "public addresses only (unless RUNNER_CALLBACK_ALLOW_PRIVATE is on), or the invocation is a 422."),
    ]


def invocation_headers() -> dict[str, Any]:
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
                             ref("JobView"), invocation_headers()),
        "200": json_response("The job ended within `wait`.", ref("JobView"), invocation_headers()),
        **documented_errors(400, 401, 404),
        "409": documented_error(409, f"The {IDEMPOTENCY_HEADER} was used for another function or input (or a "
                                   "request with it is still being processed).", ("idempotency_conflict",)),
        **documented_errors(413, 415),
        "422": documented_error(422, f"The input fails the schema (`details` names each field), the "
                                   f"{CALLBACK_HEADER} is refused, or `after` names an unknown job."),
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
            header_parameter(JOB_ID_HEADER, {"type": "string"}, "The job's id."),
            header_parameter(EVENT_HEADER, {"type": "string", "enum": sorted(CALLBACK_EVENTS)}, "How the job ended."),
            header_parameter(SIGNATURE_HEADER, {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
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
