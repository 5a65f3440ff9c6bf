"""What the runner knows of one function: its policy, and its input model built from its typed
signature, which checks an invocation's input (422 details) before anything is enqueued."""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from runner.authoring.timing import Timing
from runner.errors import FunctionDefinitionError, InvalidInput

# A 422 lists this many failed fields, then counts the rest in one final entry of this type.
MAX_DETAILS = 50


MORE_ERRORS_TYPE = "more_errors"


# A field path (an unknown key, say) is cut to this many characters in an error.
MAX_FIELD_CHARS = 200

# The longest `expires` (a function's default, or `?expires=`): a job may wait this long to start.
MAX_EXPIRES_SECONDS = 30 * 24 * 3600
# A `concurrency_key` value is part of a Redis key: longer values are refused (422).
MAX_CONCURRENCY_KEY_CHARS = 200


@dataclass(frozen=True, eq=False)  # hashed by identity: its input is a dict, and specs are cache keys
class DeclaredSchedule:
    """A schedule declared with the function (`@function(schedule=...)`)."""

    timing: Timing
    input: dict[str, Any]


@dataclass(frozen=True)
class FunctionSpec:
    """What the runner knows of one user function: its policy and its input model."""

    name: str
    func: Callable[..., Any]
    queue: str
    timeout: int
    retries: int
    backoff: tuple[int, ...]
    input_model: type[pydantic.BaseModel]
    description: str = ""
    # When the function takes one pydantic model, it is called with that model, not kwargs.
    takes_model: bool = False
    # At most this many attempts run at once across all workers (None: no limit).
    concurrency: int | None = None
    # Invocations beyond this many waiting jobs are refused with 429 (None: no limit).
    max_queued: int | None = None
    # Runs of the function declared in code (registered by workers as they start).
    schedule: DeclaredSchedule | None = None
    # With `concurrency`: the input field whose value gets its own `concurrency` slots (a tenant, say).
    concurrency_key: str | None = None
    # A job not started this many seconds after its acceptance never starts (None: it waits for ever).
    expires: float | None = None
    # An `async def` function: its jobs run on the worker's event loop, many at once.
    is_async: bool = False
    # A sync function declared `threads=True`: its jobs run in the worker's thread pool, many at once.
    threads: bool = False

    @property
    def runs_in_slots(self) -> bool:
        """Whether a worker runs several of its jobs at once (RUNNER_WORKER_SLOTS), not one at a time."""
        return self.is_async or self.threads

    @property
    def path(self) -> str:
        """The dotted import path of the user's function."""
        return f"{self.func.__module__}.{self.func.__qualname__}"

    @functools.cached_property
    def _input_schema(self) -> dict[str, Any]:
        # Generating it costs ~15 times a copy, and GET /functions lists every function's schema.
        return self.input_model.model_json_schema()

    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of the input, generated from the signature (once; each caller gets its own copy)."""
        return copy.deepcopy(self._input_schema)

    def validate(self, payload: Any, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check `payload` against the signature; return it as JSON-ready kwargs."""
        model = self._validated(payload, context)
        try:
            arguments: dict[str, Any] = model.model_dump(mode="json")
        except ValueError as exc:  # pydantic serializes at most ~255 levels of nested `Any` values
            raise InvalidInput(f"Input for {self.name!r} is invalid: {exc}.",
                               details=[{"field": "(body)", "message": str(exc), "type": "too_deep"}]) from None
        self.concurrency_key_of(arguments)  # an invocation without its key is refused here, not in a worker
        return arguments

    def concurrency_key_of(self, arguments: dict[str, Any]) -> str | None:
        """The value of the `concurrency_key` field in `arguments` (None without a key); InvalidInput when it
        is missing, empty, not a string or number, or too long."""
        if self.concurrency_key is None:
            return None
        value = arguments.get(self.concurrency_key)
        text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
        if not text or len(text) > MAX_CONCURRENCY_KEY_CHARS:
            message = (f"needs a string or whole number of 1 to {MAX_CONCURRENCY_KEY_CHARS} characters: "
                       f"{self.name!r} runs at most {self.concurrency} job(s) at once per value of it")
            raise InvalidInput(f"Input for {self.name!r} is invalid: {self.concurrency_key}: {message}.",
                               details=[{"field": self.concurrency_key, "message": message,
                                         "type": "concurrency_key"}])
        return text

    def call(self, payload: Any, context: dict[str, Any] | None = None) -> Any:
        """Re-validate `payload` (the worker never trusts the queue) and run the function (for an async
        function: make its coroutine, for the caller to await)."""
        model = self._validated(payload, context)
        if self.takes_model:
            return self.func(model)
        return self.func(**{name: getattr(model, name) for name in type(model).model_fields})

    def policy(self) -> dict[str, Any]:
        """How the function runs, as shown to users: queue, timeout, retry policy and limits."""
        return {
            "queue": self.queue,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff": list(self.backoff),
            "concurrency": self.concurrency,
            "concurrency_key": self.concurrency_key,
            "max_queued": self.max_queued,
            "expires": self.expires,
        }

    def _validated(self, payload: Any, context: dict[str, Any] | None) -> pydantic.BaseModel:
        if not isinstance(payload, dict):
            raise InvalidInput("The input must be a JSON object.", details=[])
        try:
            return self.input_model.model_validate(payload, context=context)
        except pydantic.ValidationError as exc:
            details = field_errors(exc)
            summary = _summarize(details, exc.error_count())
            raise InvalidInput(f"Input for {self.name!r} is invalid: {summary}.", details=details) from None


