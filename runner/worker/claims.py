"""Taking a job off its queue so that Redis, not only a worker's memory, always holds it.

RQ pops a job id off the queue (BLPOP) and registers it as started a moment later: a worker
killed in between loses the job. A runner worker instead moves the id atomically (LMOVE) into
a claim list of its own, and moves it on to the started registry in the same transaction that
registers the execution (see `release_claim`). Recovery puts the claims of a dead worker back
at the front of their queues (`return_claims`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from rq.job import Job
from rq.queue import Queue

from runner.rq_seam.queues import wake_key
from runner.rq_seam.scripts import RUN_COMMANDS_LUA, encode_commands

log = logging.getLogger(__name__)

CLAIM_KEY_PREFIX = "runner:claims:"
# Names of the workers that may hold claims: recovery looks here for the claims of dead workers.
CLAIMANTS_KEY = "runner:claimants"
# The journal of rows written behind (runner.journal.new_rows). A claim reads it for the jobs it takes,
# so that a worker commits a row still waiting there before its first update, without asking.
NEW_ROWS_KEY = "runner:store:new-rows"
# Where a claim's reply carries a job's journaled row, next to its hash fields (no RQ field starts so).
_JOURNALED_ROW_FIELD = b"runner:journaled-row"
# Rows claims found journaled, until the worker's first write of their job takes them (per process).
_journaled_rows: dict[str, bytes] = {}
# A hint, not a record (the journal keeps every row): past this many, older hints are dropped.
_MOST_JOURNALED_ROWS = 10_000


def claim_key(worker_name: str) -> str:
    """The Redis list holding the ids a worker has taken but not yet registered as started."""
    return f"{CLAIM_KEY_PREFIX}{worker_name}"


def register_claimant(connection: redis.Redis, worker_name: str) -> None:
    """Record that this worker may hold claims (done at worker start)."""
    connection.sadd(CLAIMANTS_KEY, worker_name)


def claimants(connection: redis.Redis) -> list[str]:
    """Every worker name that may hold claims."""
    return sorted(_text(name) for name in connection.smembers(CLAIMANTS_KEY))


def forget_claimant(connection: redis.Redis, worker_name: str) -> None:
    """Stop watching a worker whose claims are settled (it exited, or its claims were returned)."""
    if not connection.llen(claim_key(worker_name)):
        connection.srem(CLAIMANTS_KEY, worker_name)


def pending_claim(connection: redis.Redis, worker_name: str) -> str | None:
    """The oldest id this worker claimed and never started (after a lost connection), if any."""
    raw = connection.lindex(claim_key(worker_name), 0)
    return None if raw is None else _text(raw)



# Takes up to ARGV[2] ids from the head of the first non-empty queue into the claim list, but
# never more than half of what waits there (at least one), so idle peers get their share; and
# returns the queue's position, then each id with its job's hash: claims and reads in one
# round trip. When jobs remain in that queue, it leaves a wake-up token for another idle worker.
# KEYS: the claim list, the n queues, their n wake-up lists; ARGV: the job key prefix, the most to
# take, then commands to run first (the end of the job before, see claim_and_read).
_CLAIM_AND_READ = RUN_COMMANDS_LUA + """
run_commands(3)
local n = (#KEYS - 1) / 2
for i = 1, n do
  local waiting = redis.call('LLEN', KEYS[1 + i])
  if waiting > 0 then
    local take = math.min(tonumber(ARGV[2]), math.max(1, math.floor(waiting / 2)))
    local found = {i - 1}
    for _ = 1, take do
      local id = redis.call('LMOVE', KEYS[1 + i], KEYS[1], 'LEFT', 'RIGHT')
      table.insert(found, id)
      local fields = redis.call('HGETALL', ARGV[1] .. id)
      local row = redis.call('HGET', '""" + NEW_ROWS_KEY + """', id)
      if row then
        table.insert(fields, '""" + _JOURNALED_ROW_FIELD.decode() + """')
        table.insert(fields, row)
      end
      table.insert(found, fields)
    end
    if waiting > take then
      redis.call('LPUSH', KEYS[1 + n + i], '1')
      redis.call('LTRIM', KEYS[1 + n + i], 0, 0)
    end
    return found
  end
end
return false
"""


_claim_scripts: WeakKeyDictionary[redis.Redis, Script] = WeakKeyDictionary()


def claim_and_read(
    connection: redis.Redis, queues: Sequence[Queue], worker_name: str, most: int = 1,
    before: Pipeline | None = None,
) -> tuple[Queue, list[tuple[str, dict[bytes, bytes]]]]:
    """Claim up to `most` jobs from the head of the first non-empty queue, each with its hash, in one round trip.

    The ids move into the worker's claim list (in one script with the read, so a job is always
    on a queue or claimed); an empty list when every queue is
    empty. The commands queued in `before` (whose replies nobody reads) run first, in the same
    call; the pipeline is emptied.
    """
    script = _claim_script(connection)
    try:
        found = script(keys=_claim_keys(queues, worker_name),
                       args=[Job.redis_job_namespace_prefix, most, *encode_commands(before)])
    finally:
        if before is not None:
            before.reset()
    return read_claimed(found, queues)


def queue_claim_and_read(pipeline: Pipeline, connection: redis.Redis, queues: Sequence[Queue], worker_name: str,
                         most: int = 1) -> None:
    """Queue what `claim_and_read` does in `pipeline` (after a wait, say); read its reply with `read_claimed`.

    Its reply is a NoScriptError when Redis has lost the script (a restart): claim_and_read loads it again.
    """
    keys = _claim_keys(queues, worker_name)
    pipeline.evalsha(_claim_script(connection).sha, len(keys), *keys, Job.redis_job_namespace_prefix, most)


def read_claimed(found: Any, queues: Sequence[Queue]) -> tuple[Queue, list[tuple[str, dict[bytes, bytes]]]]:
    """The queue and the (id, hash) pairs a claim script returned; the journaled rows it found
    are kept for `take_journaled_rows`."""
    if not found:
        return queues[0], []
    position, *flat = found
    claimed = [(_text(raw_id), dict(zip(fields[::2], fields[1::2], strict=True)))
               for raw_id, fields in zip(flat[::2], flat[1::2], strict=True)]
    for job_id, fields in claimed:
        if (row := fields.pop(_JOURNALED_ROW_FIELD, None)) is not None:
            if len(_journaled_rows) >= _MOST_JOURNALED_ROWS:
                _journaled_rows.clear()
            _journaled_rows[job_id] = row
    return queues[int(position)], claimed


def take_journaled_rows(job_ids: Iterable[str]) -> list[bytes]:
    """The journaled rows this process's claims found for `job_ids` (each taken once)."""
    return [row for job_id in job_ids if (row := _journaled_rows.pop(job_id, None)) is not None]


