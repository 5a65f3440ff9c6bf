"""A worker's registration in Redis, written again after its peers took it for dead."""

from __future__ import annotations

from rq.worker import BaseWorker
from rq.worker_registration import register as register_worker_key

from runner.rq_seam.keys import DEAD_AFTER_FIELD


def register_again(worker: BaseWorker, ttl: int) -> None:
    """Write the worker's hash and its place in RQ's sets again, as RQ's register_birth does."""
    with worker.connection.pipeline() as pipeline:
        pipeline.hset(worker.key, mapping={**worker.serialize(), DEAD_AFTER_FIELD: worker.dead_after})  # type: ignore[attr-defined]
        register_worker_key(worker, pipeline)
        pipeline.expire(worker.key, ttl)
        pipeline.execute()
