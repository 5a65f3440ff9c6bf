"""Back-pressure (`max_queued`) and concurrency (`concurrency`) limits per function, kept in Redis.

Waiting jobs of a function with `max_queued` are members of a sorted set (score: when they
joined); the API adds a job there before it enqueues it, atomically refusing the job when the
set is full. An attempt takes its job out when it starts to run; a retried job comes back in
(even past the limit: it was accepted already), and an ended one leaves for good.

Running jobs of a function with `concurrency` hold a slot: a member of another sorted set whose
score is the moment the slot expires by itself (the job's timeout plus a grace period), so a
worker that dies without releasing its slot cannot block the function for ever. A job that finds
no free slot is put back (scheduled `DEFER_SECONDS` later) without counting an attempt.

With a `concurrency_key`, each value of that input field (a tenant, say) has a set of its own,
so one value's flood of jobs leaves the others' slots free: its jobs wait as above, the others
run. The API refuses an invocation without the field (422, runner.authoring.spec).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline
from rq import Retry
from rq.job import Job

from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.errors import TooManyRequests
from runner.rq_seam.keys import STATUS_FIELD, job_key
from runner.services.lifecycle import JobEvent

log = logging.getLogger(__name__)

WAITING_KEY = "runner:limits:waiting:{function}"
RUNNING_KEY = "runner:limits:running:{function}"
# The running jobs of one value of a function's `concurrency_key` field.
RUNNING_PER_KEY = RUNNING_KEY + ":key:{value}"
# Functions whose waiting jobs are counted, so a retried job is counted again.
TRACKED_KEY = "runner:limits:tracked"
# A job without a free slot tries again this much later (RQ's scheduler looks every second).
DEFER_SECONDS = 1
# Deferrals are RQ retries of their own kind, never counted as attempts; this only stops a
# job from waiting for ever if a slot were never freed.
MAX_DEFERRALS = 1_000_000
# A slot outlives its job's timeout by this much before it frees itself (RQ kills a work horse
# at most 60 s after its timeout).
SLOT_GRACE_SECONDS = 90
# Members this recent may belong to an invocation whose job hash is being written right now.
PRUNE_MIN_AGE_SECONDS = 10.0
# A waiting member whose job is in one of these states (or gone) no longer waits.
NOT_WAITING_STATUSES = frozenset({b"finished", b"failed", b"canceled", b"stopped"})
RETRY_AFTER_SECONDS = 5
WAITING_FOR_SLOT = "waiting for a free slot"
# A finished attempt returned normally, so run_invocation already freed its slot and waiting
# place: only attempts that ended abnormally (in the worker's parent, or by recovery) need this.
ENDED_EVENTS = frozenset({"failed", "stopped", "canceled"})


def waiting_key(function: str) -> str:
    """The sorted set of a function's waiting jobs."""
    return WAITING_KEY.format(function=function)


def running_key(function: str, key: str | None = None) -> str:
    """The sorted set of a function's held concurrency slots (of one value of its `concurrency_key`)."""
    if key is None:
        return RUNNING_KEY.format(function=function)
    return RUNNING_PER_KEY.format(function=function, value=key)


def _add_if_room(connection: redis.Redis, key: str, member: str, limit: int, score: float,
                 live_from: float = float("-inf")) -> bool:
    """Add `member` unless `limit` members (scored from `live_from` on) are there; atomic (WATCH/MULTI)."""
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                present = pipe.zscore(key, member) is not None
                live = int(pipe.zcount(key, live_from, "+inf"))
                room = present or live < limit
                pipe.multi()
                if live_from != float("-inf"):
                    pipe.zremrangebyscore(key, "-inf", f"({live_from}")
                if room:
                    pipe.zadd(key, {member: score})
                pipe.execute()
                return room
            except redis.WatchError:
                continue  # another process changed the set between our read and write: read again


def _members(raw: Any) -> list[bytes]:
    return [item if isinstance(item, bytes) else str(item).encode() for item in raw]


def _prune(connection: redis.Redis, key: str, members: Iterable[bytes],
           is_stale: Callable[[bytes | None], bool]) -> int:
    """Remove the members whose job status `is_stale` says no longer belongs in `key`."""
    candidates = list(members)
    if not candidates:
        return 0
    with connection.pipeline(transaction=False) as pipe:
        for member in candidates:
            pipe.hget(job_key(member.decode()), STATUS_FIELD)
        statuses = pipe.execute()
    stale = [member for member, status in zip(candidates, statuses, strict=True) if is_stale(status)]
    if stale:
        connection.zrem(key, *stale)
        log.info("pruned %d stale entries from %s", len(stale), key)
    return len(stale)


