"""Traces through the journal: an entry carries its job's traceparent only when tracing is on, and the
projector records each traced entry's SQL write in that trace; recovery records the attempt it settles.

Tracing is turned on here with an in-memory exporter in place of the OTLP one
(tests/integration/test_traces.py has the real receiver and processes).
"""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from runner import tracing
from runner.authoring.registry import Registry
from runner.journal import entries as journal
from runner.journal.projector import Projector
from runner.services.backends import Backends
from runner.services.control import cancel_job, retry_job
from runner.services.invocation import enqueue_invocation
from runner.store.models import utcnow
from runner.store.sql_store import Store
from runner.worker.environment import install_environment
from runner.worker.liveness import Liveness
from runner.worker.recovery import find_abandoned, recover_entry
from runner.worker.run import build_worker

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
RETRIED = "unreliable_task"  # retries=3, in functions/
NEW_ROW = {"function": "f", "queue": "q", "status": "queued", "input": {}, "progress_percent": 0,
           "progress_message": "queued", "attempts": 0}


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Tracing on in this process, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    return exporter


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def ids(span: ReadableSpan) -> tuple[str, str]:
    """The span's trace id and its parent's span id, as hex."""
    assert span.context is not None and span.parent is not None
    return format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")


# Encoding


def test_an_entry_without_a_traceparent_is_the_four_fields_it_always_was() -> None:
    raw = journal.encode("j", {"status": "started", "attempts": 1}, fence=1)
    assert json.loads(raw) == ["j", 1, False, {"status": "started", "attempts": 1}]
    entry = journal.decode("1700000000000-3", raw)
    assert (entry.job_id, entry.fence, entry.new, entry.values, entry.traceparent) == (
        "j", 1, False, {"status": "started", "attempts": 1}, None)


def test_an_entry_with_a_traceparent_carries_it_last() -> None:
    created = utcnow()
    raw = journal.encode("j", {**NEW_ROW, "created_at": created}, fence=0, new=True, traceparent=TRACEPARENT)
    assert json.loads(raw)[4] == TRACEPARENT and len(json.loads(raw)) == 5
    entry = journal.decode(b"1700000000000-3", raw)
    assert (entry.job_id, entry.new, entry.traceparent) == ("j", True, TRACEPARENT)
    assert entry.values == {**NEW_ROW, "created_at": created}
    assert entry.position == 1700000000000 * journal.POSITION_SCALE + 3


def test_tracing_off_puts_no_traceparent_in_entries(
    backends: Backends, connection: fakeredis.FakeRedis, registry: Registry
) -> None:
    assert tracing.traceparent_of({tracing.TRACEPARENT: TRACEPARENT}) is None  # a job traced elsewhere
    enqueue_invocation(registry.get(RETRIED), {}, backends)
    [(_stream_id, fields)] = connection.xrange(journal.JOURNAL_KEY)
    assert len(json.loads(fields[b"e"])) == 4


def test_an_invocations_new_row_carries_the_trace_it_was_accepted_in(
    backends: Backends, connection: fakeredis.FakeRedis, registry: Registry, exported: InMemorySpanExporter
) -> None:
    with tracing.span("request") as request:
        enqueue_invocation(registry.get(RETRIED), {}, backends)
    [(stream_id, fields)] = connection.xrange(journal.JOURNAL_KEY)
    traceparent = journal.decode(stream_id, fields[b"e"]).traceparent
    context = request.get_span_context()
    assert traceparent is not None and traceparent.split("-")[1:3] == [f"{context.trace_id:032x}",
                                                                        f"{context.span_id:016x}"]


