"""Schemathesis against a real stack's /openapi.json: no 5xx, and every response (body and headers) as documented.

Each operation gets a bounded number of generated requests. The event stream (a long-lived
response) is left out, and so is `?wait=` (it would only make requests slow). `X-Callback-Url`
only ever names loopback addresses here (refused with 422 without a DNS lookup), so no generated
request makes a worker POST to a host on the internet. `?delay=`/`?at=` far ahead only leave
scheduled jobs behind; nothing waits for them.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import Stack

MAX_EXAMPLES = 20
REQUEST_TIMEOUT = 10
TIME_BUDGET_SECONDS = 60
# The event stream is long-lived; gated_progress (a test probe) holds a worker until a gate file appears,
# attempt_report and held_first (others) for the seconds they are given; record_run (another) appends to the file
# its input names.
SKIPPED_PATHS = ("/jobs/{job_id}/events", "/functions/gated_progress/invocations",
                 "/functions/attempt_report/invocations", "/functions/held_first/invocations",
                 "/functions/record_run/invocations")
CHECKS = [not_a_server_error, response_schema_conformance, response_headers_conformance, status_code_conformance,
          content_type_conformance]
CALLBACK_HEADER = "X-Callback-Url"
LOOPBACK_CALLBACKS = ["http://127.0.0.1:9/hook", "https://[::1]:9/hook"]
# Operations and invocation parameters added after the first version of the document: the run must use them.
REQUIRED_OPERATIONS = ("POST /jobs/{job_id}/cancel", "POST /jobs/{job_id}/retry",
                       "POST /functions/simple_calculation/invocations")
INVOCATION_PARAMETERS = ("delay", "at", "Idempotency-Key", CALLBACK_HEADER)


def without_slow_parts(document: dict[str, Any]) -> dict[str, Any]:
    """The document minus the slow operations and `wait`, with callback URLs that are refused at once."""
    trimmed = copy.deepcopy(document)
    for path in SKIPPED_PATHS:
        trimmed["paths"].pop(path, None)
    for operations in trimmed["paths"].values():
        for operation in operations.values():
            operation["parameters"] = [p for p in operation.get("parameters", []) if p["name"] != "wait"]
            for parameter in operation["parameters"]:
                if parameter["name"] == CALLBACK_HEADER:
                    parameter["schema"] = {"type": "string", "enum": LOOPBACK_CALLBACKS}
    return trimmed


@pytest.fixture(scope="module")
def api_schema(sqlite_stack: Stack) -> Any:
    """The stack's own document, loaded by schemathesis."""
    response = sqlite_stack.get("/openapi.json")
    assert response.status_code == 200
    return schemathesis.openapi.from_dict(without_slow_parts(response.json()))


def check_operation(operation: Any, mode: GenerationMode, base_url: str) -> Counter[str]:
    """Send generated requests to one operation; raise at the first response that breaks a check.

    Returns how many requests were sent (`requests`) and how many carried each query or header parameter.
    """
    sent: Counter[str] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES // 2,  # per mode: positive and negative make MAX_EXAMPLES
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        sent.update(["requests", *(case.query or {}), *(case.headers or {})])
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=REQUEST_TIMEOUT)

    run()
    return sent


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_the_api_answers_as_documented(api_schema: Any, sqlite_stack: Stack, mode: GenerationMode) -> None:
    started = time.monotonic()
    failures: dict[str, str] = {}
    skipped: list[str] = []
    sent: Counter[str] = Counter()
    seconds: dict[str, float] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    assert set(REQUIRED_OPERATIONS) <= {operation.label for operation in operations}
    for operation in operations:
        operation_started = time.monotonic()
        try:
            sent += check_operation(operation, mode, sqlite_stack.url)
        except (Failure, FailureGroup) as failure:  # collected, so one run reports every broken operation
            failures[operation.label] = str(failure)[:2000]
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, operation.label
            skipped.append(operation.label)  # no parameters or body: nothing invalid to send
        seconds[operation.label] = time.monotonic() - operation_started
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert len(skipped) < len(operations) / 2, skipped
    assert sent["requests"] >= 3 * (len(operations) - len(skipped)), sent  # generation really ran
    assert all(sent[name] > 0 for name in INVOCATION_PARAMETERS), sent
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:5]
    assert time.monotonic() - started < TIME_BUDGET_SECONDS, slowest
