"""OpenTelemetry: one trace from the API's 202 to a retried job's end and its callback, across processes.

A real OTLP/HTTP receiver on loopback (tests.receiver.CallbackReceiver, decoding the protobuf the
SDK exports) gets the spans of the web process and of the worker: they share one trace id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import Stack
from tests.receiver import CallbackReceiver

SpanInfo = dict[str, Any]
EXPECTED_SPANS = ["POST /functions/<name>/invocations", "enqueue", "queue wait", "attempt 1", "queue wait", "attempt 2",
                  "callback delivery"]


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

    def trace_of_job() -> list[SpanInfo]:
        spans = received_spans(collector)
        enqueues = [s for s in spans if s["name"] == "enqueue" and s["attributes"].get("runner.job_id") == job_id]
        return [s for s in spans if enqueues and s["trace"] == enqueues[0]["trace"]]

    # Each process exports its spans in its own batches: wait for all of them.
    deadline = time.monotonic() + 30
    while len(trace := trace_of_job()) < len(EXPECTED_SPANS) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(s["name"] for s in trace) == sorted(EXPECTED_SPANS)
    [enqueue] = [s for s in trace if s["name"] == "enqueue"]
    by_name = {s["name"]: s for s in trace}
    request = by_name["POST /functions/<name>/invocations"]
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
