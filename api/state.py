"""What the app factory hands to the views: the registry and the live backends."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from flask.sansio.app import App

from runner.authoring.registry import Registry
from runner.services.backends import Backends


@dataclass(frozen=True)
class RunnerState:
    """The runner's objects for one app."""

    registry: Registry
    backends: Backends


def runner_state(app: App | None = None) -> RunnerState:
    """The state of `app` (by default, of the app handling the current request)."""
    state: RunnerState = (app or current_app).extensions["runner"]
    return state
