"""What happens inside a worker: attempts, progress, JSON results and which errors are retried."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from rq import Retry
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from runner import PermanentError, current_attempt, progress
from runner.authoring.registry import Registry, make_spec
from runner.rq_seam.bookkeeping import current_job
from runner.rq_seam.job_hash import ENTRY_POINT
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends
from runner.services.invocation import enqueue_invocation
from runner.services.job_views import get_job_view
from runner.store.models import InvocationRecord, utcnow
from runner.store.sql_store import Store
from runner.worker.environment import WorkerEnvironment, install_environment
from runner.worker.execution import STORE_PROGRESS_STEP
from tests.history import insert_rows

QUEUE = "default"
RunJobs = Callable[..., bool]


class Harness:
    """Throwaway functions in a registry of their own, enqueued and run by the real machinery."""

    def __init__(self, backends: Backends, run_jobs: RunJobs) -> None:
        self.backends = backends
        self.registry = Registry()
        self._run_jobs = run_jobs

    def register(self, func: Callable[..., Any], *, retries: int = 0, backoff: list[int] | None = None) -> str:
        spec = make_spec(func, queue=QUEUE, timeout=10, retries=retries, backoff=backoff, name=None)
        self.registry.add(spec)
        return spec.name

    def invoke(self, name: str, payload: dict[str, Any] | None = None) -> str:
        return enqueue_invocation(self.registry.get(name), payload or {}, self.backends).id

    def run(self) -> bool:
        return self._run_jobs([QUEUE], self.registry)

    def view(self, job_id: str) -> dict[str, Any]:
        return get_job_view(job_id, self.backends).to_dict()

    def record(self, job_id: str) -> InvocationRecord:
        record = self.backends.store.get(job_id)
        assert record is not None
        return record

    def assert_not_retried(self) -> None:
        assert queue_for(QUEUE, self.backends.connection).count == 0
        scheduled = ScheduledJobRegistry(QUEUE, connection=self.backends.connection, serializer=JSONSerializer)
        assert scheduled.get_job_ids() == []


@pytest.fixture
def harness(backends: Backends, run_jobs: RunJobs) -> Harness:
    return Harness(backends, run_jobs)


# Outside a worker


def test_progress_and_current_attempt_outside_a_worker(store: Store, registry: Registry) -> None:
    insert_rows(store, InvocationRecord(id="row", function="f", queue=QUEUE, status="started", input={}, attempts=1,
                               progress_percent=5, progress_message="before", created_at=utcnow()))
    install_environment(WorkerEnvironment(registry=registry, store=store))
    try:
        assert current_job() is None
        assert progress(50, "halfway") is None
        assert progress(100) is None
        assert current_attempt() == 1
    finally:
        install_environment(None)
    record = store.get("row")
    assert record is not None
    assert (record.progress_percent, record.progress_message) == (5, "before")


# Results that are not JSON


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param({1, 2}, "set is not JSON serializable", id="set"),
        pytest.param(object(), "object is not JSON serializable", id="object"),
        pytest.param(b"bytes", "bytes is not JSON serializable", id="bytes"),
        pytest.param({"when": utcnow()}, "datetime is not JSON serializable", id="nested-datetime"),
        pytest.param(float("nan"), "Out of range float values are not JSON compliant", id="nan"),
        pytest.param([float("inf")], "Out of range float values are not JSON compliant", id="inf"),
    ],
)
def test_non_json_result_fails_permanently(harness: Harness, value: Any, reason: str) -> None:
    def returns_value() -> Any:
        return value

    job_id = harness.invoke(harness.register(returns_value, retries=2))
    harness.run()
    view = harness.view(job_id)
    assert (view["status"], view["attempts"], view["result"]) == ("failed", 1, None)
    assert view["error"]["type"] == "PermanentError"
    assert view["error"]["message"].startswith("The function returned a value that is not JSON: ")
    assert reason in view["error"]["message"]
    harness.assert_not_retried()
    record = harness.record(job_id)
    assert (record.status, record.error, record.attempts, record.result) == ("failed", view["error"], 1, None)


@pytest.mark.parametrize("value", [None, 0, "", [], {"a": [1, 2.5, None, True]}, "ünïcode"])
def test_json_results_are_kept(harness: Harness, value: Any) -> None:
    def returns_value() -> Any:
        return value

    job_id = harness.invoke(harness.register(returns_value))
    harness.run()
    view = harness.view(job_id)
    assert (view["status"], view["result"], view["attempts"]) == ("finished", value, 1)
    assert harness.record(job_id).result == value


# Which errors are retried


def test_permanent_error_is_not_retried_despite_a_retry_policy(harness: Harness) -> None:
    attempts: list[int] = []

    def refuses() -> None:
        attempts.append(current_attempt())
        raise PermanentError("never going to work")

    job_id = harness.invoke(harness.register(refuses, retries=3))
    harness.run()
    assert attempts == [1]
    view = harness.view(job_id)
    assert (view["status"], view["attempts"]) == ("failed", 1)
    assert view["error"] == {"type": "PermanentError", "message": "never going to work"}
    harness.assert_not_retried()
    assert harness.record(job_id).status == "failed"


def test_transient_error_is_retried_and_attempts_are_counted(harness: Harness) -> None:
    attempts: list[int] = []

    def flaky() -> None:
        attempts.append(current_attempt())
        raise RuntimeError(f"attempt {current_attempt()} broke")

    job_id = harness.invoke(harness.register(flaky, retries=2))  # no backoff: requeued at once
    harness.run()
    assert attempts == [1, 2, 3]
    view = harness.view(job_id)
    assert (view["status"], view["attempts"]) == ("failed", 3)
    assert view["error"] == {"type": "RuntimeError", "message": "attempt 3 broke"}
    record = harness.record(job_id)
    assert (record.status, record.attempts, record.error) == ("failed", 3, view["error"])
    assert record.ended_at is not None


def test_success_after_a_retry_clears_the_error(harness: Harness) -> None:
    def second_time_lucky() -> int:
        if current_attempt() == 1:
            raise RuntimeError("first attempt fails")
        return current_attempt()

    job_id = harness.invoke(harness.register(second_time_lucky, retries=1))
    harness.run()
    view = harness.view(job_id)
    assert (view["status"], view["attempts"], view["result"], view["error"]) == ("finished", 2, 2, None)
    record = harness.record(job_id)
    assert (record.status, record.attempts, record.error, record.result) == ("finished", 2, None, 2)


def enqueue_raw(connection: fakeredis.FakeRedis, name: str, payload: Any) -> Job:
    """What a forged or stale queue entry looks like: it never went through the API's validation."""
    return queue_for(QUEUE, connection).enqueue_call(
        func=ENTRY_POINT,
        args=(name, payload),
        retry=Retry(max=3),
        meta={"function": name, "attempts": 0},
    )


