"""Live job progress as Server-Sent Events: `GET /jobs/<id>/events`.

A stream sends the job's current view (`state`), then a `status` event when the status word
changes and a `progress` event when the progress changes, and ends with one event named after
the terminal status (`finished`, `failed`, `stopped`, `canceled`) whose data is the job view.

A stream holds one gunicorn thread, so it is bounded: after RUNNER_SSE_MAX_SECONDS it sends a
`timeout` event (with a `retry:` hint) and closes, and each web process serves at most
RUNNER_SSE_MAX_STREAMS streams at once (503 beyond that). Comment lines every
RUNNER_SSE_HEARTBEAT_SECONDS keep proxies from closing an idle stream. A client that goes away
frees its slot at the next poll (RUNNER_SSE_POLL_SECONDS), not at the next heartbeat: each poll
peeks at the connection, and a closed one ends the stream (a reconnect loop held every slot for
15 s before). Redis is polled with one HMGET of the job's status and meta.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request

from api.errors import error_body
from api.state import runner_state
from runner.config import Settings
from runner.errors import BackendUnavailable, JobNotFound, TooManyStreams
from runner.redis_connection import REDIS_ERRORS
from runner.rq_seam.job_reads import watched_fields
from runner.services.backends import Backends
from runner.services.job_views import JobView, get_job_view
from runner.services.slots import Slots

blueprint = Blueprint("events", __name__)

EVENT_STREAM_MEDIA_TYPE = "text/event-stream"
RECONNECT_MILLISECONDS = 1000
# A comment line: clients ignore it, proxies see traffic, and a write to a gone client fails.
HEARTBEAT = ": keep-alive\n\n"
# A job Redis has forgotten is read from SQL: less often than Redis.
STORE_POLL_SECONDS = 1.0
_NOTHING_SEEN = object()


@dataclass(frozen=True)
class StreamLimits:
    """How long a stream lives, how often it polls and beats, and how many may be open at once."""

    max_seconds: float
    heartbeat_seconds: float
    poll_seconds: float
    max_streams: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        """The RUNNER_SSE_* settings."""
        return cls(
            max_seconds=settings.sse_max_seconds,
            heartbeat_seconds=settings.sse_heartbeat_seconds,
            poll_seconds=settings.sse_poll_seconds,
            max_streams=settings.sse_max_streams,
        )


def format_event(event: str, data: Any, *, retry_ms: int | None = None) -> str:
    """One SSE message: `event:` and a one-line JSON `data:` (and a `retry:` hint when given)."""
    lines = [f"event: {event}"]
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'), default=str)}")
    return "\n".join(lines) + "\n\n"


def _error_event(error: JobNotFound | BackendUnavailable) -> str:
    body = error_body(error.code, error.message, error.details)
    retry = RECONNECT_MILLISECONDS if isinstance(error, BackendUnavailable) else None
    return format_event("stream-error", body, retry_ms=retry)


def _changes(before: JobView, after: JobView) -> Iterator[str]:
    if after.is_terminal:
        if after.progress != before.progress:
            yield format_event("progress", {**after.progress, "status": after.status})
        yield format_event(after.status, after.to_dict())
        return
    if after.status != before.status:
        yield format_event("status", {"status": after.status, "previous": before.status, "attempts": after.attempts})
    if after.progress != before.progress or after.status != before.status:
        yield format_event("progress", {**after.progress, "status": after.status})


def _fingerprint(backends: Backends, job_id: str) -> tuple[Any, ...] | None:
    """The raw status and meta of the job in Redis; None when Redis does not hold it (or is away)."""
    try:
        status, meta = watched_fields(backends.connection, job_id)
    except REDIS_ERRORS:
        return None
    if status is None and meta is None:
        return None
    return status, meta


def job_events(
    view: JobView,
    backends: Backends,
    limits: StreamLimits,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    client_gone: Callable[[], bool] = lambda: False,
) -> Iterator[str]:
    """The stream of a job whose current view is `view`: state, changes, then its end, a timeout, or the client gone."""
    started = last_write = clock()
    yield format_event("state", view.to_dict())
    if view.is_terminal:
        yield format_event(view.status, view.to_dict())
        return
    # Nothing seen yet, so the first poll reads the view again: a job that ended between the
    # caller's read of `view` and this stream's first fingerprint would otherwise never change.
    seen: tuple[Any, ...] | None | object = _NOTHING_SEEN
    while True:
        if clock() - started >= limits.max_seconds:
            yield format_event(
                "timeout",
                {"message": "The stream reached its time limit; reconnect to follow the job.",
                 "status": view.status, "max_seconds": limits.max_seconds},
                retry_ms=RECONNECT_MILLISECONDS,
            )
            return
        sleep(limits.poll_seconds if seen is not None else max(limits.poll_seconds, STORE_POLL_SECONDS))
        if client_gone():
            return
        current = _fingerprint(backends, view.id)
        if current is None or current != seen:
            seen = current
            try:
                latest = get_job_view(view.id, backends)
            except (JobNotFound, BackendUnavailable) as exc:
                yield _error_event(exc)
                return
            chunks = list(_changes(view, latest))
            view = latest
            if chunks:
                yield "".join(chunks)
                last_write = clock()
            if view.is_terminal:
                return
        if clock() - last_write >= limits.heartbeat_seconds:
            yield HEARTBEAT
            last_write = clock()


@blueprint.get("/jobs/<job_id>/events")
def job_event_stream(job_id: str) -> Response:
    state = runner_state()
    backends = state.backends
    view = get_job_view(job_id, backends)  # unknown job: a 404 JSON error, before any streaming
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        return Response(b"", mimetype=EVENT_STREAM_MEDIA_TYPE, headers=headers)
    limits = StreamLimits.from_settings(backends.settings)
    if state.streams.take() is not None:
        raise TooManyStreams(
            "This server already serves its limit of event streams; retry shortly or poll GET /jobs/<id>.",
            details={"max_streams": limits.max_streams},
            retry_after=2,
        )
    events = job_events(view, backends, limits, client_gone=_departure_check(request.environ.get("gunicorn.socket")))
    response = Response(events, mimetype=EVENT_STREAM_MEDIA_TYPE, headers=headers)
    # The WSGI server closes the response when the stream ends or the client goes away.
    response.call_on_close(_releaser(state.streams))
    return response


def _departure_check(sock: socket.socket | None) -> Callable[[], bool]:
    """Whether the client closed the connection: a peek that reads the end of its stream (or fails)."""
    if sock is None:  # not under gunicorn (the test client): only a failed write tells
        return lambda: False

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # open, and nothing sent: still there
        except OSError:
            return True  # reset

    return gone


def _releaser(slots: Slots) -> Callable[[], None]:
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            slots.give_back()

    return release
