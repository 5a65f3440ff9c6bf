"""What is wrong with Redis or the database, said so an operator can act on it.

Each sentence names the URL (password masked), the driver's own reason and the variable to
check: "The database is unavailable." alone reads the same for a wrong password, a database
that does not exist and a port with nothing listening.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.config import Settings, masked_url
from runner.errors import BackendUnavailable, root_cause
from runner.redis_connection import check_redis
from runner.services.backends import Backends
from runner.store.database import UNAVAILABLE_ERRORS, is_missing_table
from runner.store.schema import MIGRATE_HINT, SchemaState, schema_problem, schema_state

VARIABLES = {"redis": "REDIS_URL", "database": "DATABASE_URL"}
NAMES = {"redis": "Redis", "database": "The database"}


def dependency_of(error: BackendUnavailable) -> str:
    """Which backend an error is about: `redis` or `database` (the database when it does not say)."""
    details = error.details if isinstance(error.details, dict) else {}
    return "redis" if details.get("dependency") == "redis" else "database"


def configured_url(dependency: str, settings: Settings) -> str:
    """The URL these settings give `dependency`."""
    return settings.redis_url if dependency == "redis" else settings.effective_database_url


def backend_url(dependency: str, backends: Backends) -> str:
    """The URL this process's connection to `dependency` uses."""
    return backends.settings.redis_url if dependency == "redis" else backends.store.url


def describe_unavailable(dependency: str, url: str, error: BaseException) -> str:
    """One sentence: which backend at which URL (password masked), the driver's reason, the variable to check."""
    reason = root_cause(error)
    if dependency == "database" and is_missing_table(error):
        return f"The database at {masked_url(url)} lacks the runner's tables ({reason}): {MIGRATE_HINT}."
    ending = "" if reason.endswith((".", "?", "!")) else "."
    return f"{NAMES[dependency]} at {masked_url(url)} is unavailable: {reason}{ending} Check {VARIABLES[dependency]}."


@dataclass(frozen=True)
class DatabaseCheck:
    """The database as readiness sees it: `ok`, `unavailable` or the schema's state, and what to do."""

    status: str
    problem: str | None = None


def check_database(backends: Backends) -> DatabaseCheck:
    """Reach the database and compare its schema with this code's migrations."""
    url = backend_url("database", backends)
    try:
        state = schema_state(backends.store.engine)
    except UNAVAILABLE_ERRORS as exc:
        return DatabaseCheck("unavailable", describe_unavailable("database", url, exc))
    problem = schema_problem(state)
    if problem is None:
        return DatabaseCheck("ok")
    status = "missing tables" if state is SchemaState.MISSING else "tables behind"
    return DatabaseCheck(status, f"The database at {masked_url(url)}: {problem}.")


def startup_problems(backends: Backends) -> list[str]:
    """Every reason this process cannot serve yet, one sentence each (empty when all is well)."""
    problems = []
    try:
        check_redis(backends.connection)
    except BackendUnavailable as exc:
        problems.append(describe_unavailable("redis", backend_url("redis", backends), exc))
    database = check_database(backends)
    if database.problem is not None:
        problems.append(database.problem)
    return problems
