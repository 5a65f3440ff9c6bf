"""The schemas of the OpenAPI document: bodies, headers and the error responses.

Schemas come from the types the views serialize (`JobView`, `UploadInfo`, `WorkerInfo`, ...) so
they cannot drift from the code; where a type is looser than what the API sends (`dict[str, Any]`,
a status that is a plain `str`), the schema is narrowed here, and the unit tests check both
against real responses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic

from api.ops import RequeueFilter
from runner.services.fleet import QueueDepths, RequeueOutcome, WorkerInfo
from runner.services.job_views import JOB_ID_PATTERN, JobView
from runner.services.scaling import QueueLoad
from runner.services.schedules import ScheduleRequest, ScheduleView
from runner.status import STATUS_WORDS
from runner.store.files import UploadInfo

COMPONENT_REF = "#/components/schemas/{model}"
ERROR_DESCRIPTIONS = {
    400: "Malformed request: the body is not a JSON object, or a query parameter or header is invalid.",
    401: "Missing or wrong API key (only when RUNNER_API_KEYS or RUNNER_API_KEYS_FILE is set).",
    403: "A browser sent this state-changing request from another site's page (its `Origin` or "
         "`Sec-Fetch-Site` says so); refused with or without an API key.",
    404: "Unknown function, job, schedule, upload, artifact, queue or route.",
    409: "The job's state forbids the operation.",
    413: "The body is larger than the limit.",
    415: "The body is not of the content type the operation takes.",
    422: "The input fails the schema; `details` names each field.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "Redis or the database is unavailable (or this server serves its limit of event streams).",
    507: "The stored uploads leave no room for this one under RUNNER_UPLOADS_MAX_TOTAL_BYTES.",
}
# The `error` code that some statuses always carry (others depend on what failed).
ERROR_CODES = {401: ("unauthorized",), 403: ("forbidden",), 429: ("too_many_requests",),
               507: ("insufficient_storage",)}


class Error(pydantic.BaseModel):
    """The one error shape of the API."""

    error: str = pydantic.Field(description="A stable, machine-readable code, e.g. `job_not_found`.")
    message: str = pydantic.Field(description="A human sentence.")
    details: Any = pydantic.Field(description="What the code needs to act on the error (fields, limits), or null.")


Limit = Annotated[int, pydantic.Field(ge=1)]


class Function(pydantic.BaseModel):
    """A registered function: its policy, its limits and its input JSON Schema."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str
    description: str
    queue: str
    timeout: int = pydantic.Field(ge=1, description="Seconds an attempt may run.")
    retries: int = pydantic.Field(ge=0, description="Attempts after the first one.")
    backoff: list[int] = pydantic.Field(description="Seconds before each retry.")
    concurrency: Limit | None = pydantic.Field(
        description="At most this many attempts run at once across all workers (null: no limit)."
    )
    concurrency_key: str | None = pydantic.Field(
        description="The input field whose each value gets its own `concurrency` slots (null: one limit for all)."
    )
    max_queued: Limit | None = pydantic.Field(
        description="Invocations beyond this many waiting jobs are refused with 429 (null: no limit)."
    )
    expires: float | None = pydantic.Field(
        gt=0, description="Seconds after acceptance past which a job that has not started is canceled "
                          "(error type `Expired`); `?expires=` overrides it (null: never)."
    )
    input_schema: dict[str, Any] = pydantic.Field(description="JSON Schema of the input, from the signature.")
    invocations_url: str


class FunctionList(pydantic.BaseModel):
    """Every registered function."""

    functions: list[Function]


class JobList(pydantic.BaseModel):
    """A page of the job history, newest first."""

    jobs: list[JobView]
    next: str | None = pydantic.Field(description="The `cursor` of the next page; null on the last page.")


class ScheduleList(pydantic.BaseModel):
    """Every schedule, oldest first."""

    schedules: list[ScheduleView]


class WorkerList(pydantic.BaseModel):
    """Every live worker registered in Redis, with its `slots`: `total` jobs it runs at once (RUNNER_WORKER_SLOTS
    for `async def` and `threads=True` functions; 1 for a worker that does not say), `busy` (in flight now; a
    plain sync job takes them all) and `free`; and `loop_lag_seconds`, the worst lag of its event loop over its
    last heartbeat interval."""

    workers: list[WorkerInfo]


class QueueList(pydantic.BaseModel):
    """Every known queue and its depths."""

    queues: list[QueueDepths]


class ScalingList(pydantic.BaseModel):
    """Every known queue's load, the free slots of its live workers (`free_slots`), and the workers it wants
    (`desired_workers`: queued + running + due within 60 s, capped by the `concurrency` of the queue's functions
    when each has one; one worker per job, or per RUNNER_WORKER_SLOTS jobs when every function of the queue is
    `async def` or `threads=True`)."""

    queues: list[QueueLoad]


class Health(pydantic.BaseModel):
    """The process is alive."""

    status: Literal["ok"]


class Readiness(pydantic.BaseModel):
    """Redis and the database answer, and this process has free slots for waits and event streams."""

    status: Literal["ready"]
    # "redis" and "database": "ok"; "waits" and "streams": "<held> of <limit> in use".
    checks: dict[str, str]


