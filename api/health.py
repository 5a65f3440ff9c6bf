"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.state import runner_state
from runner.errors import BackendUnavailable
from runner.redis_connection import check_redis
from runner.services.backend_checks import check_database

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@blueprint.get("/readyz")
def readyz() -> dict[str, Any]:
    backends = runner_state().backends
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
    return {"status": "ready", "checks": checks}
