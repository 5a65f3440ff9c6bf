"""Unit-test fixtures: fakeredis for Redis, SQLite in tmp_path for the store, jobs run in-process.

Shaped like the Flask tutorial's conftest: `app` and `client` fixtures, plus fixtures that
hand back small helper callables (`run_jobs`, `invoke`, `api_error`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient
from rq.job import Job
from rq.serializers import JSONSerializer
from werkzeug.test import TestResponse

import api
from runner.authoring.registry import Registry
from runner.config import Settings
from runner.dev.embedded_redis import free_port
from runner.services.backends import Backends
from runner.store.models import InvocationRecord
from runner.store.sql_store import Store
from runner.worker.environment import install_environment
from runner.worker.run import build_worker
from tests.history import ReadingStore

# The queues `run_jobs` serves: the demo functions' queue, then `default` (throwaway functions use it).
WORKER_QUEUES = ("demo_tasks", "default")
ERROR_KEYS = {"error", "message", "details"}


def rq_job(connection: fakeredis.FakeRedis, job_id: str) -> Job:
    """The RQ job `job_id`, read from Redis."""
    return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)


def stored_row(store: Store, job_id: str) -> InvocationRecord:
    """The SQL row of `job_id` (which must exist)."""
    record = store.get(job_id)
    assert record is not None
    return record


def build_app(backends: Backends, registry: Registry) -> Flask:
    """An app over these backends, with their settings (so the payload limit matches)."""
    return api.create_app(
        {
            "RUNNER_SETTINGS": backends.settings,
            "RUNNER_BACKENDS": backends,
            "RUNNER_REGISTRY": registry,
            "TESTING": True,
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Defaults, except that uploads and artifacts land in tmp_path, not in the project's .runner/.
    return Settings(data_dir=str(tmp_path / "data"))


@pytest.fixture
def connection() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def store(tmp_path: Path, connection: fakeredis.FakeRedis) -> Iterator[Store]:
    # Read as the API reads history: what waits in the journal is applied first.
    store = ReadingStore(f"sqlite:///{tmp_path}/runner.db")
    store.connection = connection
    store.migrate()
    yield store
    store.engine.dispose()


@pytest.fixture
def backends(connection: fakeredis.FakeRedis, store: Store, settings: Settings) -> Backends:
    return Backends(connection, store, settings)


@pytest.fixture
def registry() -> Registry:
    return Registry.discover("functions")


@pytest.fixture
def app(backends: Backends, registry: Registry) -> Flask:
    return build_app(backends, registry)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def make_client(
    connection: fakeredis.FakeRedis, store: Store, settings: Settings, registry: Registry
) -> Callable[..., FlaskClient]:
    """A client of an app whose backends differ from the fixtures' by the keywords given."""

    def build(registry_: Registry | None = None, **replacements: Any) -> FlaskClient:
        parts = {"connection": connection, "store": store, "settings": settings, **replacements}
        return build_app(Backends(**parts), registry_ or registry).test_client()

    return build


@pytest.fixture
def run_jobs(backends: Backends, registry: Registry) -> Iterator[Callable[..., bool]]:
    """Run every queued job in-process, in burst mode; returns whether any job ran."""

    def run(queue_names: Sequence[str] = WORKER_QUEUES, registry_: Registry | None = None) -> bool:
        worker = build_worker(list(queue_names), backends, registry_ or registry)
        return bool(worker.work(burst=True, logging_level="WARNING"))

    yield run
    install_environment(None)  # forget this test's registry and store


@pytest.fixture
def invoke(client: FlaskClient) -> Callable[..., TestResponse]:
    """POST an invocation; `payload` goes as JSON, other keywords go to the test client."""

    def post(name: str, payload: Any = None, query: str = "", **options: Any) -> TestResponse:
        if payload is not None:
            options["json"] = payload
        return client.post(f"/functions/{name}/invocations{query}", **options)

    return post


@pytest.fixture
def api_error() -> Callable[..., dict[str, Any]]:
    """Assert a response is the API's JSON error (status, code, shape, no HTML); return its body."""

    def check(response: TestResponse, status: int, code: str | None = None) -> dict[str, Any]:
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.mimetype == "application/json"
        assert b"<html" not in response.data.lower() and b"<!doctype" not in response.data.lower()
        body = response.get_json()
        assert isinstance(body, dict) and set(body) == ERROR_KEYS, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["message"], str) and body["message"]
        if code is not None:
            assert body["error"] == code
        return body

    return check


@pytest.fixture
def enqueued_ids(connection: fakeredis.FakeRedis) -> Callable[[], list[str]]:
    """Ids of the jobs waiting on any RQ queue, plus any other job hash Redis holds."""

    def ids() -> list[str]:
        waiting = [
            job_id.decode() for key in connection.scan_iter("rq:queue:*") for job_id in connection.lrange(key, 0, -1)
        ]
        stored = [key.decode().removeprefix("rq:job:") for key in connection.scan_iter("rq:job:*")]
        return sorted(set(waiting) | set(stored))

    return ids


@pytest.fixture
def assert_nothing_enqueued(
    client: FlaskClient, enqueued_ids: Callable[[], list[str]], store: Store
) -> Callable[[], None]:
    """Assert no job reached Redis and no row reached the store (directly and through GET /jobs)."""

    def check() -> None:
        assert enqueued_ids() == []
        assert store.list() == ([], None)
        assert client.get("/jobs").get_json() == {"jobs": [], "next": None}

    return check


@pytest.fixture
def closed_port() -> int:
    """A local TCP port with nothing listening on it."""
    return free_port()
