"""OpenTelemetry traces of an invocation: off, and its SDK never started, unless configured.

`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on; the other
standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`,
`OTEL_SDK_DISABLED`, ...) configure it, read by the SDK itself. Spans go over OTLP/HTTP in batches.

One trace per invocation: the API request (api/tracing.py) and, under it, the enqueue; the job
carries the W3C `traceparent` of the request in its meta (`TRACEPARENT`), so each attempt in a
worker (one span per attempt, its wait in the queue before it, the retry cause on a failed one)
and the delivery of its completion callback join the same trace, on whatever host they run.
The job's journal entries carry it too (runner.journal.entries), so the projector records each
entry's SQL write in that trace (`store.apply`), and recovery records an attempt whose worker died
(`attempt N`, an error saying why) in the process that settled it.
When off, every function here returns at once: no span, no meta or entry field, no SDK or exporter imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

# The job meta field that carries the trace context from the API to the workers.
TRACEPARENT = "traceparent"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_tracer: Any = None  # an opentelemetry Tracer once start_tracing ran with tracing configured
_provider: Any = None  # its TracerProvider


def tracing_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, and the SDK not disabled)."""
    env = os.environ if environ is None else environ
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return not disabled and any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def start_tracing(service_name: str, *, batched: bool = True) -> None:
    """In this process (after any fork): export spans as the OTEL_* variables say; nothing when unset.

    `batched=False` exports each span as it ends, from the thread that ends it, with no exporter
    thread: for a process that forks (the worker's supervisor) and records a span only rarely.
    """
    global _tracer, _provider
    if not tracing_configured():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)  # flushed at exit (shutdown_on_exit)
    processor = BatchSpanProcessor if batched else SimpleSpanProcessor
    provider.add_span_processor(processor(OTLPSpanExporter()))
    _tracer, _provider = provider.get_tracer("runner"), provider


def flush() -> None:
    """Send the spans this process still holds, before an `os._exit` (which skips the SDK's own flush
    at exit); waits for the collector as an export does (OTEL_EXPORTER_OTLP_TIMEOUT). Nothing when off."""
    if _provider is not None:
        _provider.force_flush()


def tracing_on() -> bool:
    """Whether this process records spans."""
    return _tracer is not None


def traceparent_of(meta: Mapping[str, Any]) -> str | None:
    """The traceparent in a job's meta, for its journal entries; None when off (entries stay small)."""
    if _tracer is None:
        return None
    return meta.get(TRACEPARENT) or None


def job_attributes(job_id: str, function: str, queue: str) -> dict[str, Any]:
    """The attributes of a span about one job's attempt."""
    return {"runner.job_id": job_id, "runner.function": function, "messaging.destination.name": queue}


def clock() -> int | None:
    """Now, in nanoseconds since the epoch, to start a span recorded later; None when off."""
    return time.time_ns() if _tracer is not None else None


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, for a job's meta; None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def _context_of(traceparent: str | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent} if traceparent else {})


@contextmanager
def span(name: str, *, traceparent: str | None = None, kind: str = "INTERNAL",
         attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span around the block (the current one's child, or `traceparent`'s); the span, or None when off.

    An exception leaving the block marks the span as an error and records it.
    """
    if _tracer is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    context = _context_of(traceparent) if traceparent is not None else None
    with _tracer.start_as_current_span(name, context=context, kind=SpanKind[kind],
                                       attributes=dict(attributes or {})) as current:
        yield current


def record_span(name: str, traceparent: str | None, started: int, attributes: Mapping[str, Any], *,
                kind: str = "INTERNAL", error: str | None = None, ended: int | None = None) -> None:
    """A span that began at `started` and ended at `ended` or now (ns since the epoch), in `traceparent`'s
    trace; `error` marks it failed and says why (nothing when off)."""
    if _tracer is None:
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    now = time.time_ns() if ended is None else ended
    recorded = _tracer.start_span(name, context=_context_of(traceparent), kind=SpanKind[kind],
                                  start_time=min(started, now), attributes=dict(attributes))
    if error is not None:
        recorded.set_status(Status(StatusCode.ERROR, error))
    recorded.end(end_time=now)


def record_queue_wait(traceparent: str | None, since: datetime | None, attributes: Mapping[str, Any]) -> None:
    """A span for the time a job waited in its queue, from `since` until now (nothing when off)."""
    if _tracer is None or since is None:
        return
    record_span("queue wait", traceparent, nanoseconds(since), attributes)


def nanoseconds(moment: datetime) -> int:
    """A moment as nanoseconds since the epoch (RQ's naive datetimes are UTC)."""
    if moment.tzinfo is None:  # RQ keeps UTC without saying so
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1e9)


@contextmanager
def attempt_span(traceparent: str | None, attempt: int, attributes: Mapping[str, Any]) -> Iterator[None]:
    """One attempt of a job, in its invocation's trace; a failed one says why (`runner.retry_cause`)."""
    if _tracer is None:
        yield
        return
    with span(f"attempt {attempt}", traceparent=traceparent, kind="CONSUMER",
              attributes={**attributes, "runner.attempt": attempt}) as current:
        try:
            yield
        except BaseException as exc:
            message = getattr(exc, "message", None) or str(exc)
            current.set_attribute("runner.retry_cause", f"{type(exc).__name__}: {message}"[:500])
            raise


def record_lost_attempt(traceparent: str | None, attempt: int, since: datetime | None, settled: int | None,
                        reason: str, attributes: Mapping[str, Any]) -> None:
    """An attempt whose process died, or was stopped, before it ended its own span: from its start
    until `settled` (from `clock`), failed, saying why (`runner.retry_cause`); nothing when off."""
    if _tracer is None or settled is None:
        return
    started = nanoseconds(since) if since is not None else settled
    lost = {**attributes, "runner.attempt": attempt, "runner.retry_cause": reason}
    record_span(f"attempt {attempt}", traceparent, started, lost, kind="CONSUMER", error=reason, ended=settled)
