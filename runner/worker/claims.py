"""Taking a job off its queue so that Redis, not only a worker's memory, always holds it.

RQ pops a job id off the queue (BLPOP) and registers it as started a moment later: a worker
killed in between loses the job. A runner worker instead moves the id atomically (LMOVE) into
a claim list of its own, and moves it on to the started registry in the same script call that
registers the execution (`release_claim`, runner.rq_seam.bookkeeping). Recovery puts the claims
of a dead worker back at the front of their queues (`return_claims`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.client import Pipeline
from redis.commands.core import Script
from rq.queue import Queue

from runner.rq_seam.keys import ORIGIN_FIELD, job_key, queue_key
from runner.rq_seam.queues import wake_key
from runner.rq_seam.scripts import RUN_COMMANDS_LUA, encode_commands, registered_script

log = logging.getLogger(__name__)

CLAIM_KEY_PREFIX = "runner:claims:"
# The most jobs one claim takes (short jobs are claimed several at a time: runner.worker.taking).
MAX_CLAIM_BATCH = 16
# Names of the workers that may hold claims: recovery looks here for the claims of dead workers.
CLAIMANTS_KEY = "runner:claimants"

# First runs the commands of the job before (its end, held for this call), then takes up to
# ARGV[1] ids from the head of the first non-empty queue into the claim list, but never more than
# half of what waits there (at least one), so idle peers get their share. Returns the outcome of
# each guard of the commands (runner.rq_seam.scripts), the queue's position, then the ids.
# When jobs remain in that queue, it leaves a wake-up token for another idle worker.
# KEYS: the claim list, the n queues, their n wake-up lists, then the keys of the commands;
# ARGV: n, the most to take, then the commands (runner.rq_seam.scripts).
_CLAIM = RUN_COMMANDS_LUA + """
local n = tonumber(ARGV[1])
local guards = run_commands(3, 2 + 2 * n)
for i = 1, n do
  local waiting = redis.call('LLEN', KEYS[1 + i])
  if waiting > 0 then
    local take = math.min(tonumber(ARGV[2]), math.max(1, math.floor(waiting / 2)))
    local found = {guards, i - 1}
    for _ = 1, take do
      table.insert(found, redis.call('LMOVE', KEYS[1 + i], KEYS[1], 'LEFT', 'RIGHT'))
    end
    if waiting > take then
      redis.call('LPUSH', KEYS[1 + n + i], '1')
      redis.call('LTRIM', KEYS[1 + n + i], 0, 0)
    end
    return found
  end
end
return {guards}
"""

# The hashes of the jobs in KEYS, in order, as one reply: a pipeline of HGETALLs packs each command and
# parses each reply into a dict in Python (16 jobs: 17 -> 9 us of the worker's CPU a job).
_READ_HASHES = """
local found = {}
for i = 1, #KEYS do found[i] = redis.call('HGETALL', KEYS[i]) end
return found
"""


def claim_key(worker_name: str) -> str:
    """The Redis list holding the ids a worker has taken but not yet registered as started."""
    return f"{CLAIM_KEY_PREFIX}{worker_name}"


def register_claimant(connection: redis.Redis | Pipeline, worker_name: str) -> None:
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


class Claimed:
    """What a claim took: the outcome of the guards of the commands sent with it, the queue, the job ids."""

    def __init__(self, reply: Any, queues: Sequence[Queue]) -> None:
        guards, *rest = reply
        self.guards = [bool(held) for held in guards]
        self.queue = queues[int(rest[0])] if rest else queues[0]
        self.job_ids = [_text(raw) for raw in rest[1:]]


def claim(connection: redis.Redis, queues: Sequence[Queue], worker_name: str, most: int = 1,
          before: Pipeline | None = None) -> Claimed:
    """Claim up to `most` jobs from the head of the first non-empty queue, in one round trip.

    The ids move into the worker's claim list, so a job is always on a queue or claimed. The
    commands queued in `before` (whose replies nobody reads) run first, in the same call; the
    pipeline is emptied.
    """
    commands = encode_commands(before)
    try:
        reply = _claim_script(connection)(keys=[*_claim_keys(queues, worker_name), *commands.keys],
                                          args=[len(queues), most, *commands.args])
    finally:
        if before is not None:
            before.reset()
    return Claimed(reply, queues)


def queue_claim(pipeline: Pipeline, connection: redis.Redis, queues: Sequence[Queue], worker_name: str,
                most: int = 1) -> None:
    """Queue what `claim` does in `pipeline` (after a wait, say); read its reply with `Claimed`.

    Its reply is a NoScriptError when Redis has lost the script (a restart): `claim` loads it again.
    """
    keys = _claim_keys(queues, worker_name)
    pipeline.evalsha(_claim_script(connection).sha, len(keys), *keys, len(queues), most)


def read_jobs(connection: redis.Redis, job_ids: Sequence[str]) -> list[dict[bytes, bytes]]:
    """The hashes of claimed jobs, in one round trip (an empty one for a job that is gone)."""
    if not job_ids:
        return []
    hashes = registered_script(connection, _READ_HASHES)(keys=[job_key(job_id) for job_id in job_ids])
    return [_as_dict(flat) for flat in hashes]


def _as_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    fields = iter(flat)
    return dict(zip(fields, fields, strict=True))


def _claim_script(connection: redis.Redis) -> Script:
    return registered_script(connection, _CLAIM, preload=True)  # so that a pipelined EVALSHA finds it (queue_claim)


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
                origin = pipeline.hget(job_key(job_id), ORIGIN_FIELD)
                pipeline.multi()
                pipeline.lrem(key, 1, job_id)
                if origin is not None:
                    # At the front: it was the next job to run when it was claimed.
                    pipeline.lpush(queue_key(_text(origin)), job_id)
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
