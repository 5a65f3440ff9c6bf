"""Idempotency-Key: one key, one function, one input -> one job; anything else with that key -> 409."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
import redis
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

import runner.services.idempotency as idempotency
import runner.services.invocation as invocation
from runner.config import Settings
from runner.services.idempotency import Claim, claim_key, fingerprint
from runner.store.sql_store import Store

ApiError = Callable[..., dict[str, Any]]
KEY = "order-4711-attempt"
CALC = "simple_calculation"


def post(client: FlaskClient, body: Any, key: str | None = KEY, name: str = CALC, query: str = "") -> TestResponse:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/functions/{name}/invocations{query}", json=body, headers=headers)


def test_the_same_request_twice_makes_one_job(client: FlaskClient, store: Store,
                                              enqueued_ids: Callable[[], list[str]]) -> None:
    first = post(client, {"expression": "6*7"})
    second = post(client, {"expression": "6*7"})
    assert first.status_code == second.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.get_json()["id"] == first.get_json()["id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert enqueued_ids() == [first.get_json()["id"]]
    rows, _ = store.list()
    assert [(row.record.id, row.record.idempotency_key) for row in rows] == [(first.get_json()["id"], KEY)]


def test_the_same_input_written_differently_is_the_same_request(client: FlaskClient) -> None:
    # Defaults filled in and key order do not change the validated arguments.
    first = post(client, {"fail_times": 0}, name="unreliable_task")
    again = client.post("/functions/unreliable_task/invocations", data='{ }',
                        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.get_json()["id"] == first.get_json()["id"]


def test_a_replay_after_the_job_finished_shows_the_result(client: FlaskClient, run_jobs: Callable[..., bool]) -> None:
    job_id = post(client, {"expression": "2+3"}).get_json()["id"]
    run_jobs()
    replay = post(client, {"expression": "2+3"}, query="?wait=1")
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["id"] == job_id and replay.get_json()["result"]["result"] == 5
    later = post(client, {"expression": "2+3"})
    assert later.status_code == 202 and later.get_json()["status"] == "finished"


def test_a_replay_works_after_redis_forgot_the_job(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    job_id = post(client, {"expression": "1"}).get_json()["id"]
    connection.delete(f"rq:job:{job_id}")
    replay = post(client, {"expression": "1"})
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_json()["id"] == job_id


@pytest.mark.parametrize(
    ("body", "name", "conflict"),
    [
        pytest.param({"expression": "6*8"}, CALC, "input", id="other-input"),
        pytest.param({"fail_times": 1}, "unreliable_task", "function", id="other-function"),
    ],
)
def test_the_same_key_for_something_else_is_a_conflict(
    client: FlaskClient, api_error: ApiError, enqueued_ids: Callable[[], list[str]],
    body: dict[str, Any], name: str, conflict: str,
) -> None:
    job_id = post(client, {"expression": "6*7"}).get_json()["id"]
    refused = api_error(post(client, body, name=name), 409, "idempotency_conflict")
    assert conflict in refused["message"]
    assert refused["details"] == {"header": "Idempotency-Key", "job_id": job_id}
    assert enqueued_ids() == [job_id]


def test_invalid_input_with_a_key_claims_nothing(client: FlaskClient, api_error: ApiError) -> None:
    api_error(post(client, {"expression": ""}), 422, "invalid_input")
    assert post(client, {"expression": "1"}).status_code == 202
    assert "Idempotent-Replayed" not in post(client, {"expression": "2"}, key="another").headers


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("k" * 256, id="256-chars"),
        pytest.param("clé", id="non-ascii"),
        pytest.param("tab\there", id="tab"),
        pytest.param("del\x7f", id="del"),
    ],
)
def test_a_bad_key_is_refused(client: FlaskClient, api_error: ApiError, key: str,
                              assert_nothing_enqueued: Callable[[], None]) -> None:
    body = api_error(post(client, {"expression": "1"}, key=key), 400, "malformed_request")
    assert "Idempotency-Key" in body["message"]
    assert_nothing_enqueued()


@pytest.mark.parametrize("key", ["a", "k" * 255, "with spaces inside", "~!@#$%^&*()_+{}|:<>?"])
def test_any_printable_key_up_to_255_characters_works(client: FlaskClient, key: str) -> None:
    first = post(client, {"expression": "1"}, key=key)
    assert first.status_code == 202
    assert post(client, {"expression": "1"}, key=key).get_json()["id"] == first.get_json()["id"]


def test_the_claim_lives_for_the_configured_ttl(
    make_client: Callable[..., FlaskClient], settings: Settings, connection: fakeredis.FakeRedis
) -> None:
    client = make_client(settings=replace(settings, idempotency_ttl=120))
    job_id = post(client, {"expression": "1"}).get_json()["id"]
    assert 110 < connection.ttl(claim_key(KEY)) <= 120
    stored = Claim.from_json(connection.get(claim_key(KEY)))
    expected = (job_id, CALC, fingerprint(CALC, {"expression": "1"}))
    assert (stored.job_id, stored.function, stored.fingerprint) == expected
    assert Settings().idempotency_ttl == 24 * 3600
    assert Settings.from_env({"RUNNER_IDEMPOTENCY_TTL": "60"}).idempotency_ttl == 60


def test_a_failed_enqueue_releases_the_key(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, api_error: ApiError, connection: fakeredis.FakeRedis,
    store: Store,
) -> None:
    def redis_away(*_args: Any, **_kwargs: Any) -> None:
        raise redis.exceptions.ConnectionError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(invocation, "submit_job", redis_away)
        api_error(post(client, {"expression": "1"}), 503, "backend_unavailable")
    assert connection.get(claim_key(KEY)) is None
    assert store.list() == ([], None)
    again = post(client, {"expression": "1"})
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers


def test_a_claim_whose_job_never_appeared_is_taken_over(client: FlaskClient, connection: fakeredis.FakeRedis) -> None:
    dead = Claim("deadbeef", CALC, fingerprint(CALC, {"expression": "1"}), time.time() - 60)
    connection.set(claim_key(KEY), dead.to_json())
    response = post(client, {"expression": "1"})
    assert response.status_code == 202 and "Idempotent-Replayed" not in response.headers
    assert json.loads(connection.get(claim_key(KEY)))["job_id"] == response.get_json()["id"] != "deadbeef"


def test_a_claim_still_in_flight_is_a_conflict_after_a_short_wait(
    client: FlaskClient, connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, api_error: ApiError
) -> None:
    monkeypatch.setattr(idempotency, "REPLAY_WAIT_SECONDS", 0.05)
    busy = Claim("cafebabe", CALC, fingerprint(CALC, {"expression": "1"}), time.time())
    connection.set(claim_key(KEY), busy.to_json())
    body = api_error(post(client, {"expression": "1"}), 409, "idempotency_conflict")
    assert "still being processed" in body["message"]


def test_fingerprints_ignore_key_order_but_not_values() -> None:
    assert fingerprint("f", {"a": 1, "b": [1, 2]}) == fingerprint("f", {"b": [1, 2], "a": 1})
    assert fingerprint("f", {"a": 1}) != fingerprint("f", {"a": 2})
    assert fingerprint("f", {"a": 1}) != fingerprint("g", {"a": 1})
    assert fingerprint("f", {"a": 1}) != fingerprint("f", {"a": 1.5})
