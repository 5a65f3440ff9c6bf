"""Client commands of `python -m runner`: talk to a running API over HTTP (local or remote).

`--url` (env RUNNER_URL) says where the API is; RUNNER_API_KEY, when set, is sent as a bearer
token. Exit codes: 0 done, 1 the API refused or the job did not finish, 2 the API could not be
reached (or bad usage), 3 `invoke --wait` gave up before the job ended.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runner.cli.output import console, detail_lines, duration, print_json, print_table, took, when
from runner.client.http_client import RunnerClient
from runner.client.transport import Transport, normalize_base_url
from runner.config import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from runner.errors import ApiError, ApiUnreachable
from runner.status import TERMINAL_STATUSES

DEFAULT_URL = "http://127.0.0.1:8000"
URL_KEY = "runner.client.url"
EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 2
EXIT_STILL_RUNNING = 3
# A job id is 32 hex digits: anything shorter may be the start of one (`runner job 1d0de4be`).
FULL_JOB_ID_LENGTH = 32
F = TypeVar("F", bound=Callable[..., Any])


def _remember_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # On the group, click has already fallen back to RUNNER_URL (when set and not empty), then to
    # DEFAULT_URL; on a command, None means "not given there". The meta dict is shared by both.
    if value is None:
        return None
    if not value:
        raise click.BadParameter(f"give the API's base URL, e.g. {DEFAULT_URL}")
    try:
        ctx.meta[URL_KEY] = normalize_base_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


URL_HELP = "The API to talk to, e.g. http://127.0.0.1:8000 or host:port [env: RUNNER_URL]."
# `--url` is accepted after the command too (`runner jobs --url http://...`): it wins over the group's.
url_option = click.option("--url", default=None, expose_value=False, callback=_remember_url, help=URL_HELP)


def register_client_commands(group: click.Group) -> None:
    """Add `--url` to `group` and the client commands under it."""
    group.params.append(
        click.Option(
            ["--url"], envvar="RUNNER_URL", default=DEFAULT_URL, show_default=True, expose_value=False,
            callback=_remember_url, help=URL_HELP,
        )
    )
    for command in (functions, invoke, jobs, job, workers, queues, requeue_failed):
        group.add_command(command)


def api_client() -> RunnerClient:
    ctx = click.get_current_context()
    url = str(ctx.meta[URL_KEY])
    # Tests hand in a transport (e.g. a Flask test client) as the context object.
    transport: Transport | None = ctx.obj if callable(ctx.obj) else None
    return RunnerClient(url, api_key=os.environ.get("RUNNER_API_KEY") or None, transport=transport)


def _fail(message: str, code: int, details: list[str] | None = None) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    for line in details or []:
        click.echo(f"  {line}", err=True)
    sys.exit(code)


def handles_client_errors(command: F) -> F:
    """Turn API errors into one clear line (then its details, a line each) and an exit code."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as error:
            _fail(f"{error.message} ({error.status} {error.code})", EXIT_API_ERROR, detail_lines(error.details))
        except ApiUnreachable as error:
            _fail(f"{error} Is it running? Point --url or RUNNER_URL at it.", EXIT_UNREACHABLE)

    return run  # type: ignore[return-value]


as_json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")


@click.command()
@as_json_option
@url_option
@handles_client_errors
def functions(as_json: bool) -> None:
    """List the functions the API serves."""
    listed = api_client().functions()
    if as_json:
        print_json(listed)
        return
    rows = [
        [spec["name"], spec["queue"], f"{spec['timeout']} s", _retries(spec), spec.get("description", "")]
        for spec in listed
    ]
    print_table("Functions", ["name", "queue", "timeout", "retries", "description"], rows, wrap=("description",))


def _retries(spec: dict[str, Any]) -> str:
    backoff = spec.get("backoff") or []
    return f"{spec['retries']} (after {', '.join(map(str, backoff))} s)" if spec["retries"] and backoff else str(
        spec["retries"]
    )


def read_payload(data: str | None, data_file: str | None) -> Any:
    if data is not None and data_file is not None:
        raise click.UsageError("Give --data or --data-file, not both.")
    if data_file is not None:
        try:
            data = sys.stdin.read() if data_file == "-" else Path(data_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {data_file}: {exc.strerror}", param_hint="--data-file") from None
    if data is None:
        return {}
    try:
        return json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data/--data-file") from None


@click.command()
@click.argument("name")
@click.option("--data", help="The input, as a JSON object.")
@click.option("--data-file", help="Read the input JSON from this file ('-' for stdin).")
@click.option("--wait", is_flag=True, help="Follow the job (live progress) and print its result.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --wait: seconds to follow the job before giving up.")
@click.option("--after", multiple=True, metavar="JOB_ID",
              help="Run once this job has finished (repeat it, or separate ids with commas): fan-in.")
@click.option("--expires", type=float, metavar="SECONDS", help="Cancel the job if it has not started by then.")
@url_option
@handles_client_errors
def invoke(name: str, data: str | None, data_file: str | None, wait: bool, timeout: float,
           after: tuple[str, ...], expires: float | None) -> None:
    """Invoke function NAME; with --wait, show its progress and print its result."""
    client = api_client()
    parents = [job_id.strip() for value in after for job_id in value.split(",") if job_id.strip()]
    accepted = client.invoke(name, read_payload(data, data_file), after=parents, expires=expires)
    if not wait:
        print_json(accepted)
        return
    view = _follow_with_progress_bar(client, accepted, timeout)
    status = view.get("status")
    if status == "finished":
        # On stderr, like the progress bar: stdout is the result alone, for pipes.
        click.echo(f"job {view['id']} finished{took(view)}", err=True)
        for artifact in view.get("artifacts") or []:
            click.echo(f"  {artifact['name']}: {client.artifact_url(artifact)}", err=True)
        print_json(view.get("result"))
        return
    if status in TERMINAL_STATUSES:
        error = view.get("error") or {}
        detail = f": {error.get('type', 'Error')}: {error.get('message', '')}" if error else ""
        _fail(f"job {view['id']} {status}{detail}", EXIT_API_ERROR)
    _fail(f"job {view['id']} is still {status} after {timeout:g} s; see `python -m runner job {view['id']}`.",
          EXIT_STILL_RUNNING)


def _follow_with_progress_bar(client: RunnerClient, accepted: dict[str, Any], timeout: float) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[message]}"))
    with Progress(*columns, console=console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"{accepted['function']} {accepted['status']}", total=100, message="")

        def show(view: dict[str, Any]) -> None:
            progress = view.get("progress") or {}
            bar.update(task, completed=progress.get("percent", 0), message=progress.get("message", ""),
                       description=f"{view.get('function', accepted['function'])} {view.get('status')}")

        return client.follow(str(accepted["id"]), timeout, on_update=show)


