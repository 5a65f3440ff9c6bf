"""Unit tests of unreliable_task, with the attempt number simulated (outside a worker it is always 1)."""

from __future__ import annotations

import random

import pytest

import functions.unreliable_task as module
from functions.unreliable_task import unreliable_task
from runner.errors import InvalidInput


def on_attempt(monkeypatch: pytest.MonkeyPatch, attempt: int) -> None:
    """Make the task believe it runs as `attempt`."""
    monkeypatch.setattr(module, "current_attempt", lambda: attempt)


def test_succeeds_on_first_attempt_by_default() -> None:
    assert unreliable_task() == {
        "attempt": 1,
        "succeeded_on_attempt": 1,
        "planned_failures": 0,
        "failure_rate": None,
    }


def test_fails_planned_attempts_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    on_attempt(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="Simulated failure on attempt 1 of 1 planned failures"):
        unreliable_task(fail_times=1)
    on_attempt(monkeypatch, 2)
    outcome = unreliable_task(fail_times=1)
    assert outcome["attempt"] == outcome["succeeded_on_attempt"] == 2
    assert outcome["planned_failures"] == 1


@pytest.mark.parametrize(("attempt", "fails"), [(1, True), (2, True), (3, True), (4, False)])
def test_fails_exactly_fail_times_attempts(monkeypatch: pytest.MonkeyPatch, attempt: int, fails: bool) -> None:
    on_attempt(monkeypatch, attempt)
    if fails:
        with pytest.raises(RuntimeError, match=f"attempt {attempt} of 3"):
            unreliable_task(fail_times=3)
    else:
        assert unreliable_task(fail_times=3)["succeeded_on_attempt"] == 4


# Draws of random.Random("42:<attempt>"): 0.955, 0.317, 0.731, 0.268 for attempts 1-4.
@pytest.mark.parametrize(("attempt", "fails"), [(1, False), (2, True), (3, False), (4, True)])
def test_seeded_failure_rate_is_deterministic(monkeypatch: pytest.MonkeyPatch, attempt: int, fails: bool) -> None:
    on_attempt(monkeypatch, attempt)
    for _ in range(3):  # the same seed and attempt always give the same outcome
        if fails:
            with pytest.raises(RuntimeError, match=f"random failure on attempt {attempt}"):
                unreliable_task(failure_rate=0.5, seed=42)
        else:
            assert unreliable_task(failure_rate=0.5, seed=42)["failure_rate"] == 0.5


@pytest.mark.parametrize("seed", [None, 0, 42])
@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_failure_rate_one_always_fails(monkeypatch: pytest.MonkeyPatch, seed: int | None, attempt: int) -> None:
    on_attempt(monkeypatch, attempt)
    with pytest.raises(RuntimeError, match="random failure"):
        unreliable_task(failure_rate=1.0, seed=seed)


@pytest.mark.parametrize("seed", [None, 0, 42])
@pytest.mark.parametrize("attempt", [1, 2, 5])
def test_failure_rate_zero_never_fails(monkeypatch: pytest.MonkeyPatch, seed: int | None, attempt: int) -> None:
    on_attempt(monkeypatch, attempt)
    assert unreliable_task(failure_rate=0.0, seed=seed)["attempt"] == attempt


def test_unseeded_failure_rate_uses_global_random(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "random", lambda: 0.3)
    with pytest.raises(RuntimeError, match="drew 0.3000"):
        unreliable_task(failure_rate=0.4)
    assert unreliable_task(failure_rate=0.2)["succeeded_on_attempt"] == 1


def test_reports_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(module, "progress", lambda percent, message="": calls.append(percent))
    unreliable_task()
    assert calls == [50, 100]


def test_declared_retry_policy() -> None:
    spec = unreliable_task.__runner_function__  # type: ignore[attr-defined]
    assert (spec.queue, spec.timeout, spec.retries, spec.backoff) == ("demo_tasks", 30, 3, (1, 2, 3))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"fail_times": -1}, "fail_times"),
        ({"fail_times": 101}, "fail_times"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": -0.1}, "failure_rate"),
        ({"seed": "abc"}, "seed"),
        ({"seed": 10**5000}, "seed"),  # str() of it raised ValueError in the worker: retried
        ({"seed": 2**63}, "seed"),
        ({"retries": 1}, "retries"),
    ],
)
def test_validation_rejects_bad_input(payload: dict[str, object], field: str) -> None:
    spec = unreliable_task.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    assert field in {detail["field"] for detail in caught.value.details}


def test_validation_fills_defaults() -> None:
    spec = unreliable_task.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({}) == {"fail_times": 0, "failure_rate": None, "seed": None}


def test_schema_publishes_bounds() -> None:
    spec = unreliable_task.__runner_function__  # type: ignore[attr-defined]
    properties = spec.input_schema()["properties"]
    assert (properties["fail_times"]["minimum"], properties["fail_times"]["maximum"]) == (0, 100)
    assert {"type": "number", "minimum": 0.0, "maximum": 1.0} in properties["failure_rate"]["anyOf"]
