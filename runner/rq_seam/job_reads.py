"""Reading RQ jobs for views: a job with its latest result in one round trip, its status as text,
the fields a live stream watches."""

from __future__ import annotations

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from runner.rq_seam.keys import META_FIELD, STATUS_FIELD, job_key


def job_status(job: Job) -> str:
    """The status word RQ keeps for `job`, as text."""
    status = job.get_status(refresh=False)
    return status.value if isinstance(status, JobStatus) else str(status)


def fetch_with_latest_result(job_id: str, connection: redis.Redis, *, wait_on: str | None = None,
                             wait_seconds: float = 0.0) -> Job:
    """The RQ job and its latest result in one round trip (Job.fetch, then return_value, take two);
    with `wait_on`, read once a token is in that list or `wait_seconds` have passed."""
    with connection.pipeline(transaction=False) as pipeline:
        if wait_on is not None and wait_seconds:
            # A rotation of the one-token list, not a pop: the token stays for anyone else waiting.
            # (Redis takes fractional seconds, whatever the stub says.)
            pipeline.blmove(wait_on, wait_on, wait_seconds, "RIGHT", "LEFT")  # type: ignore[arg-type]
        pipeline.hgetall(job_key(job_id))
        pipeline.xrevrange(Result.get_key(job_id), "+", "-", count=1)
        replies = pipeline.execute()
    raw, latest = replies[-2], replies[-1]
    if not raw:
        raise NoSuchJobError(f"No such job: {job_id}")
    job = Job(job_id, connection=connection, serializer=JSONSerializer)
    job.restore(raw)
    if latest:
        result_id, payload = latest[0]
        # What Job.latest_result() would read in a round trip of its own, kept where return_value() looks.
        job._cached_result = Result.restore(job_id, result_id.decode(), payload, connection=connection,
                                            serializer=JSONSerializer)
    return job


def watched_fields(connection: redis.Redis, job_id: str) -> tuple[bytes | str | None, bytes | str | None]:
    """A job's raw status and meta (both None when Redis does not hold it): what a live stream compares."""
    status, meta = connection.hmget(job_key(job_id), [STATUS_FIELD, META_FIELD])
    return status, meta
