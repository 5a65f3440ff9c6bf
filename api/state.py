"""What the app factory hands to the views: the registry, the backends, the process's slots for long requests."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app
from flask.sansio.app import App

from runner.authoring.registry import Registry
from runner.services.backends import Backends
from runner.services.slots import Slots


@dataclass(frozen=True)
class RunnerState:
    """The runner's objects for one app."""

    registry: Registry
    backends: Backends
    # `?wait=` requests and event streams each hold a thread while they last: bounded per process.
    waits: Slots = field(init=False)
    streams: Slots = field(init=False)

    def __post_init__(self) -> None:
        settings = self.backends.settings
        object.__setattr__(self, "waits", Slots(settings.wait_max_per_process, settings.wait_max_per_client))
        object.__setattr__(self, "streams", Slots(settings.sse_max_streams))


def runner_state(app: App | None = None) -> RunnerState:
    """The state of `app` (by default, of the app handling the current request)."""
    state: RunnerState = (app or current_app).extensions["runner"]
    return state