def reserve_waiting_place(connection: redis.Redis, spec: FunctionSpec, job_id: str) -> None:
    """Count `job_id` as waiting; TooManyRequests when `max_queued` jobs of the function already wait."""
    if spec.max_queued is None:
        return
    key = waiting_key(spec.name)
    now = time.time()
    if not _add_if_room(connection, key, job_id, spec.max_queued, now):
        # Entries of jobs that vanished without an event (deleted from the dashboard, say) go first.
        old = _members(connection.zrangebyscore(key, "-inf", now - PRUNE_MIN_AGE_SECONDS))
        pruned = _prune(connection, key, old, lambda status: status is None or status in NOT_WAITING_STATUSES)
        if not pruned or not _add_if_room(connection, key, job_id, spec.max_queued, now):
            raise TooManyRequests(
                f"{spec.name!r} already has {spec.max_queued} jobs waiting; try again later.",
                details={"function": spec.name, "max_queued": spec.max_queued},
                retry_after=RETRY_AFTER_SECONDS,
            )
    connection.hset(TRACKED_KEY, spec.name, spec.max_queued)


def release_waiting_place(connection: redis.Redis, function: str, job_id: str) -> None:
    """Stop counting `job_id` as waiting (it started, ended, was canceled or never got enqueued)."""
    connection.zrem(waiting_key(function), job_id)


def acquire_slot(connection: redis.Redis, spec: FunctionSpec, job_id: str, limit_key: str | None = None) -> bool:
    """Take one of the function's `concurrency` slots (of `limit_key`'s, its `concurrency_key` value)
    for `job_id` (True), or find none free (False)."""
    if spec.concurrency is None:
        return True
    key = running_key(spec.name, limit_key)
    now = time.time()
    expires = now + spec.timeout + SLOT_GRACE_SECONDS
    if _add_if_room(connection, key, job_id, spec.concurrency, expires, live_from=now):
        return True
    # A holder that is no longer running (its worker died and RQ moved the job on) frees its slot.
    holders = _members(connection.zrange(key, 0, -1))
    if not _prune(connection, key, [h for h in holders if h.decode() != job_id],
                  lambda status: status != b"started"):
        return False
    return _add_if_room(connection, key, job_id, spec.concurrency, expires, live_from=now)


def release_slot(connection: redis.Redis, function: str, job_id: str, limit_key: str | None = None) -> None:
    """Give back the slot `job_id` holds (nothing happens when it holds none)."""
    connection.zrem(running_key(function, limit_key), job_id)


def deferral() -> Retry:
    """What a job without a free slot returns: RQ schedules it again soon, as no attempt."""
    return Retry(max=MAX_DEFERRALS, interval=DEFER_SECONDS)


@dataclass(frozen=True)
class SlotDecision:
    """Whether a job may run now; if not, whether this is the first time it was put back."""

    run: bool
    holds_slot: bool = False
    first_deferral: bool = False
    # The value of the function's `concurrency_key` field the slot belongs to.
    limit_key: str | None = None


def take_slot(job: Job, registry: Registry, function_name: str) -> SlotDecision:
    """Let the job run (taking a slot when its function has `concurrency`), or say it must wait."""
    if function_name not in registry:
        return SlotDecision(run=True)
    spec = registry.get(function_name)
    arguments = job.args[1] if len(job.args) > 1 and isinstance(job.args[1], dict) else {}
    limit_key = spec.concurrency_key_of(arguments)  # checked by the API: raises only for a job enqueued otherwise
    if spec.concurrency is not None and not acquire_slot(job.connection, spec, job.id, limit_key):
        first = not job.meta.get("waiting_for_slot")
        if first:
            # Saved by RQ when it schedules the job again; the live view says why it waits.
            job.meta.update(waiting_for_slot=True, progress={"percent": 0, "message": WAITING_FOR_SLOT})
        return SlotDecision(run=False, first_deferral=first)
    job.meta.pop("waiting_for_slot", None)  # saved with the attempt count that follows
    if spec.max_queued is not None:
        release_waiting_place(job.connection, spec.name, job.id)  # it runs: it waits no more
    return SlotDecision(run=True, holds_slot=spec.concurrency is not None, limit_key=limit_key)


def track_limits(connection: redis.Redis, event: JobEvent) -> None:
    """Lifecycle listener: count a retried job as waiting again; free what an ended job held.

    An attempt frees its own slot when it returns or raises; this catches the attempts whose work
    horse was killed (stopped, timed out hard, crashed), which end in the worker's parent process.
    (A slot of a `concurrency_key` value is not named by the event: a job that no longer runs
    frees it the moment another job of that value finds no room, `acquire_slot`'s prune.)
    """
    if event.event == "retried":
        release_slot(connection, event.function, event.job_id)
        if connection.hexists(TRACKED_KEY, event.function):
            connection.zadd(waiting_key(event.function), {event.job_id: time.time()})
    elif event.event in ENDED_EVENTS:
        if isinstance(connection, Pipeline):  # queued with the change that ended the job
            connection.zrem(waiting_key(event.function), event.job_id)
            connection.zrem(running_key(event.function), event.job_id)
            return
        with connection.pipeline(transaction=False) as pipe:
            pipe.zrem(waiting_key(event.function), event.job_id)
            pipe.zrem(running_key(event.function), event.job_id)
            pipe.execute()
