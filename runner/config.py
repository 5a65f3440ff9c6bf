"""Settings read from the environment, with the defaults a laptop needs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_DATA_DIR = ".runner"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
DEFAULT_RESULT_TTL = 24 * 3600
DEFAULT_FAILURE_TTL = 7 * 24 * 3600
DEFAULT_MAX_WAIT_SECONDS = 60.0
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# Uploads are inputs of jobs that usually run within minutes: a week leaves room for retries and
# delayed jobs; about a hundred uploads of the largest size fill the default total (0 turns either off).
DEFAULT_UPLOAD_TTL = 7 * 24 * 3600
DEFAULT_UPLOADS_MAX_TOTAL_BYTES = 10 * 1024 * 1024 * 1024
DEFAULT_IDEMPOTENCY_TTL = 24 * 3600
# Durations on the command line (`prune --older-than 30d`): a number and its unit; a century at most
# (RUNNER_HISTORY_DAYS too), which keeps every cutoff a date.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_HISTORY_DAYS = 36_500
# Pages of the job history (GET /jobs?limit=, `python -m runner jobs --limit`).
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# A worker silent this long is presumed dead and its job is retried (heartbeats go every third of it).
DEFAULT_WORKER_DEAD_AFTER_SECONDS = 15.0
# How long SIGTERM lets a worker finish its current job before the job is put back on its queue.
DEFAULT_WORKER_GRACE_SECONDS = 25.0
# Jobs of `async def` and `threads=True` functions one work process runs at once.
DEFAULT_WORKER_SLOTS = 16
# A worker pool (`python -m runner worker --min N --max M`) keeps a surplus worker this long before it goes.
DEFAULT_SCALE_DOWN_AFTER_SECONDS = 60.0
# Event streams (`GET /jobs/<id>/events`): each holds a gunicorn thread, so each is bounded.
DEFAULT_SSE_MAX_SECONDS = 300.0
DEFAULT_SSE_HEARTBEAT_SECONDS = 15.0
DEFAULT_SSE_POLL_SECONDS = 0.2
DEFAULT_SSE_MAX_STREAMS = 4
# `?wait=` requests waiting at once in one web process, and for one client (API key, or address) in it.
DEFAULT_WAIT_MAX_PER_PROCESS = 4
DEFAULT_WAIT_MAX_PER_CLIENT = 2
# How long an invocation waits for RUNNER_REDIS_MIN_REPLICAS replicas to acknowledge its job (Redis WAIT).
DEFAULT_REDIS_REPLICA_TIMEOUT_MS = 1000
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
# Fields for which zero makes no sense (a stream that ends at once, a poll that never sleeps).
POSITIVE_FIELDS = frozenset({"redis_replica_timeout_ms", "sse_max_seconds", "sse_heartbeat_seconds",
                             "sse_poll_seconds", "sse_max_streams", "history_days", "workers_max",
                             "worker_slots"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL_VARIABLE = "RUNNER_LOG_LEVEL"


class SettingsError(ValueError):
    """An environment variable holds a value the runner cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, one field per environment variable."""

    redis_url: str = "redis://localhost:6379/0"
    # 202 only once this many replicas hold the job (0: once the primary does).
    redis_min_replicas: int = 0
    redis_replica_timeout_ms: int = DEFAULT_REDIS_REPLICA_TIMEOUT_MS
    database_url: str = ""
    data_dir: str = DEFAULT_DATA_DIR
    functions_package: str = "functions"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    result_ttl: int = DEFAULT_RESULT_TTL
    failure_ttl: int = DEFAULT_FAILURE_TTL
    max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    upload_ttl: int = DEFAULT_UPLOAD_TTL
    uploads_max_total_bytes: int = DEFAULT_UPLOADS_MAX_TOTAL_BYTES
    upload_dir: str = ""
    artifact_dir: str = ""
    # Secrets stay out of repr(), so a logged Settings never shows them.
    api_keys: str = field(default="", repr=False)
    api_keys_file: str = ""
    idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL
    # Days of history kept: rows of jobs that ended earlier are pruned by the workers. 0 (unset): forever.
    history_days: int = 0
    callback_secret: str = field(default="", repr=False)
    callback_allow_private: bool = False
    worker_dead_after_seconds: float = DEFAULT_WORKER_DEAD_AFTER_SECONDS
    worker_grace_seconds: float = DEFAULT_WORKER_GRACE_SECONDS
    worker_slots: int = DEFAULT_WORKER_SLOTS
    # Unset: `python -m runner worker` runs one worker; set, a pool between them (runner.worker.pool).
    workers_min: int | None = None
    workers_max: int | None = None
    scale_down_after_seconds: float = DEFAULT_SCALE_DOWN_AFTER_SECONDS
    sse_max_seconds: float = DEFAULT_SSE_MAX_SECONDS
    sse_heartbeat_seconds: float = DEFAULT_SSE_HEARTBEAT_SECONDS
    sse_poll_seconds: float = DEFAULT_SSE_POLL_SECONDS
    sse_max_streams: int = DEFAULT_SSE_MAX_STREAMS
    wait_max_per_process: int = DEFAULT_WAIT_MAX_PER_PROCESS
    wait_max_per_client: int = DEFAULT_WAIT_MAX_PER_CLIENT
    # INFO: a line per job event (runner.events) and RQ's own; WARNING keeps only what needs a look.
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read REDIS_URL, DATABASE_URL and the RUNNER_* variables."""
        env = os.environ if environ is None else environ
        names = {
            "redis_url": "REDIS_URL",
            "redis_min_replicas": "RUNNER_REDIS_MIN_REPLICAS",
            "redis_replica_timeout_ms": "RUNNER_REDIS_REPLICA_TIMEOUT_MS",
            "database_url": "DATABASE_URL",
            "data_dir": "RUNNER_DATA_DIR",
            "functions_package": "RUNNER_FUNCTIONS_PACKAGE",
            "max_payload_bytes": "RUNNER_MAX_PAYLOAD_BYTES",
            "result_ttl": "RUNNER_RESULT_TTL",
            "failure_ttl": "RUNNER_FAILURE_TTL",
            "max_wait_seconds": "RUNNER_MAX_WAIT_SECONDS",
            "max_upload_bytes": "RUNNER_MAX_UPLOAD_BYTES",
            "upload_ttl": "RUNNER_UPLOAD_TTL",
            "uploads_max_total_bytes": "RUNNER_UPLOADS_MAX_TOTAL_BYTES",
            "upload_dir": "RUNNER_UPLOAD_DIR",
            "artifact_dir": "RUNNER_ARTIFACT_DIR",
            "api_keys": "RUNNER_API_KEYS",
            "api_keys_file": "RUNNER_API_KEYS_FILE",
            "idempotency_ttl": "RUNNER_IDEMPOTENCY_TTL",
            "history_days": "RUNNER_HISTORY_DAYS",
            "callback_secret": "RUNNER_CALLBACK_SECRET",
            "callback_allow_private": "RUNNER_CALLBACK_ALLOW_PRIVATE",
            "worker_dead_after_seconds": "RUNNER_WORKER_DEAD_AFTER_SECONDS",
            "worker_grace_seconds": "RUNNER_WORKER_GRACE_SECONDS",
            "worker_slots": "RUNNER_WORKER_SLOTS",
            "workers_min": "RUNNER_WORKERS_MIN",
            "workers_max": "RUNNER_WORKERS_MAX",
            "scale_down_after_seconds": "RUNNER_SCALE_DOWN_AFTER",
            "sse_max_seconds": "RUNNER_SSE_MAX_SECONDS",
            "sse_heartbeat_seconds": "RUNNER_SSE_HEARTBEAT_SECONDS",
            "sse_poll_seconds": "RUNNER_SSE_POLL_SECONDS",
            "sse_max_streams": "RUNNER_SSE_MAX_STREAMS",
            "wait_max_per_process": "RUNNER_WAIT_MAX_PER_PROCESS",
            "wait_max_per_client": "RUNNER_WAIT_MAX_PER_CLIENT",
            "log_level": LOG_LEVEL_VARIABLE,
        }
        values: dict[str, object] = {}
        for item in fields(cls):
            raw = env.get(names[item.name], "").strip()
            if not raw:
                continue
            values[item.name] = _convert(names[item.name], raw, item.type, positive=item.name in POSITIVE_FIELDS)
        if int(str(values.get("history_days", 0))) > MAX_HISTORY_DAYS:
            raise SettingsError(f"RUNNER_HISTORY_DAYS must be at most {MAX_HISTORY_DAYS} (a century)")
        if "log_level" in values:
            values["log_level"] = read_log_level(str(values["log_level"]))
        low, high = values.get("workers_min"), values.get("workers_max")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise SettingsError(f"RUNNER_WORKERS_MIN={low} is above RUNNER_WORKERS_MAX={high}")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def effective_database_url(self) -> str:
        """DATABASE_URL, or SQLite in the data folder; Heroku's postgres:// is accepted too."""
        url = self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'runner.db'}"
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        # Sent to the store's engine, which pins PostgreSQL to the psycopg2 driver we ship.
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return url


    @property
    def effective_upload_dir(self) -> Path:
        """RUNNER_UPLOAD_DIR, or `uploads` in the data folder (shared storage on a fleet)."""
        return Path(self.upload_dir or Path(self.data_dir) / "uploads").resolve()

    @property
    def effective_artifact_dir(self) -> Path:
        """RUNNER_ARTIFACT_DIR, or `artifacts` in the data folder (shared storage on a fleet)."""
        return Path(self.artifact_dir or Path(self.data_dir) / "artifacts").resolve()


