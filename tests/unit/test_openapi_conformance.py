"""Real answers of the features added after the first OpenAPI document, checked against it.

Each response must have its status documented for its operation, a body that validates against
that status' schema (formats included), every required documented header, and documented
headers for the ones we set (`Location`, `Retry-After`, `Idempotent-Replayed`, `WWW-Authenticate`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fakeredis
import jsonschema_rs
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from runner import PermanentError, save_artifact
from runner.authoring.registry import Registry, make_spec
from runner.authoring.spec import FunctionSpec
from runner.config import Settings
from runner.rq_seam.queues import queue_for
from runner.services.callbacks import CALLBACK_QUEUE, signature

RunJobs = Callable[..., bool]
OUR_HEADERS = ("Location", "Retry-After", "Idempotent-Replayed", "WWW-Authenticate")
API_KEY = "conformance-key"


def reported(fail: bool = False) -> dict[str, bool]:
    """Write an artifact, then finish (or fail for good)."""
    save_artifact("out.txt", "hello", "text/plain")
    if fail:
        raise PermanentError("asked to fail")
    return {"ok": True}


def queued_once(n: int = 0) -> dict[str, int]:
    """Return its input; at most one waits, at most one runs."""
    return {"n": n}


def declare(func: Callable[..., Any], **limits: Any) -> FunctionSpec:
    return make_spec(func, queue="default", timeout=10, retries=0, backoff=None, name=None, **limits)


@pytest.fixture
def conformance_registry() -> Registry:
    return Registry([declare(reported), declare(queued_once, concurrency=1, max_queued=1)])


@pytest.fixture
def api(make_client: Callable[..., FlaskClient], conformance_registry: Registry, settings: Settings) -> FlaskClient:
    # Private callback URLs allowed, so an accepted X-Callback-Url needs no DNS.
    return make_client(registry_=conformance_registry, settings=replace(settings, callback_allow_private=True))


@pytest.fixture
def document(api: FlaskClient) -> dict[str, Any]:
    body: dict[str, Any] = api.get("/openapi.json").get_json()
    return body


@pytest.fixture
def conforms(document: dict[str, Any]) -> Callable[[str, str, TestResponse], Any]:
    """Assert `response` is as documented for `method path`; return its JSON body."""

    def check(method: str, path: str, response: TestResponse) -> Any:
        operation = document["paths"][path][method.lower()]
        status = str(response.status_code)
        assert status in operation["responses"], (method, path, status, response.get_data(as_text=True))
        documented = operation["responses"][status]
        schema = documented["content"][response.mimetype]["schema"]
        body = response.get_json()
        validator = jsonschema_rs.validator_for({**schema, "components": document["components"]},
                                                validate_formats=True)
        errors = [error.message for error in validator.iter_errors(body)]
        assert not errors, (method, path, status, errors, body)
        headers = documented.get("headers", {})
        for name, spec in headers.items():
            value = response.headers.get(name)
            assert value is not None or not spec["required"], (path, status, name)
            if value is not None:
                typed = int(value) if spec["schema"].get("type") == "integer" else value
                assert jsonschema_rs.validator_for(spec["schema"], validate_formats=True).is_valid(typed), (name, value)
        undocumented = [name for name in OUR_HEADERS if name in response.headers and name not in headers]
        assert not undocumented, (method, path, status, undocumented)
        return body

    return check


Conforms = Callable[[str, str, TestResponse], Any]
INVOKE_REPORTED = "/functions/reported/invocations"
INVOKE_QUEUED_ONCE = "/functions/queued_once/invocations"


def test_invocations_with_the_new_parameters_answer_as_documented(api: FlaskClient, conforms: Conforms) -> None:
    first = api.post(INVOKE_REPORTED, json={}, headers={"Idempotency-Key": "order-1",
                                                        "X-Callback-Url": "http://127.0.0.1:9/hook"})
    assert conforms("POST", INVOKE_REPORTED, first)["status"] == "queued"
    replay = api.post(INVOKE_REPORTED, json={}, headers={"Idempotency-Key": "order-1"})
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert conforms("POST", INVOKE_REPORTED, replay)["id"] == first.get_json()["id"]
    conflict = api.post(INVOKE_REPORTED, json={"fail": True}, headers={"Idempotency-Key": "order-1"})
    assert conforms("POST", INVOKE_REPORTED, conflict)["error"] == "idempotency_conflict"
    assert conflict.status_code == 409
    scheduled = api.post(f"{INVOKE_REPORTED}?delay=3600", json={})
    assert conforms("POST", INVOKE_REPORTED, scheduled)["status"] == "scheduled"
    at = api.post(f"{INVOKE_REPORTED}?at=2999-01-01T00:00:00Z", json={})
    assert at.status_code == 400 and conforms("POST", INVOKE_REPORTED, at)["error"] == "malformed_request"
    for query, headers in (("?delay=0", {}), ("?at=2030-01-01T00:00:00", {}), ("?delay=1&at=2030-01-01T00:00:00Z", {}),
                           ("", {"Idempotency-Key": "k" * 256})):
        refused = api.post(f"{INVOKE_REPORTED}{query}", json={}, headers=headers)
        assert refused.status_code == 400, (query, headers)
        conforms("POST", INVOKE_REPORTED, refused)
    unsafe = api.post(INVOKE_REPORTED, json={}, headers={"X-Callback-Url": "ftp://example.com/x"})
    assert unsafe.status_code == 422 and conforms("POST", INVOKE_REPORTED, unsafe)["error"] == "invalid_input"


def test_the_completion_callback_sends_what_the_document_says(
    api: FlaskClient, document: dict[str, Any], run_jobs: RunJobs, conformance_registry: Registry,
    connection: fakeredis.FakeRedis
) -> None:
    job_id = api.post(INVOKE_REPORTED, json={}, headers={"X-Callback-Url": "http://127.0.0.1:9/hook"}).get_json()["id"]
    assert run_jobs(registry_=conformance_registry)  # runs the job, not the delivery (queue `callbacks`)
    (delivery,) = queue_for(CALLBACK_QUEUE, connection).get_jobs()
    url, delivered_id, event, body = delivery.args
    callback = document["paths"][INVOKE_REPORTED]["post"]["callbacks"]["completion"]
    post = callback["{$request.header.X-Callback-Url}"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    view = json.loads(body)
    jsonschema_rs.validator_for({**schema, "components": document["components"]}, validate_formats=True).validate(view)
    assert (url, delivered_id, view["id"], view["status"]) == ("http://127.0.0.1:9/hook", job_id, job_id, "finished")
    headers = {parameter["name"]: parameter["schema"] for parameter in post["parameters"]}
    assert jsonschema_rs.validator_for(headers["X-Runner-Event"]).is_valid(event)
    assert jsonschema_rs.validator_for(headers["X-Runner-Signature"]).is_valid(signature(body.encode(), "secret"))


def test_a_full_queue_answers_429_as_documented(api: FlaskClient, conforms: Conforms) -> None:
    assert conforms("POST", INVOKE_QUEUED_ONCE, api.post(INVOKE_QUEUED_ONCE, json={}))["status"] == "queued"
    full = api.post(INVOKE_QUEUED_ONCE, json={})
    assert full.status_code == 429 and int(full.headers["Retry-After"]) > 0
    assert conforms("POST", INVOKE_QUEUED_ONCE, full)["error"] == "too_many_requests"
    functions = conforms("GET", "/functions", api.get("/functions"))["functions"]
    assert {(entry["name"], entry["concurrency"], entry["max_queued"]) for entry in functions} == {
        ("reported", None, None), ("queued_once", 1, 1)}
    conforms("GET", "/functions/{name}", api.get("/functions/queued_once"))


def test_job_views_with_artifacts_and_errors_match_the_schema(
    api: FlaskClient, conforms: Conforms, run_jobs: RunJobs, conformance_registry: Registry
) -> None:
    finished = api.post(INVOKE_REPORTED, json={}).get_json()["id"]
    failed = api.post(INVOKE_REPORTED, json={"fail": True}).get_json()["id"]
    assert run_jobs(registry_=conformance_registry)
    view = conforms("GET", "/jobs/{job_id}", api.get(f"/jobs/{finished}"))
    assert view["status"] == "finished" and view["artifacts"][0]["url"] == f"/jobs/{finished}/artifacts/out.txt"
    view = conforms("GET", "/jobs/{job_id}", api.get(f"/jobs/{failed}"))
    assert view["status"] == "failed" and view["error"]["type"] == "PermanentError" and view["artifacts"]
    assert len(conforms("GET", "/jobs", api.get("/jobs"))["jobs"]) == 2
    # Retry the failed job; a finished one cannot be retried, nor canceled.
    retried = api.post(f"/jobs/{failed}/retry")
    assert retried.status_code == 202 and retried.headers["Location"] == f"/jobs/{failed}"
    assert conforms("POST", "/jobs/{job_id}/retry", retried)["status"] == "queued"
    for action, expected in (("retry", "state_conflict"), ("cancel", "state_conflict")):
        refused = api.post(f"/jobs/{finished}/{action}")
        assert refused.status_code == 409
        assert conforms("POST", f"/jobs/{{job_id}}/{action}", refused)["error"] == expected


def test_cancel_answers_as_documented(api: FlaskClient, conforms: Conforms) -> None:
    job_id = api.post(f"{INVOKE_REPORTED}?delay=60", json={}).get_json()["id"]
    canceled = api.post(f"/jobs/{job_id}/cancel")
    assert canceled.status_code == 200
    assert conforms("POST", "/jobs/{job_id}/cancel", canceled)["status"] == "canceled"
    for action in ("cancel", "retry"):
        missing = api.post(f"/jobs/no-such-job/{action}")
        assert missing.status_code == 404
        assert conforms("POST", f"/jobs/{{job_id}}/{action}", missing)["error"] == "job_not_found"


@pytest.fixture
def locked_api(make_client: Callable[..., FlaskClient], settings: Settings,
               conformance_registry: Registry) -> FlaskClient:
    return make_client(registry_=conformance_registry, settings=replace(settings, api_keys=API_KEY))


def test_every_secured_operation_answers_401_as_documented(
    locked_api: FlaskClient, conforms: Conforms, document: dict[str, Any]
) -> None:
    checked = 0
    for path, operations in document["paths"].items():
        url = path.replace("{job_id}", "job").replace("{name}", "reported").replace("{upload_id}", "up")
        for method in operations:
            response = locked_api.open(url, method=method.upper())
            if path == "/healthz":
                assert response.status_code == 200
                continue
            assert response.status_code == 401, (method, path)
            assert conforms(method, path, response)["error"] == "unauthorized"
            checked += 1
    assert checked == sum(len(operations) for operations in document["paths"].values()) - 1 >= 15
    assert locked_api.get("/functions", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
