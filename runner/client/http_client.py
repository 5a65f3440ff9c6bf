"""An HTTP client of the runner's API (what the `python -m runner` client commands use).

HTTP goes through the standard library's urllib: no HTTP package beyond the runner's own
requirements. The transport is pluggable: tests wire a Flask test client in its place.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from runner.client.events import ServerEvent, parse_events
from runner.client.transport import (
    Transport,
    TransportResponse,
    UrllibTransport,
    normalize_base_url,
)
from runner.errors import ApiError, ApiUnreachable
from runner.status import TERMINAL_STATUSES

DEFAULT_TIMEOUT = 30.0
# Longer than the server's heartbeat interval (15 s), so an idle but healthy stream never times out.
STREAM_READ_TIMEOUT = 60.0
POLL_SECONDS = 0.5
RECONNECT_ATTEMPTS = 3
RECONNECT_DELAY_SECONDS = 1.0
# A job id prefix is looked for among this many of the newest jobs, this many per page (the API's most,
# runner.config.MAX_PAGE_SIZE: not imported, this module loads no settings).
PREFIX_SEARCH_JOBS = 1000
PREFIX_SEARCH_PAGE = 100


class RunnerClient:
    """The API's operations as methods returning its JSON; errors raise ApiError or ApiUnreachable."""

    def __init__(self, base_url: str, api_key: str | None = None, transport: Transport | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key
        self.transport: Transport = transport or UrllibTransport(self.base_url)

    def _send(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, payload: Any = None,
        timeout: float = DEFAULT_TIMEOUT, accept: str = "application/json",
    ) -> TransportResponse:
        headers = {"Accept": accept}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        query = {name: str(value) for name, value in (params or {}).items() if value is not None}
        response = self.transport(method, path, params=query, body=body, headers=headers, timeout=timeout)
        if response.status >= 400:
            try:
                raise _api_error(response.status, response.read())
            finally:
                response.close()
        return response

    def _json(self, method: str, path: str, **options: Any) -> Any:
        response = self._send(method, path, **options)
        try:
            raw = response.read()
        finally:
            response.close()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            message = f"The API answered with something that is not JSON: {raw[:200]!r}"
            raise ApiError(response.status, "invalid_response", message) from None

    def functions(self) -> list[dict[str, Any]]:
        """Every registered function."""
        return list(self._json("GET", "/functions")["functions"])

    def invoke(self, name: str, payload: Any, *, after: Sequence[str] = (),
               expires: float | None = None) -> dict[str, Any]:
        """Invoke a function, once the jobs `after` names have finished, if it starts within `expires`
        seconds; the accepted job's view (follow it with `follow`)."""
        path = f"/functions/{urllib.parse.quote(name, safe='')}/invocations"
        params = {"after": ",".join(after) or None, "expires": expires}
        return dict(self._json("POST", path, payload=payload, params=params))

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's view."""
        return dict(self._json("GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}"))

    def jobs(
        self, *, function: str | None = None, status: str | None = None, limit: int | None = None,
        cursor: str | None = None, schedule: str | None = None,
    ) -> dict[str, Any]:
        """A page of history: {"jobs": [...], "next": cursor or None}."""
        params = {"function": function, "status": status, "schedule": schedule, "limit": limit, "cursor": cursor}
        return dict(self._json("GET", "/jobs", params=params))

    def job_ids_starting_with(self, prefix: str, *, newest: int = PREFIX_SEARCH_JOBS) -> list[str]:
        """Ids of the `newest` jobs of the history that start with `prefix` (the API matches whole ids only)."""
        found: list[str] = []
        cursor = None
        for _page in range(-(-newest // PREFIX_SEARCH_PAGE)):
            page = self.jobs(limit=PREFIX_SEARCH_PAGE, cursor=cursor)
            found += [str(view["id"]) for view in page["jobs"] if str(view["id"]).startswith(prefix)]
            cursor = page.get("next")
            if not cursor:
                break
        return found

    def artifact_url(self, artifact: Mapping[str, Any]) -> str:
        """Where an artifact of a job view can be downloaded (its `url` is a path on the API)."""
        return f"{self.base_url}{artifact['url']}"

    def workers(self) -> list[dict[str, Any]]:
        """Every registered worker."""
        return list(self._json("GET", "/workers")["workers"])

    def queues(self) -> list[dict[str, Any]]:
        """Every known queue with its depths."""
        return list(self._json("GET", "/queues")["queues"])

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule, oldest first."""
        return list(self._json("GET", "/schedules")["schedules"])

    def create_schedule(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        """Create a schedule ({function, input, cron, timezone} or {function, input, every}); its view."""
        return dict(self._json("POST", "/schedules", payload=dict(definition)))

    def schedule_action(self, schedule_id: str, action: str) -> dict[str, Any] | None:
        """`show`, `pause`, `resume` (the schedule's view) or `delete` (None) one schedule."""
        path = f"/schedules/{urllib.parse.quote(schedule_id, safe='')}"
        if action == "show":
            return dict(self._json("GET", path))
        if action == "delete":
            self._json("DELETE", path)
            return None
        return dict(self._json("POST", f"{path}/{action}"))

    def requeue_failed(self, *, queue: str | None = None, function: str | None = None) -> dict[str, Any]:
        """Requeue failed jobs; {"requeued": n, "job_ids": [...]}."""
        selection = {key: value for key, value in (("queue", queue), ("function", function)) if value is not None}
        return dict(self._json("POST", "/queues/failed/requeue", payload=selection))

    def events(self, job_id: str, timeout: float = STREAM_READ_TIMEOUT) -> Iterator[ServerEvent]:
        """The job's event stream, until the server closes it."""
        response = self._send(
            "GET", f"/jobs/{urllib.parse.quote(job_id, safe='')}/events", timeout=timeout, accept="text/event-stream"
        )
        try:
            yield from parse_events(response.iter_lines())
        finally:
            response.close()

    def follow(
        self, job_id: str, timeout: float, on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow a job until it ends or `timeout` passes; return its last view.

        Uses the event stream (reconnecting when the server closes it, or a few times when the
        connection breaks, as in a web process restart), and polls GET /jobs/<id> when the server
        offers no stream (an older API, or all its stream slots taken).
        """
        deadline = time.monotonic() + timeout
        broken = 0
        view = self.job(job_id)
        notify = on_update or (lambda _update: None)
        notify(view)
        while view.get("status") not in TERMINAL_STATUSES and time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            try:
                view = self._follow_stream(job_id, view, min(STREAM_READ_TIMEOUT, remaining + 1), notify)
            except ApiError as error:
                if error.status not in (404, 503) or error.code == "job_not_found":
                    raise
                view = self._poll(job_id, deadline, notify)
            except ApiUnreachable:
                if time.monotonic() >= deadline:
                    break  # the read timed out at our own deadline
                broken += 1
                if broken > RECONNECT_ATTEMPTS:
                    raise
                time.sleep(RECONNECT_DELAY_SECONDS)
        return view

    def _follow_stream(
        self, job_id: str, view: dict[str, Any], read_timeout: float, notify: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        for event in self.events(job_id, timeout=read_timeout):
            if event.event in ("state", *TERMINAL_STATUSES):
                view = event.json()
            elif event.event in ("progress", "status"):
                update = event.json()
                view = dict(view)
                # The terminal view (with its result) comes in the final event, right after this one.
                if update.get("status") not in TERMINAL_STATUSES:
                    view["status"] = update.get("status", view.get("status"))
                if event.event == "progress":
                    view["progress"] = {"percent": update.get("percent", 0), "message": update.get("message", "")}
            elif event.event == "stream-error":
                time.sleep((event.retry_ms or 1000) / 1000)
            notify(view)
            if view.get("status") in TERMINAL_STATUSES or event.event in ("timeout", "stream-error"):
                break
        return view

    def _poll(self, job_id: str, deadline: float, notify: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        while True:
            view = self.job(job_id)
            notify(view)
            if view.get("status") in TERMINAL_STATUSES or time.monotonic() >= deadline:
                return view
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str):
        return ApiError(status, body["error"], body["message"], body.get("details"))
    text = raw.decode("utf-8", errors="replace").strip()[:200] or "no body"
    return ApiError(status, "http_error", f"The API answered {status}: {text}")