def masked_url(url: str) -> str:
    """`url` with its password replaced by `***`, fit for logs and error messages."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    # The host part ends at the first '/' after the last '@': a password may hold '/' or '@' unescaped.
    credentials, at, hosts_and_path = rest.rpartition("@")
    if not at:
        return url
    user, colon, _password = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts_and_path}"


def read_log_level(raw: str) -> str:
    """The logging level named by LOG_LEVEL_VARIABLE's value `raw` (any case), or SettingsError."""
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{LOG_LEVEL_VARIABLE}={raw!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90s`, `15m`, `12h` or `30d`; ValueError saying why not."""
    raw = text.strip().lower()
    unit = DURATION_UNITS.get(raw[-1:])
    try:
        amount = float(raw[:-1]) if unit else float("nan")
    except ValueError:
        amount = float("nan")
    seconds = amount * (unit or 0)
    if not 0 < seconds <= MAX_HISTORY_DAYS * 86400:  # NaN (no unit, not a number) is not positive either
        raise ValueError(f"{text!r} is not a duration: a positive number and s, m, h or d (90s, 12h, 30d), "
                         f"at most {MAX_HISTORY_DAYS} days")
    return seconds


def _convert(name: str, raw: str, kind: object, *, positive: bool = False) -> object:
    if kind in ("bool", bool):
        word = raw.lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise SettingsError(f"{name}={raw!r} is not one of 1/0, true/false, yes/no, on/off")
        return word in TRUE_WORDS
    try:
        if kind in ("int", int, "int | None"):
            value: object = int(raw)
        elif kind in ("float", float):
            value = float(raw)
        else:
            return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if isinstance(value, int | float) and positive and not value > 0:  # NaN is not positive either
        raise SettingsError(f"{name} must be positive")
    if isinstance(value, int | float) and value < 0:
        raise SettingsError(f"{name} must not be negative")
    return value
