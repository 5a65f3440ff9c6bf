"""RQ's job dependencies (`depends_on`), as the runner uses them for `?after=`.

A job that waits for others is saved as RQ saves one (Queue.setup_dependencies): status
`deferred`, its parents' ids in its hash (`dependency_ids`), a member of its queue's
DeferredJobRegistry and of each parent's dependents set. RQ's worker would enqueue it when its
last parent finishes, and leaves it deferred for ever when one fails; runner workers settle it
instead (runner.services.dependencies): queued once every parent finished, canceled when one did not.
"""

from __future__ import annotations

from redis.client import Pipeline
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import DeferredJobRegistry


def dependency_ids(job: Job) -> list[str]:
    """The ids of the jobs `job` waits for, as its hash lists them (no Redis read)."""
    return list(job._dependency_ids)


def queue_deferred(pipeline: Pipeline, queue: Queue, job: Job) -> None:
    """Queue what RQ writes for a new job that waits for its parents (built with `depends_on`)."""
    job.origin = queue.name
    pipeline.sadd(queue.redis_queues_keys, queue.key)
    job.set_status(JobStatus.DEFERRED, pipeline=pipeline)
    job.register_dependency(pipeline=pipeline)
    job.save(pipeline=pipeline)


def queue_forget_dependencies(pipeline: Pipeline, job: Job) -> None:
    """Queue the removal of RQ's records of what `job` waits for (its hash keeps the ids): it is
    settled, released to its queue or canceled."""
    DeferredJobRegistry(job.origin, job.connection, serializer=job.serializer).remove(job, pipeline=pipeline)
    for parent_id in dependency_ids(job):
        pipeline.srem(Job.dependents_key_for(parent_id), job.id)
    pipeline.delete(job.dependencies_key)