def test_a_cancel_and_a_retry_of_a_traced_job_write_in_its_trace(
    backends: Backends, connection: fakeredis.FakeRedis, registry: Registry, exported: InMemorySpanExporter
) -> None:
    with tracing.span("request") as request:
        job_id = enqueue_invocation(registry.get(RETRIED), {}, backends).id
    [(stream_id, fields)] = connection.xrange(journal.JOURNAL_KEY)
    accepted = journal.decode(stream_id, fields[b"e"]).traceparent
    cancel_job(job_id, backends)  # still queued: canceled at once
    assert retry_job(job_id, backends, registry).status == "queued"
    written = [journal.decode(stream_id, fields[b"e"]) for stream_id, fields in connection.xrange(journal.JOURNAL_KEY)]
    assert [entry.values["status"] for entry in written] == ["queued", "canceled", "queued"]
    assert accepted is not None and {entry.traceparent for entry in written} == {accepted}
    assert format(request.get_span_context().trace_id, "032x") in accepted


# The projector's spans


def test_the_projector_records_a_store_write_span_per_traced_entry(
    connection: fakeredis.FakeRedis, store: Store, exported: InMemorySpanExporter
) -> None:
    with connection.pipeline() as pipeline:
        journal.append(pipeline, "j", {**NEW_ROW, "created_at": utcnow()}, fence=0, new=True, traceparent=TRACEPARENT)
        journal.append(pipeline, "j", {"status": "started", "attempts": 1}, fence=1, traceparent=TRACEPARENT)
        journal.append(pipeline, "k", {**NEW_ROW, "created_at": utcnow()}, fence=0, new=True)  # not traced
        pipeline.execute()
    written = [stream_id.decode() for stream_id, _fields in connection.xrange(journal.JOURNAL_KEY)]
    before = time.time_ns()
    assert Projector(connection, Store(store.url)).apply_batch() == 3
    spans = named(exported, "store.apply")
    assert [span.attributes["runner.journal.entry_id"] for span in spans] == written[:2]  # type: ignore[index]
    for span in spans:
        assert ids(span) == (TRACE_ID, PARENT_ID) and span.kind == SpanKind.CLIENT
        attributes = dict(span.attributes or {})
        assert (attributes["runner.job_id"], attributes["db.system"], attributes["runner.journal.batch_size"]) == (
            "j", "sqlite", 3)
        assert 0 <= float(attributes["runner.journal.wait_seconds"]) < 5  # type: ignore[arg-type]
        assert span.start_time is not None and span.end_time is not None
        assert before <= span.start_time <= span.end_time <= time.time_ns()
    assert Store(store.url).get("j").status == "started"  # type: ignore[union-attr]


# Recovery's span of a lost attempt


def test_recovery_records_the_attempt_whose_worker_died_in_the_jobs_trace(
    connection: fakeredis.FakeRedis, backends: Backends, registry: Registry, exported: InMemorySpanExporter,
) -> None:
    with tracing.span("request") as request:
        job_id = enqueue_invocation(registry.get(RETRIED), {}, backends).id
    worker = build_worker([registry.get(RETRIED).queue], backends, registry)
    try:
        worker.register_birth()
        job, _queue = worker.dequeue_job_and_maintain_ttl(None) or (None, None)
        assert job is not None
        worker.prepare_execution(job)  # attempt 1 starts; then its worker goes silent
        later = Liveness(now=time.time() + 60, redis_up_since=float("-inf"), default_dead_after=15)
        [abandoned] = find_abandoned(connection, [registry.get(RETRIED).queue], later)
        recovery = recover_entry(connection, abandoned)
        assert recovery is not None and recovery.status != "failed"  # retried
        worker.teardown()
    finally:
        install_environment(None)
    [lost] = named(exported, "attempt 1")
    context = request.get_span_context()
    assert ids(lost) == (f"{context.trace_id:032x}", f"{context.span_id:016x}") and lost.kind == SpanKind.CONSUMER
    assert lost.status.status_code == StatusCode.ERROR and lost.status.description == "worker died"
    attributes = dict(lost.attributes or {})
    assert (attributes["runner.job_id"], attributes["runner.attempt"], attributes["runner.retry_cause"]) == (
        job_id, 1, "worker died")
    assert lost.start_time is not None and lost.end_time is not None and lost.start_time < lost.end_time
    assert job.started_at is not None and abs(lost.start_time - tracing.nanoseconds(job.started_at)) < 1_000_000
