"""Every error the runner raises on purpose, in one place.

Hierarchy::

    RunnerError                  base: has an error `code` and a human `message`
    ├── FunctionNotFound         no registered function has that name (404)
    ├── JobNotFound              neither Redis nor the store knows the job id (404)
    ├── UploadNotFound           no stored upload has that id (404; 422 inside an invocation)
    ├── ArtifactNotFound         the job wrote no artifact of that name (404)
    ├── MalformedRequest         body is not JSON, not an object, or a bad query parameter (400)
    ├── UnsupportedMediaType     body sent with a content type other than JSON (415)
    ├── PayloadTooLarge          body over RUNNER_MAX_PAYLOAD_BYTES (413)
    ├── InvalidInput             input fails the function's signature; `details` names fields (422)
    ├── StateConflict            the job is in a state that forbids the operation (409)
    └── BackendUnavailable       Redis or the database cannot be reached (503)

    PermanentError               raised by a function: the input can never succeed, do not retry
    FunctionDefinitionError      a module in functions/ declares a function the runner cannot use

The API maps `RunnerError` subclasses to HTTP statuses in one handler (`api/errors.py`).
"""

from __future__ import annotations

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


class MalformedRequest(RunnerError):
    """Raised when the request body or a query parameter cannot be understood."""

    code = "malformed_request"


class UnsupportedMediaType(RunnerError):
    """Raised when a body is sent with a content type other than application/json."""

    code = "unsupported_media_type"


class PayloadTooLarge(RunnerError):
    """Raised when a body is larger than the configured limit."""

    code = "payload_too_large"


class InvalidInput(RunnerError):
    """Raised when input fails a function's signature; `details` lists each bad field."""

    code = "invalid_input"


class StateConflict(RunnerError):
    """Raised when the job's state forbids the requested operation."""

    code = "state_conflict"


class BackendUnavailable(RunnerError):
    """Raised when Redis or the database cannot be reached; the caller may retry later."""

    code = "backend_unavailable"

    def __init__(self, message: str, details: Any = None, retry_after: int = 5) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Raised by a function for input that can never succeed: the job fails without retry."""


class FunctionDefinitionError(Exception):
    """Raised at discovery when a function's declaration cannot be used (bad policy, bad types)."""