def field_errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    """Each failed field of a validation error as `{"field", "message", "type"}` (InvalidInput's details).

    At most MAX_DETAILS of them, then one entry of type `more_errors` that counts the rest: a body
    of 80,000 unknown keys (869 KB) made a 6.9 MB answer. Field paths are cut to MAX_FIELD_CHARS.
    """
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    details = [
        {"field": _field_path(error["loc"]), "message": error["msg"], "type": error["type"]}
        for error in errors[:MAX_DETAILS]
    ]
    if len(errors) > MAX_DETAILS:
        more = len(errors) - MAX_DETAILS
        details.append({"field": "(more)", "message": f"{more} more errors not listed", "type": MORE_ERRORS_TYPE})
    return details


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ".".join(str(part) for part in location) or "(body)"
    return path if len(path) <= MAX_FIELD_CHARS else path[: MAX_FIELD_CHARS - 1] + "…"


def _summarize(details: list[dict[str, Any]], total: int) -> str:
    parts = [f"{error['field']}: {error['message']}" for error in details[:3]]
    more = total - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _exactly_one_of(groups: tuple[tuple[str, ...], ...]) -> Any:
    def check(model: pydantic.BaseModel) -> pydantic.BaseModel:
        for group in groups:
            given = [name for name in group if getattr(model, name) is not None]
            if len(given) != 1:
                found = ", ".join(given) if given else "none"
                raise ValueError(f"give exactly one of {', '.join(group)} (given: {found})")
        return model

    return pydantic.model_validator(mode="after")(check)


def build_input_model(
    func: Callable[..., Any], exactly_one_of: tuple[tuple[str, ...], ...] = ()
) -> tuple[type[pydantic.BaseModel], bool]:
    """Turn a typed signature (or a single pydantic-model parameter) into an input model."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except (NameError, TypeError) as exc:
        raise FunctionDefinitionError(f"{func.__qualname__}: cannot resolve type hints: {exc}") from exc
    parameters = list(inspect.signature(func).parameters.values())
    if len(parameters) == 1:
        only = hints.get(parameters[0].name)
        if isinstance(only, type) and issubclass(only, pydantic.BaseModel):
            return only, True
    fields: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise FunctionDefinitionError(f"{func.__qualname__}: *args/**kwargs cannot form an input schema")
        if parameter.name not in hints:
            raise FunctionDefinitionError(f"{func.__qualname__}: parameter {parameter.name!r} has no type hint")
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    unknown = {name for group in exactly_one_of for name in group} - set(fields)
    if unknown:
        raise FunctionDefinitionError(f"{func.__qualname__}: exactly_one_of names unknown {sorted(unknown)}")
    model_name = "".join(part.title() for part in func.__name__.split("_")) + "Input"
    # The schema says it too, so clients generated from it know the rule.
    alternatives: list[Any] = [{"oneOf": [{"required": [name]} for name in group]} for group in exactly_one_of]
    config = pydantic.ConfigDict(extra="forbid", json_schema_extra={"allOf": alternatives} if alternatives else None)
    validators = {"exactly_one_of": _exactly_one_of(exactly_one_of)} if exactly_one_of else {}
    model = pydantic.create_model(model_name, __config__=config, __validators__=validators, **fields)
    return model, False
