"""Jobs in slots: those claimed together start in one script call; one canceled since its claim never starts."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from runner.authoring.registry import Registry, make_spec
from runner.services.backends import Backends
from runner.services.control import cancel_job
from runner.services.invocation import enqueue_invocation
from runner.services.job_views import get_job_view
from runner.worker.claims import claim_key
from runner.worker.environment import install_environment
from runner.worker.run import build_worker


def add(a: int, b: int) -> int:
    """A sync function that may run in the worker's thread pool."""
    return a + b


def test_jobs_claimed_together_start_in_one_call_and_a_canceled_one_never_starts(
        connection: fakeredis.FakeRedis, backends: Backends, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(add, queue="slots", timeout=5, retries=0, backoff=None, name="add_in_threads", threads=True)
    registry = Registry([spec])
    ids = [enqueue_invocation(spec, {"a": n, "b": 1}, backends).id for n in range(16)]
    worker = build_worker([spec.queue], backends, registry)
    worker.taker.claim_batch = 8
    starts: list[list[str]] = []
    prepare = worker.prepare_executions

    def counted(jobs: list[Any]) -> list[Any]:
        starts.append([job.id for job in jobs])
        return prepare(jobs)

    monkeypatch.setattr(worker, "prepare_executions", counted)
    worker.register_birth()
    try:
        first, queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
        assert first is not None and queue is not None and first.id == ids[0]  # ids[1:8] are claimed with it
        cancel_job(ids[2], backends)
        worker.execute_job(first, queue)
        assert starts == [ids[:8]]  # one start for the eight
    finally:
        worker.teardown()  # lets the jobs in flight end
        install_environment(None)
    views = [get_job_view(job_id, backends) for job_id in ids[:8]]
    assert [(view.status, view.attempts) for view in views] == \
        [("canceled", 0) if n == 2 else ("finished", 1) for n in range(8)]
    assert [view.result for view in views] == [None if n == 2 else n + 1 for n in range(8)]
    assert views[2].started_at is None
    assert connection.llen(claim_key(worker.name)) == 0
