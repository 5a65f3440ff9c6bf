"""The @function decorator, input models built from signatures, and the registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from runner import function
from runner.authoring.registry import DEFAULT_QUEUE, DEFAULT_TIMEOUT, SPEC_ATTRIBUTE, Registry, make_spec
from runner.authoring.spec import FunctionSpec
from runner.errors import FunctionDefinitionError, FunctionNotFound, InvalidInput
from runner.services.fleet import default_queues


def spec_of(func: Callable[..., Any]) -> FunctionSpec:
    spec = getattr(func, SPEC_ATTRIBUTE)
    assert isinstance(spec, FunctionSpec)
    return spec


def declare(func: Callable[..., Any], *, name: str | None = None, queue: str = DEFAULT_QUEUE) -> FunctionSpec:
    """A spec for `func` with the default policy (the decorator's checks, without decorating)."""
    return make_spec(func, queue=queue, timeout=DEFAULT_TIMEOUT, retries=0, backoff=None, name=name)


# Throwaway functions, at module level so that their (string) annotations resolve.


def typed(x: int) -> int:
    return x


def untyped(x):  # type: ignore[no-untyped-def]
    return x


def star_args(*args: int) -> int:
    return sum(args)


def star_kwargs(**kwargs: int) -> int:
    return sum(kwargs.values())


def unresolvable(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
    """Its hint names a type that does not exist."""


def greet(name: str, times: int = 1, loud: bool = False) -> str:
    """Greet someone."""
    text = " ".join([f"hello {name}"] * times)
    return text.upper() if loud else text


def schedule(when: datetime, tags: list[str] | None = None, ratio: float = 0.5) -> None:
    """Has a datetime parameter: validation must hand back JSON-ready values."""


class Order(pydantic.BaseModel):
    item: str
    quantity: int = pydantic.Field(default=1, ge=1)


received_orders: list[Any] = []


def place_order(order: Order) -> dict[str, Any]:
    """Takes one pydantic model."""
    received_orders.append(order)
    return {"item": order.item, "quantity": order.quantity}


# The decorator


def test_decorator_records_policy_and_leaves_function_callable() -> None:
    @function(queue="ai_processing", timeout=120, retries=3, backoff=[5, 30, 120])
    def text_generation(prompt: str, max_tokens: int = 128) -> dict[str, Any]:
        """Generate text from a prompt.

        More words that are not part of the description.
        """
        return {"text": prompt[:max_tokens]}

    spec = spec_of(text_generation)
    assert (spec.name, spec.queue, spec.timeout, spec.retries, spec.backoff) == (
        "text_generation",
        "ai_processing",
        120,
        3,
        (5, 30, 120),
    )
    assert spec.policy() == {"queue": "ai_processing", "timeout": 120, "retries": 3, "backoff": [5, 30, 120],
                             "concurrency": None, "concurrency_key": None, "max_queued": None, "expires": None}
    assert spec.description == "Generate text from a prompt."
    assert spec.func is text_generation
    assert spec.path.endswith(".text_generation")
    # Still the user's own function, callable as before.
    assert text_generation("abcdef", max_tokens=3) == {"text": "abc"}


def test_bare_decorator_uses_defaults() -> None:
    @function
    def noop() -> None:
        pass

    spec = spec_of(noop)
    assert (spec.name, spec.queue, spec.timeout, spec.retries, spec.backoff) == (
        "noop",
        DEFAULT_QUEUE,
        DEFAULT_TIMEOUT,
        0,
        (),
    )
    assert spec.description == ""
    assert noop() is None


def test_decorator_name_overrides_function_name() -> None:
    @function(name="renamed")
    def original(x: int) -> int:
        return x * 2

    assert spec_of(original).name == "renamed"
    assert original(2) == 4


@pytest.mark.parametrize(
    ("func", "options", "message"),
    [
        pytest.param(typed, {"queue": "bad queue"}, "queue name", id="queue-with-space"),
        pytest.param(typed, {"queue": "rq:jobs"}, "queue name", id="queue-with-colon"),
        pytest.param(typed, {"queue": ""}, "queue name", id="empty-queue"),
        pytest.param(typed, {"queue": "q" * 65}, "queue name", id="queue-too-long"),
        pytest.param(typed, {"timeout": 0}, "timeout", id="timeout-0"),
        pytest.param(typed, {"timeout": -5}, "timeout", id="negative-timeout"),
        pytest.param(typed, {"timeout": 1.5}, "timeout", id="fractional-timeout"),
        pytest.param(typed, {"retries": -1}, "retries", id="retries--1"),
        pytest.param(typed, {"backoff": [1, -1]}, "backoff", id="negative-backoff"),
        pytest.param(typed, {"backoff": [0.5]}, "backoff", id="fractional-backoff"),
        pytest.param(untyped, {}, "parameter 'x' has no type hint", id="missing-type-hint"),
        pytest.param(star_args, {}, "*args/**kwargs", id="star-args"),
        pytest.param(star_kwargs, {}, "*args/**kwargs", id="star-kwargs"),
        pytest.param(unresolvable, {}, "cannot resolve type hints", id="unresolvable-hint"),
    ],
)
def test_bad_declaration_raises(func: Callable[..., Any], options: dict[str, Any], message: str) -> None:
    with pytest.raises(FunctionDefinitionError) as caught:
        function(**options)(func)
    assert message in str(caught.value)
    assert not hasattr(func, SPEC_ATTRIBUTE)


@pytest.mark.parametrize("queue", ["default", "ai_processing", "demo-tasks", "v1.queue", "Q" * 64])
def test_good_queue_names_are_accepted(queue: str) -> None:
    assert declare(typed, queue=queue).queue == queue


# Input models


def test_schema_generated_from_signature() -> None:
    schema = declare(greet).input_schema()
    assert schema["type"] == "object"
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert list(properties) == ["name", "times", "loud"]
    assert properties["name"]["type"] == "string"
    assert (properties["times"]["type"], properties["times"]["default"]) == ("integer", 1)
    assert (properties["loud"]["type"], properties["loud"]["default"]) == ("boolean", False)


def test_schema_is_generated_once_and_each_caller_gets_its_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = declare(greet)
    generated: list[int] = []
    real = spec.input_model.model_json_schema
    monkeypatch.setattr(spec.input_model, "model_json_schema", lambda: generated.append(1) or real())
    first = spec.input_schema()
    first["properties"].clear()
    assert list(spec.input_schema()["properties"]) == ["name", "times", "loud"]
    assert len(generated) == 1


def test_validate_returns_json_ready_kwargs_with_defaults() -> None:
    arguments = declare(schedule).validate({"when": "2024-05-06T07:08:09Z"})
    assert arguments == {"when": "2024-05-06T07:08:09Z", "tags": None, "ratio": 0.5}
    assert json.loads(json.dumps(arguments)) == arguments


def test_validate_coerces_like_the_schema_says() -> None:
    assert declare(greet).validate({"name": "ada", "times": "2"}) == {"name": "ada", "times": 2, "loud": False}


def test_call_revalidates_and_passes_typed_values() -> None:
    spec = declare(greet)
    assert spec.call({"name": "ada", "times": 2, "loud": True}) == "HELLO ADA HELLO ADA"
    with pytest.raises(InvalidInput):
        spec.call({"name": "ada", "times": "many"})


def test_call_hands_a_datetime_back_to_the_function() -> None:
    seen: list[Any] = []
    spec = declare(schedule)
    object.__setattr__(spec, "func", lambda **kwargs: seen.append(kwargs))
    spec.call(spec.validate({"when": "2024-05-06T07:08:09Z"}))
    assert seen == [{"when": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "tags": None, "ratio": 0.5}]


def test_single_pydantic_model_parameter_is_the_input_model() -> None:
    spec = declare(place_order)
    assert spec.takes_model is True
    assert spec.input_model is Order
    assert spec.input_schema() == Order.model_json_schema()
    assert spec.validate({"item": "tea"}) == {"item": "tea", "quantity": 1}
    received_orders.clear()
    assert spec.call({"item": "tea", "quantity": 3}) == {"item": "tea", "quantity": 3}
    assert len(received_orders) == 1 and isinstance(received_orders[0], Order)
    with pytest.raises(InvalidInput) as caught:
        spec.validate({"item": "tea", "quantity": 0})
    assert [detail["field"] for detail in caught.value.details] == ["quantity"]


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        pytest.param({}, {"name"}, id="missing"),
        pytest.param({"name": "a", "times": "many"}, {"times"}, id="wrong-type"),
        pytest.param({"name": "a", "colour": "red"}, {"colour"}, id="extra"),
        pytest.param({"name": 1, "times": "x", "loud": "perhaps", "other": 0}, {"name", "times", "loud", "other"},
                     id="four-at-once"),
    ],
)
def test_invalid_input_names_each_bad_field(payload: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(InvalidInput) as caught:
        declare(greet).validate(payload)
    details = caught.value.details
    assert {detail["field"] for detail in details} == fields
    assert all(set(detail) == {"field", "message", "type"} for detail in details)
    assert caught.value.code == "invalid_input"
    assert "greet" in caught.value.message


@pytest.mark.parametrize("payload", [None, [], ["name"], "name", 3])
def test_validate_rejects_a_payload_that_is_not_an_object(payload: Any) -> None:
    with pytest.raises(InvalidInput, match="must be a JSON object"):
        declare(greet).validate(payload)


# The registry


def test_get_unknown_function_raises_function_not_found() -> None:
    registry = Registry([declare(greet)])
    with pytest.raises(FunctionNotFound) as caught:
        registry.get("nope")
    assert caught.value.details == {"known": ["greet"]}


def test_two_functions_with_one_name_are_an_error() -> None:
    registry = Registry([declare(greet, name="same")])
    with pytest.raises(FunctionDefinitionError, match="'same'"):
        registry.add(declare(typed, name="same"))
    assert registry.get("same").func is greet


def test_adding_the_same_function_twice_is_harmless() -> None:
    registry = Registry([declare(greet), declare(greet)])
    assert len(registry) == 1


def test_discovers_the_functions_package() -> None:
    registry = Registry.discover("functions")
    names = [spec.name for spec in registry]
    assert {"simple_calculation", "unreliable_task"} <= set(names)
    assert names == sorted(names)
    assert "simple_calculation" in registry and "nope" not in registry
    assert registry.get("simple_calculation").queue == "demo_tasks"
    assert registry.get("unreliable_task").retries == 3
    assert "demo_tasks" in registry.queues()


@pytest.mark.parametrize("packages", ["functions,functions", " functions , functions ,", "functions,"])
def test_discovery_accepts_a_comma_separated_list(packages: str) -> None:
    once = [spec.name for spec in Registry.discover("functions")]
    assert [spec.name for spec in Registry.discover(packages)] == once


def test_discovery_of_a_missing_package_fails_loudly() -> None:
    with pytest.raises(ModuleNotFoundError):
        Registry.discover("no_such_functions_package")


@pytest.mark.parametrize(
    ("queues", "expected"),
    [
        pytest.param([], ["default"], id="none"),
        pytest.param(["default"], ["default"], id="default-only"),
        pytest.param(
            ["zeta", "default", "demo_tasks", "alpha", "ai_processing"],
            ["ai_processing", "demo_tasks", "alpha", "zeta", "default"],
            id="all-kinds",
        ),
        pytest.param(["beta", "demo_tasks", "beta"], ["demo_tasks", "beta", "default"], id="no-ai"),
        pytest.param(["ai_processing"], ["ai_processing", "default"], id="ai-only"),
    ],
)
def test_default_queues_order(queues: list[str], expected: list[str]) -> None:
    registry = Registry([declare(typed, name=f"f{index}", queue=queue) for index, queue in enumerate(queues)])
    # Completion callbacks (runner.services.callbacks) are delivered from their own queue, served last.
    assert default_queues(registry) == [*expected, "callbacks"]


def test_default_queues_of_the_real_functions() -> None:
    registry = Registry.discover("functions")
    ordered = default_queues(registry)
    assert set(ordered) == set(registry.queues()) | {"default", "callbacks"}
    assert len(ordered) == len(set(ordered))
    assert ordered[-2:] == ["default", "callbacks"]
    assert ordered[0] == ("ai_processing" if "ai_processing" in registry.queues() else "demo_tasks")
