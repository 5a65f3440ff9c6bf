"""Idempotency keys: the same key, function and input within the TTL name one job, never two.

A request claims its key in Redis with `SET NX EX` before it writes the row or enqueues, so
concurrent requests with one key (from any number of web processes) agree on one job id. The
claim holds the job id and a hash of the function and its validated input; a later request
with the same key replays that job, or is refused (409) when the function or input differ.
A claimant whose enqueue fails releases its claim; a claim whose job never appeared (its web
process died between claim and row) is taken over after `STALE_CLAIM_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from runner.errors import IdempotencyConflict, MalformedRequest
from runner.redis_connection import NOT_ACCEPTED, REDIS_ERRORS, redis_unavailable

HEADER = "Idempotency-Key"
KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")
CLAIM_KEY = "runner:idempotency:{digest}"
# How long a replay waits for the claimant's job to appear before it reports a conflict.
REPLAY_WAIT_SECONDS = 5.0
REPLAY_POLL_SECONDS = 0.01
# A claim whose job is still unknown this long after it was made belongs to a dead request.
STALE_CLAIM_SECONDS = 30.0


def check_key(raw: str | None) -> str | None:
    """The Idempotency-Key header's value, None when absent; MalformedRequest when unusable."""
    if raw is None:
        return None
    if not KEY_PATTERN.match(raw) or not raw.strip():
        raise MalformedRequest(
            f"The {HEADER} header must be 1 to 255 printable ASCII characters.",
            details={"header": HEADER, "length": len(raw)},
        )
    return raw


def fingerprint(function: str, arguments: Any) -> str:
    """SHA-256 of the function name and the canonical JSON of its validated arguments."""
    canonical = json.dumps({"function": function, "input": arguments}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """Who owns an idempotency key: the job it names and what that job was asked to do."""

    job_id: str
    function: str
    fingerprint: str
    claimed_at: float

    def to_json(self) -> str:
        """The claim as stored in Redis."""
        return json.dumps({"job_id": self.job_id, "function": self.function, "fingerprint": self.fingerprint,
                           "claimed_at": self.claimed_at})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Claim:
        """A claim read back from Redis."""
        data = json.loads(raw)
        return cls(str(data["job_id"]), str(data["function"]), str(data["fingerprint"]), float(data["claimed_at"]))


def claim_key(key: str) -> str:
    """The Redis key of an idempotency key (hashed: any printable key, fixed length)."""
    return CLAIM_KEY.format(digest=hashlib.sha256(key.encode()).hexdigest())


def claim_or_find(connection: redis.Redis, key: str, claim: Claim, ttl: int,
                  job_exists: Callable[[str], bool]) -> str | None:
    """Claim `key` for `claim.job_id` (None: go ahead), or return the job id of an earlier claim.

    `job_exists(job_id) -> bool` says whether the earlier claimant's job can be shown yet.
    Raises IdempotencyConflict when the key names another function or input.
    """
    redis_key = claim_key(key)
    deadline = time.monotonic() + REPLAY_WAIT_SECONDS
    try:
        while True:
            if connection.set(redis_key, claim.to_json(), nx=True, ex=max(1, ttl)):
                return None
            raw = connection.get(redis_key)
            if raw is None:
                continue  # expired or released between SET and GET: try to claim again
            earlier = Claim.from_json(raw)
            if earlier.function != claim.function or earlier.fingerprint != claim.fingerprint:
                raise IdempotencyConflict(
                    f"The {HEADER} was already used for another "
                    f"{'function' if earlier.function != claim.function else 'input'}.",
                    details={"header": HEADER, "job_id": earlier.job_id},
                )
            if job_exists(earlier.job_id):
                return earlier.job_id
            if time.time() - earlier.claimed_at > STALE_CLAIM_SECONDS and _take_over(connection, redis_key, raw,
                                                                                   claim, ttl):
                return None
            if time.monotonic() > deadline:
                raise IdempotencyConflict(
                    f"A request with this {HEADER} is still being processed; retry shortly.",
                    details={"header": HEADER, "job_id": earlier.job_id},
                )
            time.sleep(REPLAY_POLL_SECONDS)
    except REDIS_ERRORS as exc:
        raise redis_unavailable(NOT_ACCEPTED) from exc


def _take_over(connection: redis.Redis, redis_key: str, seen: bytes | str, claim: Claim, ttl: int) -> bool:
    """Replace the claim `seen` by ours, unless someone changed it meanwhile."""
    with connection.pipeline() as pipe:
        try:
            pipe.watch(redis_key)  # type: ignore[no-untyped-call]
            if pipe.get(redis_key) != seen:
                return False
            pipe.multi()
            pipe.set(redis_key, claim.to_json(), ex=max(1, ttl))
            pipe.execute()
            return True
        except redis.WatchError:
            return False  # another request took it over first


def release(connection: redis.Redis, key: str, claim: Claim) -> None:
    """Drop our claim (our enqueue failed), so a retry of the request can claim the key again."""
    redis_key = claim_key(key)
    try:
        if connection.get(redis_key) == claim.to_json().encode():
            connection.delete(redis_key)
    except REDIS_ERRORS:
        pass  # Redis is away: the claim names a job that does not exist and becomes stale
