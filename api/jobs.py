"""Jobs: one job's live view, and the history from the store."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from api.artifacts import artifact_response, read_inline
from api.payload import read_int
from api.state import runner_state
from runner.config import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from runner.errors import MalformedRequest
from runner.journal.reads import read_history
from runner.redis_connection import REDIS_ERRORS
from runner.services.backends import Backends
from runner.services.control import cancel_job, retry_job
from runner.services.job_views import JOB_ID_PATTERN, get_job_view, view_from_listing
from runner.status import STATUS_WORDS

blueprint = Blueprint("jobs", __name__)


def job_location(job_id: str) -> str:
    """The path of GET /jobs/<id> (a job id needs no quoting; url_for costs a URL adapter per call)."""
    return f"{request.script_root}/jobs/{job_id}"


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    return get_job_view(job_id, runner_state().backends).to_dict()


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> dict[str, Any]:
    return cancel_job(job_id, runner_state().backends).to_dict()


@blueprint.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    state = runner_state()
    view = retry_job(job_id, state.backends, state.registry)
    return view.to_dict(), 202, {"Location": job_location(view.id)}


def _listed_artifacts(job_id: str, backends: Backends) -> list[Any]:
    """The artifact entries a job lists, read from its meta in Redis without its result or input."""
    if JOB_ID_PATTERN.match(job_id):
        try:
            job = Job.fetch(job_id, connection=backends.connection, serializer=JSONSerializer)
        except (NoSuchJobError, DeserializationError, *REDIS_ERRORS):
            pass  # Redis does not hold it (or is away): the SQL row decides, with GET /jobs/<id>'s 404 and 503
        else:
            stored = job.get_meta(refresh=False).get("artifacts")
            return stored if isinstance(stored, list) else []
    return get_job_view(job_id, backends).artifacts


@blueprint.get("/jobs/<job_id>/artifacts/<name>")
def get_artifact(job_id: str, name: str) -> Response:
    inline = read_inline(request)
    backends = runner_state().backends
    listed = {entry.get("name"): entry for entry in _listed_artifacts(job_id, backends) if isinstance(entry, dict)}
    path = backends.artifacts.path(job_id, name)
    media_type = listed.get(name, {}).get("media_type") or "application/octet-stream"
    return artifact_response(path, name, str(media_type), inline)


@blueprint.get("/jobs")
def list_jobs() -> dict[str, Any]:
    status = request.args.get("status") or None
    if status is not None and status not in STATUS_WORDS:
        raise MalformedRequest(
            f"Unknown status {status!r}.", details={"status": status, "allowed": sorted(STATUS_WORDS)}
        )
    backends = runner_state().backends
    records, next_cursor = read_history(backends.connection, backends.store).list(
        function=request.args.get("function") or None,
        status=status,
        schedule=request.args.get("schedule") or None,
        limit=read_int(request, "limit", default=DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE),
        cursor=request.args.get("cursor") or None,
    )
    return {"jobs": [view_from_listing(record).to_dict() for record in records], "next": next_cursor}