def _claim_script(connection: redis.Redis) -> Script:
    script = _claim_scripts.get(connection)
    if script is None:
        script = connection.register_script(_CLAIM_AND_READ)
        connection.script_load(_CLAIM_AND_READ)  # so that a pipelined EVALSHA finds it (queue_claim_and_read)
        _claim_scripts[connection] = script
    return script


def _claim_keys(queues: Sequence[Queue], worker_name: str) -> list[str]:
    return [claim_key(worker_name), *[queue.key for queue in queues], *[wake_key(queue.name) for queue in queues]]


def wait_for_wake_up(connection: redis.Redis | Pipeline, queues: Sequence[Queue], seconds: float) -> None:
    """Block until a job is pushed to one of `queues` (or `seconds` pass); claim after this returns.

    Given a pipeline, the wait is queued in it: it blocks when the pipeline executes."""
    connection.blpop([wake_key(queue.name) for queue in queues], timeout=seconds)


def release_claim(pipeline: Pipeline | redis.Redis, worker_name: str, job_id: str) -> None:
    """Drop a claim; queued in the pipeline that registers the job as started, so exactly one holds it."""
    pipeline.lrem(claim_key(worker_name), 1, job_id)


def return_claims(connection: redis.Redis, worker_name: str) -> list[str]:
    """Put every id the worker claimed back at the front of its queue; return those ids.

    Safe when several workers return the same claims at once: each move is a transaction
    that fails if the claim list changed since it was read.
    """
    key = claim_key(worker_name)
    returned: list[str] = []
    while True:
        with connection.pipeline() as pipeline:
            try:
                pipeline.watch(key)  # type: ignore[no-untyped-call]
                raw = pipeline.lindex(key, -1)
                if raw is None:
                    return returned
                job_id = _text(raw)
                origin = pipeline.hget(Job.key_for(job_id), "origin")
                pipeline.multi()
                pipeline.lrem(key, 1, job_id)
                if origin is not None:
                    # At the front: it was the next job to run when it was claimed.
                    pipeline.lpush(f"{Queue.redis_queue_namespace_prefix}{_text(origin)}", job_id)
                pipeline.execute()
            except redis.WatchError:
                continue
        if origin is None:
            log.warning("claimed job %s no longer exists; dropped its claim", job_id)
        else:
            log.warning("job %s went back to the front of its queue: worker %s took it but never started it",
                        job_id, worker_name)
            returned.append(job_id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
