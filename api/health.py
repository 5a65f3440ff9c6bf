"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.state import runner_state
from runner.errors import BackendUnavailable, ProcessSaturated
from runner.redis_connection import check_redis
from runner.services.backend_checks import check_database

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@blueprint.get("/readyz")
def readyz() -> dict[str, Any]:
    state = runner_state()
    backends = state.backends
    checks: dict[str, str] = {}
    try:
        check_redis(backends.connection)
        checks["redis"] = "ok"
    except BackendUnavailable:
        checks["redis"] = "unavailable"
    # Reached is not enough: a database without the tables would answer every invocation with an error.
    checks["database"] = check_database(backends).status
    down = [f"{name} {result}" for name, result in checks.items() if result != "ok"]
    if down:
        raise BackendUnavailable(f"Not ready: {' and '.join(down)}.", details={"checks": checks})
    # Each wait and each stream holds a thread: a process whose slots for them are all taken is saturated.
    slots = {"waits": state.waits, "streams": state.streams}
    for name, held in slots.items():
        checks[name] = f"{held.in_use} of {held.limit} in use"
    full = [name for name, held in slots.items() if held.full]
    if full:
        raise ProcessSaturated(f"Not ready: this process is saturated, its {' and '.join(full)} are all in use.",
                               details={"checks": checks, "saturated": full}, retry_after=1)
    return {"status": "ready", "checks": checks}
