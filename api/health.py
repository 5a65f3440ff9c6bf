"""Liveness and readiness."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import Blueprint

from api.state import runner_state
from runner.errors import BackendUnavailable
from runner.redis_connection import check_redis

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@blueprint.get("/readyz")
def readyz() -> dict[str, Any]:
    backends = runner_state().backends
    checks: dict[str, str] = {}
    for name, check in (("redis", partial(check_redis, backends.connection)), ("database", backends.store.ping)):
        try:
            check()
            checks[name] = "ok"
        except BackendUnavailable:
            checks[name] = "unavailable"
    down = [name for name, result in checks.items() if result != "ok"]
    if down:
        raise BackendUnavailable(f"Not ready: {' and '.join(down)} unavailable.", details={"checks": checks})
    return {"status": "ready", "checks": checks}
