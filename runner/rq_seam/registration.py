"""A worker's registration in Redis: its heartbeat while idle, and its registration written again after its
peers took it for dead."""

from __future__ import annotations

from datetime import datetime

from rq.utils import utcformat
from rq.worker import BaseWorker
from rq.worker_registration import register as register_worker_key

from runner.rq_seam.keys import DEAD_AFTER_FIELD, WORKER_HEARTBEAT_FIELD, WORKERS_KEY


def register_again(worker: BaseWorker, ttl: int) -> None:
    """Write the worker's hash and its place in RQ's sets again, as RQ's register_birth does."""
    with worker.connection.pipeline() as pipeline:
        pipeline.hset(worker.key, mapping={**worker.serialize(), DEAD_AFTER_FIELD: worker.dead_after})  # type: ignore[attr-defined]
        register_worker_key(worker, pipeline)
        pipeline.expire(worker.key, ttl)
        pipeline.execute()


def beat_or_register_again(worker: BaseWorker, at: datetime, ttl: int, registration_ttl: int) -> bool:
    """Write the worker's heartbeat `at` and keep its hash `ttl` seconds; whether its peers
    had taken it for dead, and it was registered again. Peers unregister a worker they have not heard
    from: its hash is gone, or (a job's beat may remake the hash alone) it left RQ's set of workers."""
    with worker.connection.pipeline() as pipeline:
        pipeline.hset(worker.key, WORKER_HEARTBEAT_FIELD, utcformat(at))
        pipeline.expire(worker.key, ttl)
        pipeline.sismember(WORKERS_KEY, worker.key)
        created, _, registered = pipeline.execute()
    if created or not registered:
        register_again(worker, registration_ttl)
        return True
    return False
