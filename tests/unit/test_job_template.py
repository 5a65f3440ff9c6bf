"""A job enqueued from its function's template is the job RQ's own enqueue_job would have written."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from rq.job import JobStatus

from runner.authoring.registry import Registry
from runner.authoring.spec import FunctionSpec
from runner.rq_seam.job_hash import ENTRY_POINT, new_job
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends
from runner.services.invocation import job_meta, submit_job
from tests.unit.conftest import rq_job

# Differ between two jobs of the same function by nature: when each was made.
STAMPS = {b"created_at", b"enqueued_at"}


def enqueue_the_rq_way(backends: Backends, spec: FunctionSpec, job_id: str, arguments: dict[str, Any]) -> None:
    queue = queue_for(spec.queue, backends.connection)
    job = new_job(queue, spec, job_id, arguments, meta=job_meta(spec), result_ttl=backends.settings.result_ttl,
                  failure_ttl=backends.settings.failure_ttl)
    queue.enqueue_job(job)


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("simple_calculation", {"expression": "6*7"}),  # no retries
        ("unreliable_task", {"failure_rate": 0.5}),  # retries with backoff intervals
        ("text_generation", {"prompt": "über ✓", "max_tokens": 8}),  # another queue; non-ASCII input
    ],
)
def test_template_job_matches_rq_enqueue(backends: Backends, registry: Registry, connection: fakeredis.FakeRedis,
                                         name: str, arguments: dict[str, Any]) -> None:
    spec = registry.get(name)
    submit_job(spec, "from-template", arguments, backends, meta=job_meta(spec))
    enqueue_the_rq_way(backends, spec, "from-rq", arguments)

    ours, theirs = connection.hgetall("rq:job:from-template"), connection.hgetall("rq:job:from-rq")
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k not in STAMPS} == {k: v for k, v in theirs.items() if k not in STAMPS}
    assert all(ours[stamp] for stamp in STAMPS)

    queue_key = f"rq:queue:{spec.queue}"
    assert connection.lrange(queue_key, 0, -1) == [b"from-template", b"from-rq"]
    assert queue_key.encode() in connection.smembers("rq:queues")
    assert connection.lrange(f"runner:wake:{spec.queue}", 0, -1) == [b"1"]
    job = rq_job(connection, "from-template")
    assert (job.func_name, job.args, job.kwargs) == (ENTRY_POINT, [name, arguments], {})
    assert job.get_status() == JobStatus.QUEUED and job.origin == spec.queue
    assert job.meta == job_meta(spec)


def test_each_job_has_its_own_arguments_and_times(backends: Backends, registry: Registry,
                                                  connection: fakeredis.FakeRedis) -> None:
    spec = registry.get("simple_calculation")
    submit_job(spec, "first", {"expression": "1+1"}, backends, meta=job_meta(spec))
    submit_job(spec, "second", {"expression": "2+2"}, backends, meta=job_meta(spec, attempts=3))
    first, second = rq_job(connection, "first"), rq_job(connection, "second")
    assert (first.args, second.args) == (["simple_calculation", {"expression": "1+1"}],
                                         ["simple_calculation", {"expression": "2+2"}])
    assert (first.meta["attempts"], second.meta["attempts"]) == (0, 3)
    assert second.enqueued_at is not None and first.enqueued_at is not None
    assert second.enqueued_at >= first.enqueued_at
