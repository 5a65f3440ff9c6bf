"""The HTTP API: a thin Flask layer over `runner`.

Run it with ``gunicorn "api:create_app()"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from api.auth import install_auth
from api.cross_site import install_cross_site_guard
from api.errors import register_error_handlers
from api.payload import RunnerRequest
from api.state import RunnerState
from api.tracing import install_tracing
from runner.authoring.registry import Registry
from runner.config import Settings
from runner.services.backends import open_backends

__all__ = ["create_app"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then `test_config` (tests only)."""
    app = Flask(__name__)
    app.request_class = RunnerRequest
    app.config.from_mapping(RUNNER_SETTINGS=None, RUNNER_REGISTRY=None, RUNNER_BACKENDS=None)
    if test_config:
        app.config.update(test_config)
    settings: Settings = app.config["RUNNER_SETTINGS"] or Settings.from_env()
    registry = app.config["RUNNER_REGISTRY"] or Registry.discover(settings.functions_package)
    backends = app.config["RUNNER_BACKENDS"] or open_backends(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["runner"] = RunnerState(registry=registry, backends=backends)
    # The request's span opens before anything else runs, so a refusal is traced too.
    install_tracing(app)
    # First of the app's hooks: nothing else runs for a request without a valid API key.
    install_auth(app, settings)
    install_cross_site_guard(app)

    from api import functions, health, jobs, schedules, uploads

    app.register_blueprint(functions.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(schedules.blueprint)
    app.register_blueprint(uploads.blueprint)
    app.register_blueprint(health.blueprint)
    from api import docs, events, openapi, ops

    app.register_blueprint(events.blueprint)
    app.register_blueprint(ops.blueprint)
    app.register_blueprint(openapi.blueprint)
    app.register_blueprint(docs.blueprint)
    from api import metrics, scaling
    from api.dashboard import register_dashboard

    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(scaling.blueprint)
    register_dashboard(app, backends)
    register_error_handlers(app)
    return app
