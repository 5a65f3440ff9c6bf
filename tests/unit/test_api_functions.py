"""GET /functions, GET /functions/<name>, POST /functions/<name>/invocations (and the API's error shape)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import runner.services.job_views
from runner.authoring.registry import Registry, make_spec
from runner.config import Settings
from runner.rq_seam.queues import queue_for
from runner.services.backends import Backends
from runner.services.job_views import JobView
from runner.store.sql_store import Store

JSON = "application/json"
DESCRIPTION_KEYS = {"name", "queue", "timeout", "retries", "backoff", "input_schema"}

Invoke = Callable[..., TestResponse]
ApiError = Callable[..., dict[str, Any]]


def test_list_functions(client: FlaskClient, registry: Registry) -> None:
    response = client.get("/functions")
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["functions"]
    names = [item["name"] for item in body["functions"]]
    assert names == [spec.name for spec in registry]
    assert {"simple_calculation", "unreliable_task"} <= set(names)
    for item in body["functions"]:
        assert DESCRIPTION_KEYS <= set(item)
        assert item["input_schema"]["type"] == "object"
    unreliable = body["functions"][names.index("unreliable_task")]
    assert (unreliable["queue"], unreliable["timeout"], unreliable["retries"], unreliable["backoff"]) == (
        "demo_tasks",
        30,
        3,
        [1, 2, 3],
    )


def test_get_one_function(client: FlaskClient) -> None:
    response = client.get("/functions/simple_calculation")
    assert response.status_code == 200
    body = response.get_json()
    assert DESCRIPTION_KEYS <= set(body)
    assert (body["name"], body["queue"], body["timeout"], body["retries"], body["backoff"]) == (
        "simple_calculation",
        "demo_tasks",
        30,
        0,
        [],
    )
    assert body["input_schema"]["required"] == ["expression"]
    assert body["input_schema"]["additionalProperties"] is False


@pytest.mark.parametrize("name", ["nope", "Simple_Calculation", "simple_calculation%00", "a" * 1000, "%E2%98%83"])
def test_get_unknown_function_is_a_json_404(client: FlaskClient, api_error: ApiError, name: str) -> None:
    body = api_error(client.get(f"/functions/{name}"), 404, "function_not_found")
    assert "simple_calculation" in body["details"]["known"]


def test_invocation_is_accepted_and_enqueued(
    invoke: Invoke, connection: fakeredis.FakeRedis, store: Store, enqueued_ids: Callable[[], list[str]]
) -> None:
    response = invoke("simple_calculation", {"expression": "2*(3+4)"})
    assert response.status_code == 202
    body = response.get_json()
    job_id = body["id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"
    assert (body["status"], body["function"], body["queue"]) == ("queued", "simple_calculation", "demo_tasks")
    assert body["input"] == {"expression": "2*(3+4)"}
    assert body["progress"]["percent"] == 0 and body["attempts"] == 0 and body["result"] is None
    assert queue_for("demo_tasks", connection).job_ids == [job_id]
    assert enqueued_ids() == [job_id]
    record = store.get(job_id)
    assert record is not None
    assert (record.function, record.queue, record.status, record.input) == (
        "simple_calculation",
        "demo_tasks",
        "queued",
        {"expression": "2*(3+4)"},
    )


def test_the_202_shows_the_job_exactly_as_its_stored_row_does(invoke: Invoke, store: Store) -> None:
    # The 202's view is made from the row as written (no ORM object); it must be the view the
    # stored row gives, and the row must carry every column that was written.
    response = invoke("simple_calculation", {"expression": "1+1"})
    body = response.get_json()
    record = store.get(body["id"])
    assert record is not None
    assert runner.services.job_views.view_from_record(record).to_dict() == body
    assert (record.progress_percent, record.progress_message, record.attempts) == (0, "queued", 0)
    assert record.updated_at == record.created_at
    assert (record.idempotency_key, record.callback_url, record.result, record.error) == (None, None, None, None)


def test_the_job_in_redis_and_its_row_say_the_same_creation_time(
    invoke: Invoke, client: FlaskClient, store: Store, connection: fakeredis.FakeRedis
) -> None:
    job_id = invoke("simple_calculation", {"expression": "1+1"}).get_json()["id"]
    live = client.get(f"/jobs/{job_id}").get_json()  # from Redis
    record = store.get(job_id)
    assert record is not None
    assert live["created_at"] == runner.services.job_views.view_from_record(record).created_at


def test_invocation_runs_to_a_result(
    invoke: Invoke, client: FlaskClient, run_jobs: Callable[..., bool], store: Store
) -> None:
    location = invoke("simple_calculation", {"expression": "2*(3+4)"}).headers["Location"]
    assert run_jobs()
    response = client.get(location)
    assert response.status_code == 200
    view = response.get_json()
    assert view["status"] == "finished"
    assert view["result"]["result"] == 14
    assert view["progress"]["percent"] == 100
    assert view["attempts"] == 1
    assert view["error"] is None
    for stamp in ("created_at", "started_at", "ended_at"):
        assert view[stamp].endswith("+00:00")
    record = store.get(view["id"])
    assert record is not None
    assert (record.status, record.result, record.attempts, record.progress_percent) == (
        "finished",
        view["result"],
        1,
        100,
    )


NESTED = "[" * 100_000


@pytest.mark.parametrize(
    ("name", "options", "status", "code"),
    [
        pytest.param("nope", {"json": {"expression": "1"}}, 404, "function_not_found", id="unknown-function"),
        pytest.param("simple_calculation", {"data": '{"expression": ', "content_type": JSON}, 400,
                     "malformed_request", id="malformed-json"),
        pytest.param("simple_calculation", {"data": "{'expression': '1'}", "content_type": JSON}, 400,
                     "malformed_request", id="single-quotes"),
        pytest.param("simple_calculation", {"json": [{"expression": "1"}]}, 400, "malformed_request", id="array"),
        pytest.param("simple_calculation", {"json": "1+1"}, 400, "malformed_request", id="string"),
        pytest.param("simple_calculation", {"json": 42}, 400, "malformed_request", id="number"),
        pytest.param("simple_calculation", {"data": "null", "content_type": JSON}, 400, "malformed_request",
                     id="null"),
        pytest.param("unreliable_task", {"data": '{"failure_rate": NaN}', "content_type": JSON}, 400,
                     "malformed_request", id="nan-literal"),
        pytest.param("unreliable_task", {"data": '{"failure_rate": Infinity}', "content_type": JSON}, 400,
                     "malformed_request", id="infinity-literal"),
        pytest.param("simple_calculation", {"data": NESTED, "content_type": JSON}, 400, "malformed_request",
                     id="deeply-nested"),
        pytest.param("simple_calculation", {"data": b'{"expression": "\xff"}', "content_type": JSON}, 400,
                     "malformed_request", id="not-utf8"),
        pytest.param("simple_calculation", {"data": '{"expression": "1"}', "content_type": "text/plain"}, 415,
                     "unsupported_media_type", id="text-plain"),
        pytest.param("simple_calculation", {"data": {"expression": "1"}}, 415, "unsupported_media_type",
                     id="form-urlencoded"),
        pytest.param("simple_calculation", {"data": {"expression": "1"}, "content_type": "multipart/form-data"},
                     415, "unsupported_media_type", id="multipart"),
        pytest.param("simple_calculation", {"data": '{"expression": "1"}'}, 415, "unsupported_media_type",
                     id="no-content-type"),
        pytest.param("simple_calculation", {"json": {"expression": "1"}, "query_string": {"wait": "abc"}}, 400,
                     "malformed_request", id="wait-abc"),
        pytest.param("simple_calculation", {"json": {"expression": "1"}, "query_string": {"wait": "-1"}}, 400,
                     "malformed_request", id="wait-negative"),
        pytest.param("simple_calculation", {"json": {"expression": "1"}, "query_string": {"wait": "nan"}}, 400,
                     "malformed_request", id="wait-nan"),
        pytest.param("simple_calculation", {"json": {"expression": "1"}, "query_string": {"wait": "inf"}}, 400,
                     "malformed_request", id="wait-inf"),
    ],
)
def test_bad_request_is_rejected_before_anything_is_enqueued(
    invoke: Invoke,
    api_error: ApiError,
    assert_nothing_enqueued: Callable[[], None],
    name: str,
    options: dict[str, Any],
    status: int,
    code: str,
) -> None:
    api_error(invoke(name, **options), status, code)
    assert_nothing_enqueued()


@pytest.mark.parametrize(
    ("name", "payload", "field"),
    [
        pytest.param("simple_calculation", {}, "expression", id="missing-field"),
        pytest.param("simple_calculation", {"expression": 5}, "expression", id="wrong-type"),
        pytest.param("simple_calculation", {"expression": None}, "expression", id="null-field"),
        pytest.param("simple_calculation", {"expression": "1", "extra": 1}, "extra", id="extra-field"),
        pytest.param("simple_calculation", {"expression": ""}, "expression", id="empty-expression"),
        pytest.param("simple_calculation", {"expression": "1" * 1001}, "expression", id="too-long-expression"),
        pytest.param("unreliable_task", {"fail_times": "twice"}, "fail_times", id="wrong-type-int"),
        pytest.param("unreliable_task", {"fail_times": -1}, "fail_times", id="below-minimum"),
        pytest.param("unreliable_task", {"failure_rate": 2}, "failure_rate", id="above-maximum"),
    ],
)
def test_input_failing_the_schema_is_422_naming_the_field(
    invoke: Invoke,
    api_error: ApiError,
    assert_nothing_enqueued: Callable[[], None],
    name: str,
    payload: dict[str, Any],
    field: str,
) -> None:
    body = api_error(invoke(name, payload), 422, "invalid_input")
    assert field in [detail["field"] for detail in body["details"]]
    assert field in body["message"]
    assert_nothing_enqueued()


def test_empty_body_is_an_empty_object(invoke: Invoke, store: Store) -> None:
    response = invoke("unreliable_task")  # no body, no content type: every field has a default
    assert response.status_code == 202
    record = store.get(response.get_json()["id"])
    assert record is not None
    assert record.input == {"fail_times": 0, "failure_rate": None, "seed": None}


def test_empty_body_still_needs_the_required_fields(
    invoke: Invoke, api_error: ApiError, assert_nothing_enqueued: Callable[[], None]
) -> None:
    body = api_error(invoke("simple_calculation"), 422, "invalid_input")
    assert [detail["field"] for detail in body["details"]] == ["expression"]
    assert_nothing_enqueued()


def scale(x: float, factor: float = 2.0) -> float:
    """A function with an unbounded float parameter."""
    return x * factor


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e999"])
def test_number_that_overflows_a_float_is_rejected(
    make_client: Callable[..., FlaskClient],
    api_error: ApiError,
    assert_nothing_enqueued: Callable[[], None],
    number: str,
) -> None:
    # json.loads turns these into +/-inf: the body is then echoed back as `Infinity` (not JSON)
    # and the value reaches a worker, like the NaN literal the API already refuses.
    registry = Registry([make_spec(scale, queue="default", timeout=5, retries=0, backoff=None, name=None)])
    client = make_client(registry_=registry)
    response = client.post("/functions/scale/invocations", data=f'{{"x": {number}}}', content_type=JSON)
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    body = api_error(response, response.status_code)
    assert body["error"] in {"malformed_request", "invalid_input"}
    assert_nothing_enqueued()


def test_a_422_lists_at_most_50_fields_and_counts_the_rest(
    invoke: Invoke, api_error: ApiError, assert_nothing_enqueued: Callable[[], None]
) -> None:
    # 80,000 unknown keys (869 KB) made a 6.9 MB answer: one detail each, with the input echoed.
    payload = {"expression": "1+1", **{f"u{n}": 0 for n in range(80_000)}}
    response = invoke("simple_calculation", payload)
    body = api_error(response, 422, "invalid_input")
    assert len(response.data) < 10_000
    listed, more = body["details"][:-1], body["details"][-1]
    assert [detail["field"] for detail in listed] == [f"u{n}" for n in range(50)]
    assert all(set(detail) == {"field", "message", "type"} for detail in body["details"])
    assert more == {"field": "(more)", "message": "79950 more errors not listed", "type": "more_errors"}
    assert "(and 79997 more)" in body["message"]
    assert_nothing_enqueued()


def test_a_long_field_name_is_cut_in_the_422(invoke: Invoke, api_error: ApiError) -> None:
    body = api_error(invoke("simple_calculation", {"expression": "1", "k" * 500_000: 1}), 422, "invalid_input")
    assert body["details"][0]["field"] == "k" * 199 + "…"
    assert len(body["message"]) < 1_000


def echo(value: Any) -> Any:
    """A function that takes any JSON value."""
    return value


@pytest.mark.parametrize("depth", [256, 900])
def test_a_value_nested_past_what_pydantic_serializes_is_a_422(
    make_client: Callable[..., FlaskClient], api_error: ApiError, assert_nothing_enqueued: Callable[[], None],
    depth: int,
) -> None:
    # pydantic serializes at most ~255 levels: the API answered 500 for `data_processing` records 256 deep.
    registry = Registry([make_spec(echo, queue="default", timeout=5, retries=0, backoff=None, name=None)])
    client = make_client(registry_=registry)
    body = "{\"value\": " + "[" * depth + "]" * depth + "}"
    response = client.post("/functions/echo/invocations", data=body, content_type=JSON)
    assert api_error(response, 422, "invalid_input")["details"][0]["type"] == "too_deep"
    assert_nothing_enqueued()


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.api+json"])
def test_json_content_types_are_accepted(invoke: Invoke, content_type: str) -> None:
    response = invoke("simple_calculation", data='{"expression": "1+1"}', content_type=content_type)
    assert response.status_code == 202


@pytest.mark.parametrize("query", ["?wait=0", "?wait=0.05", "?wait="])
def test_wait_without_a_worker_returns_202_queued(invoke: Invoke, query: str) -> None:
    response = invoke("simple_calculation", {"expression": "1+1"}, query=query)
    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{response.get_json()['id']}"


@pytest.fixture
def worker_during_wait(monkeypatch: pytest.MonkeyPatch, run_jobs: Callable[..., bool]) -> None:
    """While ?wait waits, run the queued jobs in-process each time it blocks (no worker thread)."""
    real_wait = runner.services.job_views.view_after_end

    def wait(backends: Backends, job_id: str, seconds: float) -> JobView:
        run_jobs()
        return real_wait(backends, job_id, min(seconds, 0.05))

    monkeypatch.setattr(runner.services.job_views, "view_after_end", wait)


@pytest.mark.usefixtures("worker_during_wait")
@pytest.mark.parametrize(
    ("payload", "status", "outcome"),
    [
        ({"expression": "2*(3+4)"}, "finished", ("result", {"expression": "2*(3+4)", "result": 14, "operations": 2})),
        ({"expression": "1/0"}, "failed", ("error", {"type": "PermanentError", "message": "Division by zero"})),
    ],
)
def test_wait_returns_200_with_the_outcome(
    invoke: Invoke, payload: dict[str, Any], status: str, outcome: tuple[str, Any]
) -> None:
    response = invoke("simple_calculation", payload, query="?wait=5")
    assert response.status_code == 200
    view = response.get_json()
    assert response.headers["Location"] == f"/jobs/{view['id']}"
    assert (view["status"], view["attempts"], view[outcome[0]]) == (status, 1, outcome[1])


@pytest.mark.usefixtures("worker_during_wait")
def test_wait_gives_up_on_a_job_that_is_retried_later(invoke: Invoke) -> None:
    response = invoke("unreliable_task", {"fail_times": 1}, query="?wait=0.2")
    assert response.status_code == 202
    assert (response.get_json()["status"], response.get_json()["attempts"]) == ("scheduled", 1)


@pytest.fixture
def small_limit_client(make_client: Callable[..., FlaskClient]) -> FlaskClient:
    return make_client(settings=Settings(max_payload_bytes=100))


def body_of_length(length: int) -> str:
    """A valid simple_calculation body of exactly `length` bytes."""
    body = '{"expression": "' + "1" * (length - 18) + '"}'
    assert len(body) == length
    return body


@pytest.mark.parametrize("length", [101, 5000])
def test_body_over_the_limit_is_413(
    small_limit_client: FlaskClient, api_error: ApiError, assert_nothing_enqueued: Callable[[], None], length: int
) -> None:
    response = small_limit_client.post(
        "/functions/simple_calculation/invocations", data=body_of_length(length), content_type=JSON
    )
    api_error(response, 413, "payload_too_large")
    assert_nothing_enqueued()


def test_body_at_the_limit_is_accepted(small_limit_client: FlaskClient) -> None:
    response = small_limit_client.post(
        "/functions/simple_calculation/invocations", data=body_of_length(100), content_type=JSON
    )
    assert response.status_code == 202


@pytest.mark.parametrize("path", ["/nope", "/functions/simple_calculation/nope", "/jobs/x/y/z"])
def test_unknown_route_is_a_json_404(
    client: FlaskClient, api_error: ApiError, assert_nothing_enqueued: Callable[[], None], path: str
) -> None:
    api_error(client.get(path), 404, "not_found")
    api_error(client.post(path, json={"expression": "1"}), 404, "not_found")
    assert_nothing_enqueued()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("delete", "/functions", {"GET"}),
        ("post", "/functions", {"GET"}),
        ("get", "/functions/simple_calculation/invocations", {"POST"}),
        ("put", "/jobs", {"GET"}),
    ],
)
def test_wrong_method_is_a_json_405_with_allow(
    client: FlaskClient,
    api_error: ApiError,
    assert_nothing_enqueued: Callable[[], None],
    method: str,
    path: str,
    allowed: set[str],
) -> None:
    response = getattr(client, method)(path, json={"expression": "1"})
    api_error(response, 405, "method_not_allowed")
    assert allowed <= {word.strip() for word in response.headers["Allow"].split(",")}
    assert_nothing_enqueued()