# Component name -> the type whose JSON Schema it is.
COMPONENT_TYPES: dict[str, Any] = {
    "Error": Error,
    "FunctionList": FunctionList,
    "JobList": JobList,
    "Upload": UploadInfo,
    "NewSchedule": ScheduleRequest,
    "Schedule": ScheduleView,
    "ScheduleList": ScheduleList,
    "WorkerList": WorkerList,
    "QueueList": QueueList,
    "ScalingList": ScalingList,
    "RequeueFilter": RequeueFilter,
    "RequeueOutcome": RequeueOutcome,
    "Health": Health,
    "Readiness": Readiness,
}

TIMESTAMP = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
# What `JobView`'s loosely typed fields hold (runner/jobs.py builds them).
JOB_VIEW_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "pattern": JOB_ID_PATTERN.pattern},
    "status": {"type": "string", "enum": sorted(STATUS_WORDS)},
    "progress": {
        "type": "object",
        "properties": {"percent": {"type": "integer", "minimum": 0, "maximum": 100}, "message": {"type": "string"}},
        "required": ["percent", "message"],
        "additionalProperties": False,
        "description": "Reads 100 once the job has finished.",
    },
    "result": {"description": "The function's return value once the job has finished; null before. In a row of "
                          "`GET /jobs`, the first 4,096 characters of its JSON text when it is longer "
                          "(`result_truncated`)."},
    "error": {
        "anyOf": [
            {"type": "object", "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
             "required": ["type", "message"], "additionalProperties": {"type": "string"}},
            {"type": "null"},
        ],
        "description": "The exception's type and message once the job has failed or was stopped, or why the "
                       "runner canceled it (`Expired`, `DependencyFailed`); null otherwise.",
    },
    "attempts": {"type": "integer", "minimum": 0, "description": "Attempts started so far (retries included)."},
    "input": {"description": "The validated input (a JSON object for a runner function). In a row of `GET /jobs`, "
                         "the first 4,096 characters of its JSON text when it is longer (`input_truncated`)."},
    "input_truncated": {"type": "boolean", "description": "In a row of `GET /jobs`: `input` was cut (see it whole "
                                                          "at `GET /jobs/<id>`). Always false elsewhere."},
    "result_truncated": {"type": "boolean", "description": "In a row of `GET /jobs`: `result` was cut (see it "
                                                           "whole at `GET /jobs/<id>`). Always false elsewhere."},
    "artifacts": {
        "type": "array",
        "description": "Files the job wrote; each is served at its `url`.",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "size": {"type": "integer", "minimum": 0},
                           "media_type": {"type": "string"}, "url": {"type": "string", "format": "uri-reference"}},
            "required": ["name", "size", "media_type", "url"],
        },
    },
    "created_at": TIMESTAMP,
    "started_at": TIMESTAMP,
    "ended_at": TIMESTAMP,
    "schedule": {"anyOf": [{"type": "string"}, {"type": "null"}],
                 "description": "The id of the schedule whose tick made the job; null for other jobs."},
    "after": {"type": "array", "items": {"type": "string"},
              "description": "The jobs it waits for (`?after=`), in the order given; empty when none."},
    "waiting_for": {"type": "array", "items": {"type": "string"},
                    "description": "While it is `deferred`: those of `after` that have not finished yet."},
}


def component_schemas() -> dict[str, Any]:
    """The response and request schemas, by component name (nested types get their own component)."""
    components: dict[str, Any] = {}
    for name, kind in COMPONENT_TYPES.items():
        schema = pydantic.TypeAdapter(kind).json_schema(ref_template=COMPONENT_REF)
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    job_view = components["JobView"]
    for field_name, narrowed in JOB_VIEW_PROPERTIES.items():
        job_view["properties"][field_name] = {"title": job_view["properties"][field_name]["title"], **narrowed}
    # GET /jobs/<id> sends these fields, every one of them (those with defaults too), and no other.
    job_view["required"] = list(job_view["properties"])
    job_view["additionalProperties"] = False
    return components


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": COMPONENT_REF.format(model=name)}


def header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """A response header."""
    return {"description": description, "required": required, "schema": schema}


def json_response(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response with a JSON body."""
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER = {"Retry-After": header("Seconds to wait before retrying.", {"type": "integer", "minimum": 0})}
WWW_AUTHENTICATE = {"WWW-Authenticate": header("The scheme to authenticate with (`Bearer`).", {"type": "string"})}
LOCATION = {"Location": header("The job's URL.", {"type": "string", "format": "uri-reference"})}


def documented_error(status: int, description: str | None = None, codes: tuple[str, ...] = ()) -> dict[str, Any]:
    """An error status answered with the Error shape (its `error` one of `codes`, when given)."""
    headers = {**(RETRY_AFTER if status in (429, 503) else {}), **(WWW_AUTHENTICATE if status == 401 else {})}
    codes = codes or ERROR_CODES.get(status, ())
    schema: dict[str, Any] = ref("Error")
    if codes:
        schema = {"allOf": [schema, {"properties": {"error": {"enum": list(codes)}}}]}
    return json_response(description or ERROR_DESCRIPTIONS[status], schema, headers or None)


def documented_errors(*statuses: int) -> dict[str, Any]:
    """`documented_error` of each status, keyed as OpenAPI keys responses."""
    return {str(status): documented_error(status) for status in statuses}


DEFAULT_RESPONSE = json_response("An error, in the Error shape.", ref("Error"))


def query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional query parameter."""
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def header_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional request header."""
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}
