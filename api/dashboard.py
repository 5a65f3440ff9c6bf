"""rq-dashboard at /dashboard/: the runner's queues, jobs and workers, behind the app's own auth hooks.

rq-dashboard 0.9.0 is mounted as a blueprint with these corrections for this runner:

- it uses the app's Redis client (lazy, with the API's timeouts) instead of opening a new client
  from the URL on every request and storing it on the shared app object;
- jobs are read with RQ's JSON serializer (ours): rq-dashboard reads a busy worker's job with
  pickle, which fails;
- requeue buttons go through the runner's own retry (the SQL row goes back to `queued`, the retry
  policy starts again): rq-dashboard's requeue uses pickle, which corrupts the job's meta and kills
  the worker that picks it up;
- job and worker data reach its page templates HTML-escaped: those templates insert results,
  metadata and tracebacks (user input, often) as raw HTML;
- the parts of its URLs it trusts are checked first (`_check_view_args`): an unknown registry
  or a job id RQ would refuse is 404; a page or page size that is no whole number in range, or
  an unknown order, is 400 (they were 500s, and page sizes were unbounded). Compacting an unknown
  queue is 404; an empty one does nothing (RQ's compact answered a Redis error for it);
- it lists every queue a worker serves (`callbacks` and `default` too), not only those Redis has
  seen a job on, and its Jobs tab opens on the busiest queue instead of the (often empty) `default`;
- deleting is disabled;
- a Schedules page (/dashboard/schedules, api.dashboard_schedules) lists the runner's schedules.

The blueprint adds no auth of its own: the app's `before_request` hooks run before it, and with
them api.cross_site, which refuses its buttons (POST) when another site's page sends them (a
browser that logged in with Basic auth would otherwise requeue jobs for any page that posts here).
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from typing import Any

import rq_dashboard
import rq_dashboard.web as dashboard_web
from flask import Flask, Response, before_render_template, jsonify, redirect, request, url_for
from rq import Queue, Worker
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import JOB_ID_PATTERN as RQ_JOB_ID
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.wrappers import Response as BaseResponse

from api.dashboard_schedules import schedules_page
from api.payload import refuse_parameter
from api.state import runner_state
from runner.errors import JobNotFound
from runner.services.backends import Backends
from runner.services.control import retry_job
from runner.services.fleet import QueueDepths, compact_queue, known_queues, queue_depths, requeue_failed

DASHBOARD_PREFIX = "/dashboard"
BLUEPRINT_NAME: str = rq_dashboard.blueprint.name
POLL_INTERVAL_MS = 2500
# What the standalone `dashboard` process serves besides the dashboard itself.
DASHBOARD_PROCESS_PATHS = (f"{DASHBOARD_PREFIX}/", "/healthz", "/readyz")
# The registries rq-dashboard lists ("queued" is the queue itself), and its two orders.
REGISTRIES = frozenset({"queued", "started", "finished", "failed", "deferred", "scheduled", "canceled"})
ORDERS = frozenset({"asc", "dsc"})
MAX_PER_PAGE = 200  # what its own page-size field allows
MAX_PAGE = 1_000_000


def register_dashboard(app: Flask, backends: Backends) -> None:
    """Mount rq-dashboard at /dashboard/ on the app's Redis client (nothing connects here)."""
    # rq-dashboard keeps its serializer in a module-level setting; every job of this runner is JSON.
    dashboard_web.config.serializer = JSONSerializer
    # Shown (password masked) in the dashboard's instance menu; the connection is ours, below.
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", (backends.settings.redis_url,))
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", POLL_INTERVAL_MS)
    # Deleting jobs or emptying registries here would bypass the SQL history (rows stuck "queued");
    # cancel through the API instead. Requeueing failed jobs stays available.
    app.config.setdefault("RQ_DASHBOARD_DISABLE_DELETE", True)
    app.redis_conn = backends.connection  # type: ignore[attr-defined]  # where rq-dashboard's views look
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=DASHBOARD_PREFIX)
    hooks = app.before_request_funcs.setdefault(BLUEPRINT_NAME, [])
    hooks[:] = [hook for hook in hooks if hook is not dashboard_web.push_rq_connection] + [_guard_request]
    replacements: dict[str, Callable[..., Any]] = {
        "list_workers": list_workers,
        "job_info": _escaped_view(dashboard_web.job_info.__wrapped__),
        "requeue_job_view": requeue_job_view,
        "requeue_all": requeue_all,
        "compact_queue": compact_view,
        "list_queues": list_queues,
        "jobs_overview": _opens_on_the_busiest_queue(dashboard_web.jobs_overview),
    }
    # Its Jobs page offers the queues of `Queue.all()`: those Redis has seen a job on.
    before_render_template.connect(_every_queue_in_context, app)
    for endpoint, view in replacements.items():
        app.view_functions[f"{BLUEPRINT_NAME}.{endpoint}"] = view
    for endpoint, view in list(app.view_functions.items()):
        if endpoint.startswith(f"{BLUEPRINT_NAME}."):
            app.view_functions[endpoint] = _unknown_job_is_not_found(view)
    # The runner's own page, under the dashboard's name so its hooks (and only its) apply.
    app.add_url_rule(f"{DASHBOARD_PREFIX}/schedules", f"{BLUEPRINT_NAME}.schedules", schedules_page)


