"""OpenTelemetry: one trace from the API's 202 to a retried job's end and its callback, across processes.

A real OTLP/HTTP receiver on loopback (tests.receiver.CallbackReceiver, decoding the protobuf the
SDK exports) gets the spans of the web process, of the workers (their projector's SQL writes
among them) and of a worker's supervisor (the attempt of a work process it saw die): they share
one trace id.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from runner.rq_seam.keys import job_key, worker_key
from tests.integration.conftest import Stack, wait_until, work_processes
from tests.receiver import CallbackReceiver

SpanInfo = dict[str, Any]
REQUEST_SPAN = "POST /functions/<name>/invocations"
EXPECTED_SPANS = [REQUEST_SPAN, "enqueue", "queue wait", "attempt 1", "queue wait", "attempt 2", "callback delivery"]
STORE_SPAN = "store.apply"
# The journal entries of a job that fails once and then finishes: its new row, each attempt's start and end.
FAILS_FIRST_ENTRIES = 5
# Long enough to find and kill the process running held_first's first attempt.
HELD_SECONDS = 30


@pytest.fixture(scope="module")
def collector() -> Iterator[CallbackReceiver]:
    """The OTLP/HTTP receiver."""
    with CallbackReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(stack_factory: Callable[..., Stack], collector: CallbackReceiver) -> Stack:
    """Web and workers exporting their spans to the collector (a batch every 100 ms)."""
    return stack_factory(extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
                                    "RUNNER_CALLBACK_ALLOW_PRIVATE": "1"})


def received_spans(collector: CallbackReceiver) -> list[SpanInfo]:
    """Every span the collector got so far, with its process's service name."""
    spans = []
    for delivery in list(collector.deliveries):
        content_type = {name.lower(): value for name, value in delivery.headers.items()}["content-type"]
        assert delivery.path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(delivery.body)
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
                    spans.append({"name": span.name, "service": service, "trace": span.trace_id.hex(),
                                  "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                                  "error": span.status.code == span.status.STATUS_CODE_ERROR,
                                  "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                                  "attributes": attributes})
    return spans


def trace_of_job(collector: CallbackReceiver, job_id: str) -> list[SpanInfo]:
    """The spans received so far in the trace of the job's enqueue."""
    spans = received_spans(collector)
    enqueues = [s for s in spans if s["name"] == "enqueue" and s["attributes"].get("runner.job_id") == job_id]
    return [s for s in spans if enqueues and s["trace"] == enqueues[0]["trace"]]


def wait_for_trace(collector: CallbackReceiver, job_id: str, done: Callable[[list[SpanInfo]], bool]) -> list[SpanInfo]:
    """The job's trace once `done` says it is whole (each process exports in its own batches), or after 30 s."""
    deadline = time.monotonic() + 30
    while not done(trace := trace_of_job(collector, job_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return trace


def not_store(trace: list[SpanInfo]) -> list[SpanInfo]:
    """The trace without its SQL writes (how many batches they took varies)."""
    return [s for s in trace if s["name"] != STORE_SPAN]


def store_entries(trace: list[SpanInfo]) -> set[str]:
    """The journal entries whose SQL writes the trace shows."""
    return {s["attributes"]["runner.journal.entry_id"] for s in trace if s["name"] == STORE_SPAN}


def test_one_trace_runs_from_the_202_to_a_retried_jobs_end_and_its_callback(
        traced_stack: Stack, collector: CallbackReceiver) -> None:
    with CallbackReceiver() as callbacks:
        accepted = traced_stack.post("/functions/fails_first/invocations", json={},
                                     headers={"X-Callback-Url": f"{callbacks.url}/done"})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        view = traced_stack.wait_until_terminal(job_id, timeout=30)
        assert (view["status"], view["attempts"]) == ("finished", 2)
        callbacks.wait_for(1, timeout=20)

    trace = wait_for_trace(collector, job_id, lambda trace: len(not_store(trace)) >= len(EXPECTED_SPANS)
                           and len(store_entries(trace)) >= FAILS_FIRST_ENTRIES)
    assert sorted(s["name"] for s in not_store(trace)) == sorted(EXPECTED_SPANS)
    [enqueue] = [s for s in trace if s["name"] == "enqueue"]
    by_name = {s["name"]: s for s in trace}
    request = by_name[REQUEST_SPAN]
    assert request["service"] == "runner-api" and request["parent"] == ""  # the root
    assert request["attributes"]["http.response.status_code"] == 202
    assert enqueue["parent"] == request["id"]
    first, second = by_name["attempt 1"], by_name["attempt 2"]
    assert {first["service"], second["service"]} == {"runner-worker"}  # another process, same trace
    assert first["parent"] == second["parent"] == request["id"]
    assert first["error"] and first["attributes"]["runner.retry_cause"] == "RuntimeError: the first attempt fails"
    assert not second["error"] and "runner.retry_cause" not in second["attributes"]
    waits = sorted((s for s in trace if s["name"] == "queue wait"), key=lambda s: s["start"])
    assert len(waits) == 2 and waits[0]["end"] <= first["start"] and waits[1]["end"] <= second["start"]
    assert first["end"] <= second["start"]
    assert by_name["callback delivery"]["start"] >= second["end"]

    # Each journal entry's SQL write (its new row, each attempt's start and end), in the same trace,
    # applied by whichever process's projector (or read of history) got to it first.
    stores = [s for s in trace if s["name"] == STORE_SPAN]
    assert len(store_entries(trace)) == FAILS_FIRST_ENTRIES
    for store in stores:
        assert store["parent"] == request["id"] and store["service"] in {"runner-api", "runner-worker"}
        assert store["attributes"]["runner.job_id"] == job_id and store["attributes"]["db.system"] == "sqlite"
        assert store["attributes"]["runner.journal.batch_size"] >= 1
        assert 0 <= store["attributes"]["runner.journal.wait_seconds"] < 30
        assert not store["error"] and enqueue["start"] <= store["start"] <= store["end"]
    # The last entry (attempt 2's end) was applied after attempt 2 ended.
    assert max(s["end"] for s in stores) >= second["end"]


def test_an_attempt_whose_process_was_killed_shows_in_the_trace_before_its_retry(
        traced_stack: Stack, collector: CallbackReceiver) -> None:
    accepted = traced_stack.invoke("held_first", {"seconds": HELD_SECONDS})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    traced_stack.wait_for(job_id, lambda view: view["progress"]["message"] == "attempt 1")
    # The work process running it: a child of the pid its worker registered (the supervisor's).
    worker_name = traced_stack.redis.hget(job_key(job_id), "worker_name")
    assert worker_name, "the running job names no worker"
    supervisor = int(traced_stack.redis.hget(worker_key(worker_name.decode()), "pid") or 0)
    [victim] = work_processes(supervisor)
    killed_at = time.time_ns()
    os.kill(victim, signal.SIGKILL)

    view = traced_stack.wait_until_terminal(job_id, timeout=30)
    assert (view["status"], view["attempts"], view["result"]) == ("finished", 2, {"attempt": 2})
    trace = wait_for_trace(collector, job_id, lambda trace: {"attempt 1", "attempt 2"} <= {s["name"] for s in trace}
                           and bool(store_entries(trace)))
    by_name = {s["name"]: s for s in trace}
    request, lost, retried = by_name[REQUEST_SPAN], by_name["attempt 1"], by_name["attempt 2"]
    assert [s["name"] for s in trace].count("attempt 1") == 1  # the killed process never ended its own
    # Recorded by the supervisor that saw its work process die, from the attempt's start to its settlement.
    assert lost["service"] == "runner-worker" and lost["parent"] == request["id"]
    assert lost["error"] and lost["attributes"]["runner.retry_cause"].startswith("worker died")
    assert lost["attributes"]["runner.job_id"] == job_id and lost["attributes"]["runner.attempt"] == 1
    assert lost["start"] < killed_at < lost["end"] <= retried["start"]
    assert retried["parent"] == request["id"] and not retried["error"]
    assert store_entries(trace) and all(s["parent"] == request["id"] for s in trace if s["name"] == STORE_SPAN)


def test_a_worker_that_stops_sends_the_spans_it_still_holds(
        stack_factory: Callable[..., Stack], collector: CallbackReceiver) -> None:
    # The web process exports every 100 ms; the worker would wait 10 minutes: only its flush at exit sends them.
    stack = stack_factory(extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"},
                          workers=0)
    worker = stack.processes.start_worker({**stack.env, "OTEL_BSP_SCHEDULE_DELAY": "600000"}, "holding-worker")
    wait_until(lambda: stack.worker_count() == 1, 20, "the worker to register")
    accepted = stack.invoke("fails_first", {})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert stack.wait_until_terminal(job_id, timeout=30)["status"] == "finished"

    def worker_spans() -> list[SpanInfo]:
        return [s for s in trace_of_job(collector, job_id) if s["service"] == "runner-worker"]

    wait_for_trace(collector, job_id, lambda trace: REQUEST_SPAN in {s["name"] for s in trace})
    assert worker_spans() == []  # held in the worker
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    names = {s["name"] for s in worker_spans()}
    assert {"queue wait", "attempt 1", "attempt 2"} <= names, names