@pytest.mark.parametrize(
    ("name", "payload", "error_type"),
    [
        pytest.param("takes_int", {"n": "not a number"}, "InvalidInput", id="invalid-input"),
        pytest.param("takes_int", {"n": 1, "extra": True}, "InvalidInput", id="extra-field"),
        pytest.param("takes_int", ["n"], "InvalidInput", id="not-an-object"),
        pytest.param("unknown_function", {}, "FunctionNotFound", id="unknown-function"),
    ],
)
def test_worker_revalidates_and_does_not_retry_bad_input(
    harness: Harness, connection: fakeredis.FakeRedis, name: str, payload: Any, error_type: str
) -> None:
    calls: list[int] = []

    def takes_int(n: int) -> int:
        calls.append(n)
        return n

    harness.register(takes_int, retries=3)
    job = enqueue_raw(connection, name, payload)
    harness.run()
    assert calls == []
    view = harness.view(job.id)
    assert (view["status"], view["attempts"], view["error"]["type"]) == ("failed", 1, error_type)
    harness.assert_not_retried()


# Progress


def test_progress_reaches_job_meta_and_the_store_at_milestones(harness: Harness, store: Store) -> None:
    seen: list[tuple[int, dict[str, Any], int, str]] = []

    def reports() -> str:
        job = current_job()
        assert job is not None
        for percent, message in [(10, "ten"), (30, "thirty"), (40, "forty"), (80, "eighty"), (99, "almost")]:
            progress(percent, message)
            live = Job.fetch(job.id, connection=job.connection, serializer=JSONSerializer).meta["progress"]
            row = store.get(job.id)
            assert row is not None
            seen.append((percent, live, row.progress_percent, row.progress_message))
        return "done"

    job_id = harness.invoke(harness.register(reports))
    harness.run()
    # Redis gets every call; SQL only when a call crosses a multiple of STORE_PROGRESS_STEP (25)
    # (before that, the row says what the start said).
    assert STORE_PROGRESS_STEP == 25
    assert seen == [
        (10, {"percent": 10, "message": "ten"}, 0, "started"),
        (30, {"percent": 30, "message": "thirty"}, 30, "thirty"),
        (40, {"percent": 40, "message": "forty"}, 30, "thirty"),
        (80, {"percent": 80, "message": "eighty"}, 80, "eighty"),
        (99, {"percent": 99, "message": "almost"}, 80, "eighty"),
    ]
    view = harness.view(job_id)
    assert (view["status"], view["progress"]["percent"]) == ("finished", 100)
    assert harness.record(job_id).progress_percent == 100


def test_progress_of_a_failed_job_is_kept(harness: Harness) -> None:
    def gives_up() -> None:
        progress(60, "got this far")
        raise PermanentError("stuck")

    job_id = harness.invoke(harness.register(gives_up))
    harness.run()
    assert harness.view(job_id)["progress"] == {"percent": 60, "message": "got this far"}
    record = harness.record(job_id)
    assert (record.progress_percent, record.progress_message) == (60, "got this far")


@pytest.mark.parametrize(
    ("percent", "message", "expected"),
    [
        (150, "over", {"percent": 100, "message": "over"}),
        (-5, "under", {"percent": 0, "message": "under"}),
        (42.9, "fraction", {"percent": 42, "message": "fraction"}),
        (50, "x" * 600, {"percent": 50, "message": "x" * 500}),
        (50, 12345, {"percent": 50, "message": "12345"}),
    ],
)
def test_progress_is_bounded(harness: Harness, percent: float, message: Any, expected: dict[str, Any]) -> None:
    recorded: list[dict[str, Any]] = []

    def reports() -> None:
        progress(percent, message)
        job = current_job()
        assert job is not None
        recorded.append(Job.fetch(job.id, connection=job.connection, serializer=JSONSerializer).meta["progress"])
        raise PermanentError("stop here, so the view keeps the reported progress")

    job_id = harness.invoke(harness.register(reports))
    harness.run()
    assert recorded == [expected]
    assert harness.view(job_id)["progress"] == expected