def _guard_request() -> None:
    # rq-dashboard can switch between several Redis URLs by index; this app has exactly one.
    if (request.view_args or {}).get("instance_number", 0) != 0:
        raise NotFound("The dashboard shows one Redis: instance 0.")
    if request.endpoint == f"{BLUEPRINT_NAME}.requeue_all" and request.method != "POST":
        raise MethodNotAllowed(valid_methods=["POST"], description="Requeueing takes a POST.")
    _check_view_args(request.view_args or {})


def _check_view_args(view_args: dict[str, Any]) -> None:
    # rq-dashboard's views int() these, divide by them and pick a registry class by name, unchecked.
    registry = view_args.get("registry_name")
    if registry is not None and registry not in REGISTRIES:
        known = ", ".join(sorted(REGISTRIES))
        raise NotFound(f"The dashboard has no registry {str(registry)[:100]!r}: one of {known}.")
    job_id = view_args.get("job_id")
    if job_id is not None and not RQ_JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"{str(job_id)[:100]!r} is not a job id.")  # RQ raised ValueError: a 500
    order = view_args.get("order")
    if order is not None and order not in ORDERS:
        raise refuse_parameter("order", str(order)[:100], "must be 'asc' or 'dsc'")
    for name, maximum in (("per_page", MAX_PER_PAGE), ("page", MAX_PAGE)):
        if name in view_args:
            _whole_number(name, view_args[name], maximum)


def _whole_number(name: str, raw: object, maximum: int) -> None:
    text = str(raw)[:100]
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= maximum):
        raise refuse_parameter(name, text, f"must be a whole number from 1 to {maximum}")


def _unknown_job_is_not_found(view: Callable[..., Any]) -> Callable[..., Any]:
    # rq-dashboard lets these escape as 500s; a job id in a URL is input, so answer our 404.
    @functools.wraps(view)
    def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return view(*args, **kwargs)
        except (NoSuchJobError, DeserializationError):
            raise JobNotFound(f"No runner job has the id {kwargs.get('job_id', '')!r}.") from None

    return translated