@click.command()
@click.option("--function", "function_name", help="Only jobs of this function.")
@click.option("--status", help="Only jobs in this status (queued, started, finished, failed, ...).")
@click.option("--schedule", help="Only the jobs of this schedule's ticks.")
@click.option("--limit", default=DEFAULT_PAGE_SIZE, show_default=True, type=click.IntRange(1, MAX_PAGE_SIZE))
@click.option("--cursor", help="`next` cursor printed by the previous page.")
@as_json_option
@url_option
@handles_client_errors
def jobs(function_name: str | None, status: str | None, schedule: str | None, limit: int, cursor: str | None,
         as_json: bool) -> None:
    """List recent jobs from the history, newest first."""
    page = api_client().jobs(function=function_name, status=status, schedule=schedule, limit=limit, cursor=cursor)
    if as_json:
        print_json(page)
        return
    if not page["jobs"]:
        filters = (("function", function_name), ("status", status), ("schedule", schedule))
        selection = " ".join(f"--{name} {value}" for name, value in filters if value)
        click.echo(f"No jobs match {selection}." if selection else "No jobs yet: invoke a function first.")
        return
    rows = [
        [view["id"], view["function"], view["status"], view["attempts"], when(view.get("created_at")), duration(view)]
        for view in page["jobs"]
    ]
    print_table("Jobs", ["id", "function", "status", "attempts", "created (UTC)", "seconds"], rows)
    if page.get("next"):
        click.echo(f"More: python -m runner jobs --cursor {page['next']}")


@click.command()
@click.argument("job_id")
@url_option
@handles_client_errors
def job(job_id: str) -> None:
    """Show one job (JOB_ID, or the start of one) as JSON: status, progress, result or error."""
    client = api_client()
    try:
        view = client.job(job_id)
    except ApiError as error:
        if error.code != "job_not_found" or len(job_id) >= FULL_JOB_ID_LENGTH:
            raise
        view = client.job(_unique_job_id(client, job_id, error))
    print_json(view)


def _unique_job_id(client: RunnerClient, prefix: str, not_found: ApiError) -> str:
    """The one recent job id that starts with `prefix`; the API's 404 when none does, exit 1 when several do."""
    matches = client.job_ids_starting_with(prefix)
    if not matches:
        raise not_found
    if len(matches) > 1:
        _fail(f"{len(matches)} recent jobs start with {prefix!r}; give more of the id.", EXIT_API_ERROR, matches[:10])
    return matches[0]


@click.command()
@as_json_option
@url_option
@handles_client_errors
def workers(as_json: bool) -> None:
    """List the workers registered in Redis."""
    listed = api_client().workers()
    if as_json:
        print_json(listed)
        return
    if not listed:
        click.echo("No workers are registered: start one with `runner worker` (or `python -m runner worker`).")
        return
    rows = [
        [w["name"], w["state"], ", ".join(w["queues"]), w.get("current_job"), w["successful_jobs"], w["failed_jobs"],
         when(w.get("last_heartbeat"))]
        for w in listed
    ]
    print_table("Workers", ["name", "state", "queues", "current job", "ok", "failed", "last heartbeat (UTC)"], rows,
           wrap=("queues",))


@click.command()
@as_json_option
@url_option
@handles_client_errors
def queues(as_json: bool) -> None:
    """Show each queue's depth: queued, started, scheduled, deferred, failed, finished, canceled."""
    listed = api_client().queues()
    if as_json:
        print_json(listed)
        return
    states = ["queued", "started", "scheduled", "deferred", "failed", "finished", "canceled"]
    print_table("Queues", ["queue", *states], [[q["name"], *(q[state] for state in states)] for q in listed])


@click.command("requeue-failed")
@click.option("--queue", help="Only failed jobs of this queue.")
@click.option("--function", "function_name", help="Only failed jobs of this function.")
@url_option
@handles_client_errors
def requeue_failed(queue: str | None, function_name: str | None) -> None:
    """Put failed jobs back on their queue (each with its retry policy again)."""
    outcome = api_client().requeue_failed(queue=queue, function=function_name)
    count = int(outcome["requeued"])
    click.echo(f"Requeued {count} failed job{'s' if count != 1 else ''}.")
    for job_id in outcome.get("job_ids", []):
        click.echo(job_id)
