"""The `@function` decorator, and the registry that discovers the modules in `functions/`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

import pydantic

from runner.authoring.spec import MAX_EXPIRES_SECONDS, DeclaredSchedule, FunctionSpec, build_input_model
from runner.authoring.timing import TimingError, check_timing
from runner.errors import FunctionDefinitionError, FunctionNotFound

DEFAULT_QUEUE = "default"
DEFAULT_TIMEOUT = 60
QUEUE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SPEC_ATTRIBUTE = "__runner_function__"

F = TypeVar("F", bound=Callable[..., Any])


@overload
def function(func: F, /) -> F: ...


@overload
def function(
    *,
    queue: str = ...,
    timeout: int = ...,
    retries: int = ...,
    backoff: Sequence[int] | None = ...,
    name: str | None = ...,
    exactly_one_of: Sequence[Sequence[str]] = ...,
    concurrency: int | None = ...,
    max_queued: int | None = ...,
    schedule: str | int | None = ...,
    schedule_input: dict[str, Any] | None = ...,
    schedule_timezone: str | None = ...,
    concurrency_key: str | None = ...,
    expires: float | None = ...,
    threads: bool = ...,
) -> Callable[[F], F]: ...


def function(
    func: F | None = None,
    /,
    *,
    queue: str = DEFAULT_QUEUE,
    timeout: int = DEFAULT_TIMEOUT,
    retries: int = 0,
    backoff: Sequence[int] | None = None,
    name: str | None = None,
    exactly_one_of: Sequence[Sequence[str]] = (),
    concurrency: int | None = None,
    max_queued: int | None = None,
    schedule: str | int | None = None,
    schedule_input: dict[str, Any] | None = None,
    schedule_timezone: str | None = None,
    concurrency_key: str | None = None,
    expires: float | None = None,
    threads: bool = False,
) -> F | Callable[[F], F]:
    """Declare a function: record its queue, timeout and retry policy. Connects to nothing.

    `exactly_one_of` lists groups of optional parameters of which an invocation must give
    exactly one (checked with the rest of the input, before anything is enqueued).
    `concurrency` caps how many of its jobs run at once (per value of the input field
    `concurrency_key`, when given); `max_queued` caps how many may wait. A job not started within
    `expires` seconds of its acceptance is canceled (error type `Expired`).
    `schedule` (a cron expression, or every so many seconds) runs it with `schedule_input` on
    that schedule, in `schedule_timezone` (UTC by default); workers register it when they start.
    An `async def` function runs on the worker's event loop, up to RUNNER_WORKER_SLOTS jobs at once;
    `threads=True` lets a sync function that mostly waits run in a thread pool of that size. Plain
    sync functions run one job at a time per work process: CPU-bound code stays safe by default.
    """

    def declare(target: F) -> F:
        spec = make_spec(target, queue=queue, timeout=timeout, retries=retries, backoff=backoff, name=name,
                         exactly_one_of=exactly_one_of, concurrency=concurrency, max_queued=max_queued,
                         schedule=schedule, schedule_input=schedule_input, schedule_timezone=schedule_timezone,
                         concurrency_key=concurrency_key, expires=expires, threads=threads)
        setattr(target, SPEC_ATTRIBUTE, spec)
        return target

    return declare(func) if func is not None else declare


def make_spec(
    func: Callable[..., Any],
    *,
    queue: str,
    timeout: int,
    retries: int,
    backoff: Sequence[int] | None,
    name: str | None,
    exactly_one_of: Sequence[Sequence[str]] = (),
    concurrency: int | None = None,
    max_queued: int | None = None,
    schedule: str | int | None = None,
    schedule_input: dict[str, Any] | None = None,
    schedule_timezone: str | None = None,
    concurrency_key: str | None = None,
    expires: float | None = None,
    threads: bool = False,
) -> FunctionSpec:
    """Check a declaration and build its spec; bad policies fail loudly at import."""
    label = name or func.__name__
    if not QUEUE_NAME_PATTERN.match(queue):
        raise FunctionDefinitionError(f"{label}: queue name {queue!r} must match {QUEUE_NAME_PATTERN.pattern}")
    if not isinstance(timeout, int) or timeout <= 0:
        raise FunctionDefinitionError(f"{label}: timeout must be a positive number of seconds")
    if not isinstance(retries, int) or retries < 0:
        raise FunctionDefinitionError(f"{label}: retries must be zero or more")
    intervals = tuple(backoff or ())
    if any(not isinstance(i, int) or i < 0 for i in intervals):
        raise FunctionDefinitionError(f"{label}: backoff intervals must be whole seconds >= 0")
    for limit_name, limit in (("concurrency", concurrency), ("max_queued", max_queued)):
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise FunctionDefinitionError(f"{label}: {limit_name} must be a whole number >= 1 (or None)")
    if expires is not None and (not isinstance(expires, int | float) or isinstance(expires, bool)
                                or not 0 < expires <= MAX_EXPIRES_SECONDS):
        raise FunctionDefinitionError(f"{label}: expires must be seconds, more than 0 and at most "
                                      f"{MAX_EXPIRES_SECONDS} (or None)")
    is_async = inspect.iscoroutinefunction(func)
    if not isinstance(threads, bool) or (threads and is_async):
        raise FunctionDefinitionError(f"{label}: threads must be True or False, and only for a sync function "
                                      "(an async def function already runs many jobs at once)")
    model, takes_model = build_input_model(func, tuple(tuple(group) for group in exactly_one_of))
    declared = _declared_schedule(label, model, schedule, schedule_input, schedule_timezone)
    if concurrency_key is not None and (concurrency is None or concurrency_key not in model.model_fields):
        raise FunctionDefinitionError(f"{label}: concurrency_key must name an input field, "
                                      "and needs concurrency")
    doc = inspect.getdoc(func) or ""
    return FunctionSpec(
        name=label,
        func=func,
        queue=queue,
        timeout=timeout,
        retries=retries,
        backoff=intervals,
        input_model=model,
        description=doc.splitlines()[0] if doc else "",
        takes_model=takes_model,
        concurrency=concurrency,
        max_queued=max_queued,
        schedule=declared,
        concurrency_key=concurrency_key,
        expires=float(expires) if expires is not None else None,
        is_async=is_async,
        threads=threads,
    )


def _declared_schedule(label: str, model: type[pydantic.BaseModel], schedule: str | int | None,
                       schedule_input: dict[str, Any] | None, timezone: str | None) -> DeclaredSchedule | None:
    if schedule is None:
        if schedule_input is not None or timezone is not None:
            raise FunctionDefinitionError(f"{label}: schedule_input and schedule_timezone need a schedule")
        return None
    try:
        timing = (check_timing(None, timezone, schedule) if isinstance(schedule, int)
                  else check_timing(schedule, timezone, None))
    except TimingError as exc:
        raise FunctionDefinitionError(f"{label}: schedule {exc.field}: {exc.message}") from None
    payload = dict(schedule_input or {})
    try:  # checked again at each run; a declaration that could never run fails at import
        model.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise FunctionDefinitionError(f"{label}: schedule_input does not fit the signature: {exc}") from None
    return DeclaredSchedule(timing=timing, input=payload)


class Registry:
    """The functions discovered in a package, by name."""

    def __init__(self, specs: Sequence[FunctionSpec] = ()) -> None:
        self._specs: dict[str, FunctionSpec] = {}
        for spec in specs:
            self.add(spec)

    @classmethod
    def discover(cls, packages: str = "functions") -> Registry:
        """Import every module of each comma-separated package and register their functions."""
        registry = cls()
        for package in (name.strip() for name in packages.split(",")):
            if package:
                registry._discover_package(package)
        return registry

    def _discover_package(self, package: str) -> None:
        root = importlib.import_module(package)
        for module_info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
            if module_info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package}.{module_info.name}")
            for value in vars(module).values():
                spec = getattr(value, SPEC_ATTRIBUTE, None)
                if isinstance(spec, FunctionSpec) and value.__module__ == module.__name__:
                    self.add(spec)

    def add(self, spec: FunctionSpec) -> None:
        """Register one function; two functions may not share a name."""
        if spec.name in self._specs and self._specs[spec.name].path != spec.path:
            raise FunctionDefinitionError(f"two functions are named {spec.name!r}")
        self._specs[spec.name] = spec

    def get(self, name: str) -> FunctionSpec:
        """The function called `name`, or FunctionNotFound."""
        try:
            return self._specs[name]
        except KeyError:
            raise FunctionNotFound(f"No function is named {name!r}.", details={"known": sorted(self._specs)}) from None

    def queues(self) -> list[str]:
        """Every queue some function uses, in name order."""
        return sorted({spec.queue for spec in self._specs.values()})

    def __iter__(self) -> Iterator[FunctionSpec]:
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs
