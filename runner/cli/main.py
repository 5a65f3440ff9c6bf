"""The command line: `python -m runner worker|dev|migrate`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from runner.cli.client_commands import register_client_commands
from runner.config import LOG_LEVEL_VARIABLE, Settings, SettingsError, read_log_level
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


@main.command()
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Stop once the queues are empty.")
def worker(queues: tuple[str, ...], burst: bool) -> None:
    """Run a worker on QUEUES (default: every function's queue, by priority, then `default`)."""
    from runner.worker.run import run_worker

    try:
        code = run_worker(queues, _settings(), burst=burst)
    except BackendUnavailable as exc:
        raise click.ClickException(f"{exc.message} Check REDIS_URL and DATABASE_URL.") from None
    raise SystemExit(code)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--data-dir", default=None, help="Where Redis and SQLite keep their files [default: .runner].")
def dev(host: str, port: int, workers: int, data_dir: str | None) -> None:
    """Run API + workers (+ Redis when REDIS_URL is unset) on this machine."""
    from runner.dev.stack import run_dev

    folder = Path(data_dir or _settings().data_dir)
    try:
        code = run_dev(host=host, port=port, workers=workers, data_dir=folder)
    except RuntimeError as exc:  # DevError (port taken, ...) or the embedded Redis failing to start
        raise click.ClickException(str(exc)) from None
    raise SystemExit(code)


@main.command()
def migrate() -> None:
    """Create or upgrade the store's tables (DATABASE_URL, default SQLite in the data folder)."""
    from runner.store.sql_store import Store

    settings = _settings()
    try:
        Store(settings.effective_database_url).migrate()
    except BackendUnavailable as exc:
        raise click.ClickException(exc.message) from None
    click.echo("The store is up to date.")


# Client commands (functions, invoke, jobs, job, workers, queues, requeue-failed) and --url.
register_client_commands(main)
