"""Settings from the environment: numbers parsed, bad values refused, the database URL resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import DEFAULT_MAX_PAYLOAD_BYTES, Settings, SettingsError, masked_url
from runner.errors import root_cause


def test_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings().max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES


def test_reads_every_kind_of_value() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://cache:6380/2",
            "DATABASE_URL": "sqlite:////tmp/x.db",
            "RUNNER_DATA_DIR": "/srv/runner",
            "RUNNER_FUNCTIONS_PACKAGE": "functions,more_functions",
            "RUNNER_MAX_PAYLOAD_BYTES": "2048",
            "RUNNER_RESULT_TTL": " 600 ",
            "RUNNER_FAILURE_TTL": "0",
            "RUNNER_MAX_WAIT_SECONDS": "2.5",
            "RUNNER_SSE_MAX_SECONDS": "42",
            "RUNNER_SSE_MAX_STREAMS": "7",
            "RUNNER_UPLOAD_TTL": "3600",
            "RUNNER_UPLOADS_MAX_TOTAL_BYTES": "0",
            "RUNNER_REDIS_MIN_REPLICAS": "2",
            "RUNNER_REDIS_REPLICA_TIMEOUT_MS": "250",
            "RUNNER_HISTORY_DAYS": "30",
            "UNRELATED": "ignored",
        }
    )
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.database_url == "sqlite:////tmp/x.db"
    assert settings.data_dir == "/srv/runner"
    assert settings.functions_package == "functions,more_functions"
    assert (settings.max_payload_bytes, settings.result_ttl, settings.failure_ttl) == (2048, 600, 0)
    assert settings.max_wait_seconds == 2.5
    assert type(settings.max_payload_bytes) is int and type(settings.max_wait_seconds) is float
    assert (settings.sse_max_seconds, settings.sse_max_streams, settings.sse_heartbeat_seconds) == (42.0, 7, 15.0)
    assert type(settings.sse_max_seconds) is float and type(settings.sse_max_streams) is int
    assert (settings.upload_ttl, settings.uploads_max_total_bytes) == (3600, 0)
    assert (Settings().upload_ttl, Settings().uploads_max_total_bytes) == (7 * 24 * 3600, 10 * 1024**3)
    assert (settings.redis_min_replicas, settings.redis_replica_timeout_ms) == (2, 250)
    assert (Settings().redis_min_replicas, Settings().redis_replica_timeout_ms) == (0, 1000)
    assert (settings.history_days, Settings().history_days) == (30, 0)  # 0: history is kept forever


def test_blank_values_fall_back_to_defaults() -> None:
    assert Settings.from_env({"RUNNER_MAX_PAYLOAD_BYTES": "  ", "REDIS_URL": ""}) == Settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RUNNER_MAX_PAYLOAD_BYTES", "abc", "is not a number"),
        ("RUNNER_MAX_PAYLOAD_BYTES", "1.5", "is not a number"),
        ("RUNNER_MAX_PAYLOAD_BYTES", "1MB", "is not a number"),
        ("RUNNER_RESULT_TTL", "-1", "must not be negative"),
        ("RUNNER_FAILURE_TTL", "ten", "is not a number"),
        ("RUNNER_MAX_WAIT_SECONDS", "abc", "is not a number"),
        ("RUNNER_MAX_WAIT_SECONDS", "-0.5", "must not be negative"),
        ("RUNNER_SSE_MAX_SECONDS", "soon", "is not a number"),
        ("RUNNER_SSE_MAX_SECONDS", "0", "must be positive"),
        ("RUNNER_SSE_HEARTBEAT_SECONDS", "-1", "must be positive"),
        ("RUNNER_SSE_POLL_SECONDS", "nan", "must be positive"),
        ("RUNNER_SSE_MAX_STREAMS", "0", "must be positive"),
        ("RUNNER_SSE_MAX_STREAMS", "2.5", "is not a number"),
        ("RUNNER_REDIS_MIN_REPLICAS", "-1", "must not be negative"),
        ("RUNNER_REDIS_MIN_REPLICAS", "one", "is not a number"),
        # WAIT with 0 ms would wait for ever.
        ("RUNNER_REDIS_REPLICA_TIMEOUT_MS", "0", "must be positive"),
        ("RUNNER_HISTORY_DAYS", "0", "must be positive"),
        ("RUNNER_HISTORY_DAYS", "-3", "must be positive"),
        ("RUNNER_HISTORY_DAYS", "30d", "is not a number"),
        ("RUNNER_HISTORY_DAYS", "40000", "at most 36500"),
        ("RUNNER_WORKERS_MIN", "-1", "must not be negative"),
        ("RUNNER_WORKERS_MAX", "0", "must be positive"),
        ("RUNNER_WORKERS_MAX", "many", "is not a number"),
        ("RUNNER_SCALE_DOWN_AFTER", "-5", "must not be negative"),
    ],
)
def test_bad_numbers_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value) and message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    url = Settings(data_dir=str(data_dir)).effective_database_url
    assert url == f"sqlite:///{data_dir.resolve() / 'runner.db'}"
    assert data_dir.is_dir()  # created, so SQLite can open the file


def test_relative_data_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir="here").effective_database_url == f"sqlite:///{tmp_path.resolve()}/here/runner.db"


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("postgres://user:pw@db.example:5432/runner", "postgresql://user:pw@db.example:5432/runner"),
        ("postgresql://user:pw@db.example/runner", "postgresql://user:pw@db.example/runner"),
        ("postgresql+psycopg2://db.example/runner", "postgresql+psycopg2://db.example/runner"),
        ("mysql://postgres://x", "mysql://postgres://x"),
    ],
)
def test_database_url_is_used_with_postgres_scheme_rewritten(database_url: str, expected: str) -> None:
    assert Settings(database_url=database_url).effective_database_url == expected


def test_explicit_sqlite_url_gets_its_folder(tmp_path: Path) -> None:
    target = tmp_path / "db" / "history.db"
    assert Settings(database_url=f"sqlite:///{target}").effective_database_url == f"sqlite:///{target}"
    assert target.parent.is_dir()


@pytest.mark.parametrize(
    ("raw", "level"), [("", "INFO"), ("warning", "WARNING"), (" Debug ", "DEBUG"), ("ERROR", "ERROR")]
)
def test_log_level_is_read_in_any_case(raw: str, level: str) -> None:
    assert Settings.from_env({"RUNNER_LOG_LEVEL": raw}).log_level == level


@pytest.mark.parametrize("raw", ["loud", "20", "WARN "])
def test_unknown_log_levels_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="RUNNER_LOG_LEVEL=.* is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        Settings.from_env({"RUNNER_LOG_LEVEL": raw})


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://runner:secret@db:5432/runner", "postgresql://runner:***@db:5432/runner"),
    # An unescaped '@' or '/' in the password: nothing of it shows.
    ("postgresql://runner:p@ss/word@db:5432/runner", "postgresql://runner:***@db:5432/runner"),
    ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("redis+sentinel://:secret@a:26379,b:26379/main", "redis+sentinel://:***@a:26379,b:26379/main"),
    ("postgresql://runner@db/runner", "postgresql://runner@db/runner"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
    ("sqlite:////var/lib/runner/runner.db", "sqlite:////var/lib/runner/runner.db"),
])
def test_masked_url_hides_the_password_only(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_root_cause_is_the_drivers_words_on_one_line() -> None:
    said = 'connection to server at "db", port 5432 failed: FATAL: password authentication failed'
    driver = OSError(said.replace("FATAL: ", "FATAL:  ") + "\n")
    try:
        try:
            raise driver
        except OSError as exc:
            raise RuntimeError("The database is unavailable.") from exc
    except RuntimeError as wrapped:
        assert root_cause(wrapped) == said
    statement = Exception('relation "invocations" does not exist\nLINE 1: INSERT INTO invocations (id) ...\n ^')
    assert root_cause(statement) == 'relation "invocations" does not exist'


def test_worker_pool_bounds_are_read_and_checked() -> None:
    assert (Settings().workers_min, Settings().workers_max, Settings().scale_down_after_seconds) == (None, None, 60.0)
    read = Settings.from_env({"RUNNER_WORKERS_MIN": "0", "RUNNER_WORKERS_MAX": "4", "RUNNER_SCALE_DOWN_AFTER": "2.5"})
    assert (read.workers_min, read.workers_max, read.scale_down_after_seconds) == (0, 4, 2.5)
    with pytest.raises(SettingsError, match="RUNNER_WORKERS_MIN=3 is above RUNNER_WORKERS_MAX=2"):
        Settings.from_env({"RUNNER_WORKERS_MIN": "3", "RUNNER_WORKERS_MAX": "2"})