def escape_strings(value: Any) -> Any:
    """`value` with every string in it HTML-escaped (for templates that insert data as raw HTML)."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, dict):
        return {key: escape_strings(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [escape_strings(item) for item in value]
    return value


def _escaped_view(view: Callable[..., dict[str, Any]]) -> Callable[..., Response]:
    def escaped(**view_args: Any) -> Response:
        response = jsonify(escape_strings(view(**view_args)))
        response.headers["Cache-Control"] = "no-store"
        return response

    escaped.__name__ = view.__name__
    return escaped


def _current_job(worker: BaseWorker) -> dict[str, Any] | str:
    job_id = worker.get_current_job_id()
    if job_id is None:
        return "idle"
    try:
        job = Job.fetch(job_id, connection=worker.connection, serializer=JSONSerializer)
    except NoSuchJobError:  # deleted or expired between the two reads
        return "idle"
    # The description names the function; the call string would repeat the (user's) input.
    return {
        "job_id": job.id,
        "description": job.description,
        "created_at": dashboard_web.serialize_date(job.created_at),
        "call_string": job.description,
    }


def list_workers(instance_number: int) -> Response:
    """rq-dashboard's worker list, reading each busy worker's job with the JSON serializer."""
    workers = [
        {
            "name": worker.name,
            "pid": worker.pid,
            "queues": [queue.name for queue in worker.queues],
            "state": str(worker.get_state()),
            "current_job": _current_job(worker),
            "last_heartbeat": worker.last_heartbeat,
            "birth_date": worker.birth_date,
            "successful_job_count": worker.successful_job_count,
            "failed_job_count": worker.failed_job_count,
            "total_working_time": worker.total_working_time,
            "version": getattr(worker, "version", ""),
            "python_version": getattr(worker, "python_version", ""),
        }
        for worker in Worker.all(connection=runner_state().backends.connection, serializer=JSONSerializer)
    ]
    workers.sort(key=lambda item: (item["state"], item["queues"], item["name"]))
    response = jsonify(workers=escape_strings(workers))
    response.headers["Cache-Control"] = "no-store"
    return response


def requeue_job_view(job_id: str) -> dict[str, str]:
    """Requeue one failed job as POST /jobs/<id>/retry does (JSON serializer, SQL row back to queued)."""
    state = runner_state()
    retry_job(job_id, state.backends, state.registry)
    return {"status": "OK"}


def requeue_all(queue_name: str) -> dict[str, Any]:
    """Requeue every failed job of a queue as POST /queues/failed/requeue does."""
    state = runner_state()
    outcome = requeue_failed(state.backends, state.registry, queue=queue_name)
    return {"status": "OK", "count": outcome.requeued}


def compact_view(queue_name: str) -> dict[str, Any]:
    """Drop the ids of jobs Redis no longer holds from a queue (404 for an unknown queue)."""
    state = runner_state()
    return {"status": "OK", "removed": compact_queue(state.backends, state.registry, queue_name)}
def _queues() -> list[Queue]:
    state = runner_state()
    names = known_queues(state.backends, state.registry)
    return [Queue(name, connection=state.backends.connection, serializer=JSONSerializer) for name in names]


def list_queues(instance_number: int) -> Response:
    """rq-dashboard's queue list, with every queue a worker serves (an empty `callbacks` too)."""
    response = jsonify(queues=dashboard_web.serialize_queues(instance_number, _queues()))
    response.headers["Cache-Control"] = "no-store"
    return response


def _every_queue_in_context(_app: Flask, template: Any, context: dict[str, Any], **_extra: Any) -> None:
    if str(template.name).startswith("rq_dashboard/") and "queues" in context:
        context["queues"] = _queues()


# The registries of a queue's Jobs page, in the order a look at a queue starts with.
REGISTRY_ORDER = ("queued", "started", "scheduled", "deferred", "failed", "finished", "canceled")
WAITING_OR_RUNNING = REGISTRY_ORDER[:4]


def busiest_queue(depths: list[QueueDepths]) -> tuple[str, str]:
    """The queue with the most jobs waiting or running (else the most jobs), and its first registry with any."""
    counts = [{registry: getattr(queue, registry) for registry in REGISTRY_ORDER} for queue in depths]
    # max() keeps the first of equals: the queues come in the order workers serve them.
    index = max(range(len(depths)), key=lambda i: (sum(counts[i][r] for r in WAITING_OR_RUNNING),
                                                  sum(counts[i].values())))
    registry = next((name for name in REGISTRY_ORDER if counts[index][name]), "queued")
    return depths[index].name, registry


def _opens_on_the_busiest_queue(view: Callable[..., Any]) -> Callable[..., Any]:
    # The Jobs tab links to /0/view/jobs, which rq-dashboard shows for `default`, often empty here.
    @functools.wraps(view)
    def jobs_overview(**view_args: Any) -> Any:
        if view_args.get("queue_name") is not None:
            return view(**view_args)
        state = runner_state()
        queue, registry = busiest_queue(queue_depths(state.backends, state.registry))
        return redirect(url_for(f"{BLUEPRINT_NAME}.jobs_overview", instance_number=view_args["instance_number"],
                                queue_name=queue, registry_name=registry, per_page="8", order="asc", page="1"))

    return jobs_overview


def create_dashboard_app() -> Flask:
    """The `dashboard` process: the API app's config, hooks and auth, serving only the dashboard and health."""
    from api import create_app

    app = create_app()
    app.before_request(_dashboard_only)
    return app


def _dashboard_only() -> BaseResponse | None:
    # Registered after the app's own hooks, so auth has answered first.
    if request.path == "/":
        return redirect(f"{DASHBOARD_PREFIX}/")
    if request.path == DASHBOARD_PREFIX or request.path.startswith(DASHBOARD_PROCESS_PATHS):
        return None
    raise NotFound("This process serves the dashboard only: see /dashboard/.")
