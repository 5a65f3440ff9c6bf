"""The command line: `python -m runner worker|dev|migrate|prune`."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import click

from runner.cli.client_commands import register_client_commands
from runner.cli.schedule_commands import schedules
from runner.config import LOG_LEVEL_VARIABLE, Settings, SettingsError, masked_url, parse_duration, read_log_level
from runner.errors import BackendUnavailable


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
def main() -> None:
    """Async Task Runner: serverless-style functions on RQ."""
    try:  # only this variable: commands that talk to the API need no other setting to be valid
        level = read_log_level(os.environ.get(LOG_LEVEL_VARIABLE, "") or Settings.log_level)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic's INFO lines ("setup plugin ...", "Context impl SQLiteImpl.": a dozen on every start of
    # every process) say nothing; `migrate` says which revision the store is at.
    logging.getLogger("alembic").setLevel(max(logging.getLevelName(level), logging.WARNING))


# What the server commands (worker, dev, migrate) import beyond the client's click and rich.
SERVER_LIBRARIES = ("rq", "redis", "sqlalchemy", "alembic", "flask", "gunicorn")


def _require_server(command: str) -> None:
    missing = [name for name in SERVER_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"`{command}` runs the server, which this installation lacks ({', '.join(missing)}): "
            "pip install 'async-task-runner[server]', or use the virtualenv `make dev` made (.venv)."
        )


def _unavailable(exc: BackendUnavailable, settings: Settings) -> click.ClickException:
    """The backend a start-up could not reach, with its URL (password masked) and the driver's reason."""
    from runner.services.backend_checks import configured_url, dependency_of, describe_unavailable

    if exc.__cause__ is None:
        return click.ClickException(f"{exc.message} Check REDIS_URL and DATABASE_URL.")
    dependency = dependency_of(exc)
    return click.ClickException(describe_unavailable(dependency, configured_url(dependency, settings), exc.__cause__))


def pool_bounds(minimum: int | None, maximum: int | None, settings: Settings) -> tuple[int, int] | None:
    """The (min, max) of a worker pool from --min/--max, else RUNNER_WORKERS_MIN/MAX; None for one worker."""
    minimum = minimum if minimum is not None else settings.workers_min
    maximum = maximum if maximum is not None else settings.workers_max
    if minimum is None and maximum is None:
        return None
    low = minimum or 0
    high = maximum if maximum is not None else max(low, os.cpu_count() or 1)
    if high < 1 or low > high:
        raise click.UsageError(f"A worker pool needs 0 <= min <= max and max >= 1 (got min {low}, max {high}).")
    return low, high


@main.command()
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Stop once the queues are empty.")
@click.option("--min", "minimum", type=click.IntRange(0), default=None,
              help="Run a pool of at least this many workers [default: RUNNER_WORKERS_MIN, else 0].")
@click.option("--max", "maximum", type=click.IntRange(1), default=None,
              help="Run a pool of at most this many workers [default: RUNNER_WORKERS_MAX, else the CPU count].")
def worker(queues: tuple[str, ...], burst: bool, minimum: int | None, maximum: int | None) -> None:
    """Run a worker on QUEUES (default: every function's queue, by priority, then `default`).

    With --min/--max (or RUNNER_WORKERS_MIN/MAX), a pool whose size follows the load, down to zero.
    """
    _require_server("worker")
    from runner.worker.run import run_worker

    settings = _settings()
    pool = pool_bounds(minimum, maximum, settings)
    if pool is not None and burst:
        raise click.UsageError("--burst runs one worker; it does not combine with a pool (--min/--max).")
    try:
        code = run_worker(queues, settings, burst=burst, pool=pool)
    except BackendUnavailable as exc:
        raise _unavailable(exc, settings) from None
    raise SystemExit(code)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Run this many fixed workers [default: one pool that autoscales from 1 to the CPU count].")
@click.option("--data-dir", default=None, help="Where Redis and SQLite keep their files [default: .runner].")
def dev(host: str, port: int, workers: int | None, data_dir: str | None) -> None:
    """Run API + workers (+ Redis when REDIS_URL is unset) on this machine."""
    _require_server("dev")
    from runner.dev.stack import run_dev

    folder = Path(data_dir or _settings().data_dir)
    try:
        code = run_dev(host=host, port=port, workers=workers, data_dir=folder)
    except RuntimeError as exc:  # DevError (port taken, a database away, ...) or the embedded Redis failing to start
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


@main.command()
def migrate() -> None:
    """Create or upgrade the store's tables (DATABASE_URL, default SQLite in the data folder)."""
    _require_server("migrate")
    from runner.store.schema import head_revision
    from runner.store.sql_store import Store

    settings = _settings()
    try:
        Store(settings.effective_database_url).migrate()
    except BackendUnavailable as exc:
        raise _unavailable(exc, settings) from None
    where = masked_url(settings.effective_database_url)
    click.echo(f"The store at {where} is up to date (revision {head_revision()}).")


class Duration(click.ParamType[float]):
    """A duration on the command line: `90s`, `15m`, `12h`, `30d` (seconds)."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        """Seconds, or a usage error (exit status 2) saying what a duration looks like."""
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@main.command()
@click.option("--older-than", type=Duration(), default=None,
              help="Delete jobs that ended longer ago than this: 90s, 12h, 30d [default: RUNNER_HISTORY_DAYS].")
@click.option("--dry-run", is_flag=True, help="Count the jobs that would go; delete nothing.")
def prune(older_than: float | None, dry_run: bool) -> None:
    """Delete the history (rows and artifacts) of jobs that ended long ago; queued and running jobs stay."""
    _require_server("prune")
    from datetime import UTC, datetime, timedelta

    from runner.store.files import ArtifactStore
    from runner.store.retention import count_prunable, prune_history
    from runner.store.sql_store import Store

    settings = _settings()
    if older_than is None:
        if not settings.history_days:
            raise click.UsageError("Say how old a job must be to go: --older-than 30d, or set RUNNER_HISTORY_DAYS.")
        older_than = settings.history_days * 86400.0
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    store = Store(settings.effective_database_url)
    try:
        if dry_run:
            click.echo(f"{count_prunable(store, cutoff)} jobs ended before {cutoff.isoformat()}: "
                       "a prune would delete them (dry run, nothing deleted).")
            return
        outcome = prune_history(store, ArtifactStore(settings.effective_artifact_dir), cutoff)
    except BackendUnavailable as exc:
        raise _unavailable(exc, settings) from None
    finally:
        store.engine.dispose()
    click.echo(f"Deleted {outcome.rows} jobs that ended before {cutoff.isoformat()} "
               f"(and the artifacts of {outcome.artifact_folders}).")


# Client commands (functions, invoke, jobs, job, workers, queues, requeue-failed) and --url.
register_client_commands(main)
main.add_command(schedules)
