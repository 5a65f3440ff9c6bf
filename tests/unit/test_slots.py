"""Slots for long requests in one web process (runner.services.slots), and how the API uses them for `?wait=`."""

from __future__ import annotations

import threading

from flask.testing import FlaskClient

from runner.services.slots import Slots


def test_a_process_bound_and_a_client_bound() -> None:
    slots = Slots(3, per_client=2)
    assert [slots.take("a"), slots.take("a"), slots.take("a")] == [None, None, "client"]
    assert slots.take("b") is None
    assert slots.full and slots.in_use == 3
    assert slots.take("c") == "process"
    slots.give_back("a")
    assert not slots.full and slots.take("c") is None


def test_holding_gives_the_slot_back_even_when_the_block_raises() -> None:
    slots = Slots(1)
    try:
        with slots.holding("a") as refused:
            assert refused is None and slots.full
            raise RuntimeError("the wait failed")
    except RuntimeError:
        pass
    assert slots.in_use == 0
    with slots.holding("a") as first, slots.holding("b") as second:
        assert (first, second) == (None, "process")
    assert slots.in_use == 0


def test_threads_never_take_more_than_the_bound() -> None:
    slots = Slots(5, per_client=5)
    taken: list[str | None] = []
    barrier = threading.Barrier(20)

    def take() -> None:
        barrier.wait()
        taken.append(slots.take("same"))

    threads = [threading.Thread(target=take) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken.count(None) == 5 and slots.in_use == 5


def test_readyz_reports_the_slots_and_a_saturated_process(client: FlaskClient) -> None:
    state = client.application.extensions["runner"]
    assert client.get("/readyz").get_json()["checks"]["waits"] == "0 of 4 in use"
    for number in range(state.waits.limit):
        assert state.waits.take(f"client-{number}") is None
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    body = response.get_json()
    assert body["error"] == "saturated" and "waits" in body["message"]
    assert body["details"]["saturated"] == ["waits"] and body["details"]["checks"]["waits"] == "4 of 4 in use"
    state.waits.give_back("client-0")
    assert client.get("/readyz").status_code == 200


def test_a_wait_beyond_the_bound_answers_at_once_with_the_job_as_it_is(client: FlaskClient) -> None:
    state = client.application.extensions["runner"]
    for _ in range(state.waits.per_client):
        assert state.waits.take("address:127.0.0.1") is None
    response = client.post("/functions/simple_calculation/invocations?wait=30", json={"expression": "1+1"})
    assert response.status_code == 202 and response.headers["Wait-Skipped"] == "client-limit"
    assert response.get_json()["status"] == "queued"


def test_a_bound_of_zero_turns_waiting_off_without_saturating() -> None:
    slots = Slots(0, per_client=2)
    assert slots.take("a") == "process"
    assert not slots.full  # /readyz stays 200: nothing to saturate
