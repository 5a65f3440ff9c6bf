"""Where RQ keeps things in Redis, and the fields of its hashes that the runner reads or writes.

Taken from RQ's own class attributes where it has them, so a change of RQ's layout shows up in
the contract tests (tests/unit/test_rq_seam.py) rather than as keys nobody reads.
"""

from __future__ import annotations

from rq.executions import Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

JOB_KEY_PREFIX: str = Job.redis_job_namespace_prefix
QUEUE_KEY_PREFIX: str = Queue.redis_queue_namespace_prefix
# The set of every queue's key.
QUEUES_KEY: str = Queue.redis_queues_keys
WORKER_KEY_PREFIX: str = Worker.redis_worker_namespace_prefix
# The set of every worker's key, and the per-queue sets.
WORKERS_KEY: str = REDIS_WORKER_KEYS
# RQ's registries of a queue, by the status word of the jobs they hold.
REGISTRY_KEY_TEMPLATES: dict[str, str] = {
    "started": StartedJobRegistry.key_template,
    "scheduled": ScheduledJobRegistry.key_template,
    "deferred": DeferredJobRegistry.key_template,
    "finished": FinishedJobRegistry.key_template,
    "failed": FailedJobRegistry.key_template,
    "canceled": CanceledJobRegistry.key_template,
}

# Fields of a job's hash.
STATUS_FIELD = "status"
META_FIELD = "meta"
ORIGIN_FIELD = "origin"
ENQUEUED_AT_FIELD = "enqueued_at"
# Ours, next to RQ's: the number of executions started (runner.rq_seam.bookkeeping's fence).
FENCE_FIELD = "runner_fence"
# Ours, in a worker's hash and in each execution's: how long it may stay silent (runner.worker.liveness).
DEAD_AFTER_FIELD = "runner_dead_after"
# Fields of a worker's hash.
WORKER_QUEUES_FIELD = "queues"
WORKER_DEATH_FIELD = "death"
WORKER_HEARTBEAT_FIELD = "last_heartbeat"
WORKER_STATE_FIELD = "state"
WORKER_CURRENT_JOB_FIELD = "current_job"
WORKER_BIRTH_FIELD = "birth"
WORKER_HOSTNAME_FIELD = "hostname"
WORKER_PID_FIELD = "pid"
WORKER_SUCCESSFUL_FIELD = "successful_job_count"
WORKER_FAILED_FIELD = "failed_job_count"
WORKER_WORKING_TIME_FIELD = "total_working_time"
# Ours, in a worker's hash: how many jobs it runs at once and how many it runs now (RUNNER_WORKER_SLOTS),
# the worst event-loop lag of its last heartbeat interval (seconds) and how many times a job blocked its loop.
WORKER_SLOTS_FIELD = "slots"
WORKER_SLOTS_BUSY_FIELD = "slots_busy"
WORKER_LOOP_LAG_FIELD = "loop_lag"
WORKER_LOOP_BLOCKED_FIELD = "loop_blocked"
# A field of an execution's hash.
EXECUTION_WORKER_FIELD = "worker_name"
EXECUTION_HEARTBEAT_FIELD = "last_heartbeat"


def job_key(job_id: str) -> str:
    """The hash of a job."""
    return f"{JOB_KEY_PREFIX}{job_id}"


def queue_key(name: str) -> str:
    """The list of a queue's waiting job ids."""
    return f"{QUEUE_KEY_PREFIX}{name}"


def registry_key(status: str, queue: str) -> str:
    """The sorted set of one of a queue's registries (`status` as in REGISTRY_KEY_TEMPLATES)."""
    return REGISTRY_KEY_TEMPLATES[status].format(queue)


def worker_key(name: str) -> str:
    """The hash of a worker."""
    return f"{WORKER_KEY_PREFIX}{name}"


def workers_by_queue_key(queue: str) -> str:
    """The set of the keys of the workers serving a queue."""
    return WORKERS_BY_QUEUE_KEY % queue


def execution_key(job_id: str, execution_id: str) -> str:
    """The hash RQ keeps for one execution of a job."""
    return str(Execution(execution_id, job_id, connection=None).key)  # type: ignore[arg-type]  # never connects


def executions_key(job_id: str) -> str:
    """The sorted set of a job's executions."""
    return str(ExecutionRegistry.key_template.format(job_id))
