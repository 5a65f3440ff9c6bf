"""Every error the runner raises on purpose, in one place.

Hierarchy::

    RunnerError                  base: has an error `code` and a human `message`
    ├── FunctionNotFound         no registered function has that name (404)
    ├── JobNotFound              neither Redis nor the store knows the job id (404)
    ├── UploadNotFound           no stored upload has that id (404; 422 inside an invocation)
    ├── ArtifactNotFound         the job wrote no artifact of that name (404)
    ├── QueueNotFound            no function declares that queue and Redis knows none of that name (404)
    ├── ScheduleNotFound         no schedule has that id (404)
    ├── MalformedRequest         body is not JSON, not an object, or a bad query parameter (400)
    ├── RequestForbidden         refused whoever asks: a state-changing request from another site (403)
    ├── UnsupportedMediaType     body sent with a content type other than JSON (415)
    ├── PayloadTooLarge          body over RUNNER_MAX_PAYLOAD_BYTES (413)
    ├── InsufficientStorage      an upload would pass RUNNER_UPLOADS_MAX_TOTAL_BYTES (507)
    ├── InvalidInput             input fails the function's signature; `details` names fields (422)
    ├── StateConflict            the job is in a state that forbids the operation (409)
    │   └── IdempotencyConflict  an Idempotency-Key was reused for another function or body (409)
    ├── TooManyRequests          the function's queue is full (`max_queued`); retry later (429)
    └── BackendUnavailable       Redis or the database cannot be reached (503)
        ├── NotReplicated        a new job is on the Redis primary, but too few replicas acknowledged it (503)
        ├── TooManyStreams       this web process already serves its limit of event streams (503)
        └── ProcessSaturated     /readyz: this web process's slots for long requests are all taken (503)

    PermanentError               raised by a function: the input can never succeed, do not retry
    JobStopped                   raised inside a job by its worker: `POST /jobs/<id>/cancel` stopped it
    FunctionDefinitionError      a module in functions/ declares a function the runner cannot use
    CallbackDeliveryError        a completion callback could not be delivered (retried unless final)

    ClientError                  base of what the HTTP client (`python -m runner` commands) raises
    ├── ApiError                 the API answered with its JSON error shape (or another non-2xx)
    └── ApiUnreachable           the API could not be reached at all (refused, DNS, timeout)

The API maps `RunnerError` subclasses to HTTP statuses in one handler (`api/errors.py`).
`root_cause` says, in one line, what a driver reported under an error it raised from.
"""

from __future__ import annotations

import re
from typing import Any


class RunnerError(Exception):
    """Base of the errors that the API turns into its JSON error shape."""

    code = "runner_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class FunctionNotFound(RunnerError):
    """Raised when an invocation or lookup names a function that is not registered."""

    code = "function_not_found"


class JobNotFound(RunnerError):
    """Raised when a job id is known neither to Redis nor to the store."""

    code = "job_not_found"


class UploadNotFound(RunnerError):
    """Raised when an upload id names no stored upload."""

    code = "upload_not_found"


class ArtifactNotFound(RunnerError):
    """Raised when a job has no artifact of the requested name."""

    code = "artifact_not_found"


class ScheduleNotFound(RunnerError):
    """Raised when a schedule id names no schedule."""

    code = "schedule_not_found"


class MalformedRequest(RunnerError):
    """Raised when the request body or a query parameter cannot be understood."""

    code = "malformed_request"


class RequestForbidden(RunnerError):
    """Raised when a request is refused whatever key it carries: a browser sent it from another site's page."""

    code = "forbidden"


class UnsupportedMediaType(RunnerError):
    """Raised when a body is sent with a content type other than application/json."""

    code = "unsupported_media_type"


class PayloadTooLarge(RunnerError):
    """Raised when a body is larger than the configured limit."""

    code = "payload_too_large"


class InsufficientStorage(RunnerError):
    """Raised when storing an upload would pass the total size allowed for all stored uploads."""

    code = "insufficient_storage"


class InvalidInput(RunnerError):
    """Raised when input fails a function's signature; `details` lists each bad field."""

    code = "invalid_input"


class StateConflict(RunnerError):
    """Raised when the job's state forbids the requested operation."""

    code = "state_conflict"


class IdempotencyConflict(StateConflict):
    """Raised when an Idempotency-Key already names an invocation of another function or body."""

    code = "idempotency_conflict"


class TooManyRequests(RunnerError):
    """Raised when a function already has `max_queued` jobs waiting; the caller may retry later."""

    code = "too_many_requests"

    def __init__(self, message: str, details: Any = None, retry_after: int = 5) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class BackendUnavailable(RunnerError):
    """Raised when Redis or the database cannot be reached; the caller may retry later."""

    code = "backend_unavailable"

    def __init__(self, message: str, details: Any = None, retry_after: int = 5) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class NotReplicated(BackendUnavailable):
    """Raised when a new job reached the Redis primary but not RUNNER_REDIS_MIN_REPLICAS replicas in time.

    The job may still run (the primary has it) or be lost in a failover: a retry with the same
    Idempotency-Key answers with this job, once replicated, and never makes a second.
    """


class PermanentError(Exception):
    """Raised by a function for input that can never succeed: the job fails without retry."""


class JobStopped(Exception):  # noqa: N818 (shown to users as the error's type)
    """The job was stopped on request while it ran (raised inside it by its worker)."""

    def __init__(self, message: str = "The job was stopped on request.") -> None:
        super().__init__(message)


class FunctionDefinitionError(Exception):
    """Raised at discovery when a function's declaration cannot be used (bad policy, bad types)."""


class CallbackDeliveryError(Exception):
    """Raised by a completion-callback delivery job when the receiver was not reached or refused the POST."""


class QueueNotFound(RunnerError):
    """Raised when an operation names a queue that no function declares and Redis does not know."""

    code = "queue_not_found"


class TooManyStreams(BackendUnavailable):
    """Raised when a web process already holds its limit of open event streams; retry shortly."""

    code = "too_many_streams"


class ProcessSaturated(BackendUnavailable):
    """Raised by /readyz when every wait slot (or every event stream slot) of this web process is taken."""

    code = "saturated"


class ClientError(Exception):
    """Base of the errors the HTTP client raises."""


class ApiError(ClientError):
    """Raised when the API answers with an error status; carries its JSON error fields."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ApiUnreachable(ClientError):
    """Raised when no HTTP answer came back: connection refused, unknown host, or a timeout."""


def root_cause(error: BaseException) -> str:
    """The innermost error `error` was raised from (a driver's own words), as one line."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    # PostgreSQL appends the statement's text ("LINE 2: FROM invocations ... ^"): the reason comes before.
    text = re.sub(r"\s+", " ", str(error).split("\nLINE ")[0]).strip()
    return text or type(error).__name__
