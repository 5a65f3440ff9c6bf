"""Tracing is off unless an OTLP endpoint is configured: no tracer, no exporter or SDK tracing imported, no hooks.

(redis-py 8 imports OpenTelemetry's API for its own opt-in metrics whenever it is installed.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.tracing import tracing_configured

# What the API and a worker import and call on their way, with tracing unconfigured.
EXERCISE = """
import sys
from runner import tracing
import api, api.tracing, runner.services.invocation, runner.worker.execution, runner.services.callbacks
from flask import Flask
app = Flask("t")
api.tracing.install_tracing(app)
tracing.start_tracing("x")
with tracing.span("s"), tracing.attempt_span(None, 1, {}):
    tracing.record_queue_wait(None, None, {})
    tracing.record_span("x", None, 0, {})
    tracing.record_lost_attempt(None, 1, None, tracing.clock(), "worker died", {})
assert tracing.clock() is None and tracing.traceparent_of({"traceparent": "00-1-2-01"}) is None
tracing.flush()
print(tracing.tracing_on(), tracing.current_traceparent(), dict(app.before_request_funcs),
      sorted(m for m in sys.modules if m.startswith(("opentelemetry.exporter", "opentelemetry.sdk.trace"))))
"""


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_SERVICE_NAME": "runner"}, False),  # other OTEL_* variables alone turn nothing on
])
def test_an_otlp_endpoint_turns_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing_configured(environ) is on


def test_unconfigured_tracing_starts_nothing_and_hooks_nothing() -> None:
    env = {"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "runner"}
    done = subprocess.run([sys.executable, "-c", EXERCISE], env=env, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == "False None {} []", done.stderr
