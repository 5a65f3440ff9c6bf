"""RUNNER_LOG_LEVEL: a worker at WARNING runs and records its jobs without a log line per job."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from runner.authoring.registry import Registry
from runner.config import Settings
from runner.services.backends import open_backends
from runner.services.invocation import enqueue_invocation
from tests.integration.conftest import (
    ProcessSet,
    run_migrate,
    sqlite_url,
    stack_environment,
    wait_until,
)
from tests.servers import RedisServer


@pytest.mark.parametrize(("level", "lines_per_job"), [("WARNING", False), ("warning", False), ("INFO", True)])
def test_the_worker_logs_each_job_only_at_info(
    redis_server: RedisServer, spawn: ProcessSet, tmp_path: Path, level: str, lines_per_job: bool
) -> None:
    redis.Redis.from_url(redis_server.url).flushall()
    env = stack_environment(redis_url=redis_server.url, database_url=sqlite_url(tmp_path), data_dir=tmp_path / "data")
    run_migrate(env)
    settings = Settings.from_env(env)
    backends = open_backends(settings)
    spec = Registry.discover(settings.functions_package).get("simple_calculation")
    worker = spawn.start_worker({**env, "RUNNER_LOG_LEVEL": level}, "worker")

    record = enqueue_invocation(spec, {"expression": "6*7"}, backends)

    def finished() -> bool:
        spawn.check_alive()
        row = backends.store.get(record.id)
        return row is not None and row.status == "finished"

    wait_until(finished, 30, "the job's row to say finished")
    spawn.stop()
    log = worker.log_path.read_text()
    assert (record.id in log) is lines_per_job, log[-2000:]
    assert ("runner.events" in log) is lines_per_job


def test_an_unknown_log_level_is_a_usage_error(redis_server: RedisServer, spawn: ProcessSet, tmp_path: Path) -> None:
    env = stack_environment(redis_url=redis_server.url, database_url=sqlite_url(tmp_path), data_dir=tmp_path / "data")
    worker = spawn.start_worker({**env, "RUNNER_LOG_LEVEL": "loud"}, "worker")
    assert worker.wait(30) == 2
    log = worker.log_path.read_text()
    assert "RUNNER_LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in log
    assert "Traceback" not in log
