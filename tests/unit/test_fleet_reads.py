"""Reading queue depths only reads: RQ's `.count` would clean registries and settle jobs behind recovery."""

from __future__ import annotations

import time

import fakeredis

from runner.authoring.registry import Registry
from runner.services.backends import Backends
from runner.services.fleet import queue_depths


def test_queue_depths_leave_expired_registry_entries_to_recovery(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry
) -> None:
    # An execution whose heartbeat score expired long ago: recovery, not a read, decides its fate.
    key = "rq:wip:demo_tasks"
    connection.zadd(key, {"some-job:some-execution": time.time() - 3600})
    connection.sadd("rq:queues", "rq:queue:demo_tasks")
    depths = {depth.name: depth for depth in queue_depths(backends, registry)}
    assert depths["demo_tasks"].started == 1
    assert connection.zcard(key) == 1
    assert {"demo_tasks", "default"} <= set(depths)
