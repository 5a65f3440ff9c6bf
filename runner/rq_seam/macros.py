"""RQ's bookkeeping of a job's start and success as single commands of our script protocol
(runner.rq_seam.scripts).

A start writes the same seven commands for every job (RQ's Execution.create, Job.prepare_for_execution
and the PERSIST of Job.perform, with our fence and dead-after window), a success five (the worker's
counts, the job's status and times, the finished registry, the job's TTL) and the removal of the
execution three, only ids, times and TTLs differing. Queued through redis-py and RQ's objects they
cost the worker more CPU than a no-op job's code: a call each to build, their arguments to encode
and pack. As pseudo-commands (`START`, `SUCCESS`, `FORGET`) the script spells the writes out from
a few keys and values.

Pseudo-commands run in script calls only (runner.rq_seam.scripts.execute_as_script, a claim); a
transaction (MULTI, as recovery's) writes the same with RQ's own calls.

What each writes is pinned against RQ's own calls in tests/unit/test_rq_seam.py (same keys, fields,
scores and TTLs): an RQ upgrade that writes them differently fails there.
"""

from __future__ import annotations

from datetime import datetime

from redis.client import Pipeline
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.utils import current_timestamp, utcformat

from runner.rq_seam.keys import (
    DEAD_AFTER_FIELD,
    FENCE_FIELD,
    WORKER_SUCCESSFUL_FIELD,
    WORKER_WORKING_TIME_FIELD,
    executions_key,
    registry_key,
)

START, SUCCESS, FORGET = "RUNNER-START", "RUNNER-SUCCESS", "RUNNER-FORGET"
# How many leading arguments of each pseudo-command are keys (runner.rq_seam.scripts.KEY_COUNTS).
KEY_COUNTS = {START: 4, SUCCESS: 3, FORGET: 3}
# How long RQ keeps a job's set of executions past an execution's heartbeat TTL (ExecutionRegistry.add).
EXECUTIONS_GRACE_SECONDS = 60

# Lua: `macros[name](k, a)` runs one pseudo-command whose keys start at KEYS[k] and values at ARGV[a].
MACROS_LUA = """
local macros = {}
-- KEYS: the execution's hash, the job's executions, the queue's started registry, the job's hash.
-- ARGV: execution id, its time (epoch seconds), worker name, dead-after seconds, heartbeat TTL,
-- executions' score and TTL, started registry's member and score, fence, the start (ISO 8601).
macros['""" + START + """'] = function(k, a)
  local execution, worker, started = ARGV[a], ARGV[a + 2], ARGV[a + 10]
  redis.call('HSET', KEYS[k], 'id', execution, 'created_at', ARGV[a + 1], 'last_heartbeat', ARGV[a + 1],
             'worker_name', worker, '""" + DEAD_AFTER_FIELD + """', ARGV[a + 3])
  redis.call('EXPIRE', KEYS[k], ARGV[a + 4])
  redis.call('ZADD', KEYS[k + 1], ARGV[a + 5], execution)
  redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 6])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 8], ARGV[a + 7])
  redis.call('HSET', KEYS[k + 3], '""" + FENCE_FIELD + """', ARGV[a + 9], 'last_heartbeat', started,
             'status', '""" + JobStatus.STARTED.value + """', 'started_at', started, 'worker_name', worker)
  redis.call('PERSIST', KEYS[k + 3])
end
-- KEYS: the worker's hash, the job's hash, the queue's finished registry.
-- ARGV: job id, seconds worked, the end and last heartbeat (ISO 8601), the finished registry's score,
-- the result's TTL.
macros['""" + SUCCESS + """'] = function(k, a)
  redis.call('HINCRBY', KEYS[k], '""" + WORKER_SUCCESSFUL_FIELD + """', 1)
  redis.call('HINCRBYFLOAT', KEYS[k], '""" + WORKER_WORKING_TIME_FIELD + """', ARGV[a + 1])
  redis.call('HSET', KEYS[k + 1], 'status', '""" + JobStatus.FINISHED.value + """', 'ended_at', ARGV[a + 2],
             'last_heartbeat', ARGV[a + 3])
  redis.call('ZADD', KEYS[k + 2], ARGV[a + 4], ARGV[a])
  redis.call('EXPIRE', KEYS[k + 1], ARGV[a + 5])
end
-- KEYS: the execution's hash, the queue's started registry, the job's executions.
-- ARGV: the execution in the started registry (job id:execution id), the execution id.
macros['""" + FORGET + """'] = function(k, a)
  redis.call('DEL', KEYS[k])
  redis.call('ZREM', KEYS[k + 1], ARGV[a])
  redis.call('ZREM', KEYS[k + 2], ARGV[a + 1])
end
"""


def queue_start_writes(pipeline: Pipeline, job: Job, execution: Execution, *, fence: int, heartbeat_ttl: int,
                       dead_after: float, started: datetime) -> None:
    """Queue what RQ writes when `job` starts as `execution` (Execution.create, then
    Job.prepare_for_execution at `started`) with our fence, as one `START`; sets the job's fields as
    prepare_for_execution does."""
    at = execution.created_at.timestamp()
    now = current_timestamp()
    worker = execution.worker_name
    job.worker_name = worker
    job.last_heartbeat = job.started_at = started
    job._status = JobStatus.STARTED
    pipeline.command_stack.append(((
        START, execution.key, executions_key(job.id), registry_key("started", job.origin), job.key,
        execution.id, at, worker, dead_after, heartbeat_ttl,
        now + heartbeat_ttl + EXECUTIONS_GRACE_SECONDS, heartbeat_ttl + EXECUTIONS_GRACE_SECONDS,
        execution.composite_key, now + heartbeat_ttl, fence, utcformat(started),
    ), {}))


def queue_success_writes(pipeline: Pipeline, job: Job, worker_key: str, *, result_ttl: int) -> None:
    """Queue what RQ writes when `job` succeeded, its result kept `result_ttl` (> 0) seconds, but for the
    result itself (Result.create): the worker's counts, the job's status and end, the finished registry
    and the job's TTL, as one `SUCCESS`; sets the job's status as Job.set_status does. RQ saves every
    field of the job there, its payload compressed anew: since the start saved them, only these changed."""
    assert job.started_at is not None and job.ended_at is not None and job.last_heartbeat is not None
    job._status = JobStatus.FINISHED
    pipeline.command_stack.append(((
        SUCCESS, worker_key, job.key, registry_key("finished", job.origin),
        job.id, (job.ended_at - job.started_at).total_seconds(), utcformat(job.ended_at),
        utcformat(job.last_heartbeat), current_timestamp() + result_ttl, result_ttl,
    ), {}))


def queue_forget(pipeline: Pipeline, job: Job, execution: Execution) -> None:
    """Queue what RQ's Execution.delete writes (the execution's hash, its places in the started registry
    and in the job's executions), as one `FORGET`."""
    pipeline.command_stack.append(((
        FORGET, execution.key, registry_key("started", job.origin), executions_key(job.id),
        execution.composite_key, execution.id,
    ), {}))
