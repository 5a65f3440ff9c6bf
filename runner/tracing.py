"""OpenTelemetry traces of an invocation: off, and its SDK never started, unless configured.

`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns it on; the other
standard `OTEL_*` variables (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`,
`OTEL_SDK_DISABLED`, ...) configure it, read by the SDK itself. Spans go over OTLP/HTTP in batches.

One trace per invocation: the API request (api/tracing.py) and, under it, the enqueue; the job
carries the W3C `traceparent` of the request in its meta (`TRACEPARENT`), so each attempt in a
worker (one span per attempt, its wait in the queue before it, the retry cause on a failed one)
and the delivery of its completion callback join the same trace, on whatever host they run.
When off, every function here returns at once: no span, no meta field, no SDK or exporter imported.
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


def tracing_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, and the SDK not disabled)."""
    env = os.environ if environ is None else environ
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return not disabled and any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def start_tracing(service_name: str) -> None:
    """In this process (after any fork): export spans as the OTEL_* variables say; nothing when unset."""
    global _tracer
    if not tracing_configured():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)  # flushed at exit (shutdown_on_exit)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = provider.get_tracer("runner")


def tracing_on() -> bool:
    """Whether this process records spans."""
    return _tracer is not None


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


def record_queue_wait(traceparent: str | None, since: datetime | None, attributes: Mapping[str, Any]) -> None:
    """A span for the time a job waited in its queue, from `since` until now (nothing when off)."""
    if _tracer is None or since is None:
        return
    if since.tzinfo is None:  # RQ keeps UTC without saying so
        since = since.replace(tzinfo=UTC)
    started = int(since.timestamp() * 1e9)
    now = time.time_ns()
    waited = _tracer.start_span("queue wait", context=_context_of(traceparent), start_time=min(started, now),
                                attributes=dict(attributes))
    waited.end(end_time=now)


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
