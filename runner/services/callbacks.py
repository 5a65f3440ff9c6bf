"""Completion callbacks: when a job ends, POST its final view to the URL given at invoke time.

`X-Callback-Url` is checked when the invocation arrives (runner.services.callback_target: http/https,
a port other than 0, resolvable, and, unless RUNNER_CALLBACK_ALLOW_PRIVATE is on, only public
addresses, the IPv4 address inside an IPv6 one included). The request thread waits for the host's
addresses API_RESOLVE_SECONDS at most: a host whose DNS answers slower is accepted unjudged, and
judged at delivery. When the job finishes, fails, is stopped or is canceled by the runner (expired,
its dependency failed), a lifecycle listener enqueues a
separate job on the `callbacks` queue whose entry point is `deliver_callback` below, never anything
named by a request. Delivery resolves the host again, checks every address again with the same
judgement (a DNS answer may have changed since) and connects to a checked address only, all within
DELIVERY_TIMEOUT_SECONDS however slowly the receiver answers (runner.services.callback_post). Bodies
are signed with RUNNER_CALLBACK_SECRET (`X-Runner-Signature: sha256=<hex HMAC of the body>`).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
from typing import Any

import redis
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from runner import tracing
from runner.config import Settings
from runner.errors import CallbackDeliveryError, InvalidInput
from runner.rq_seam.bookkeeping import current_job
from runner.rq_seam.queues import queue_for
from runner.services.callback_post import Deadline, DeadlinePassed, post
from runner.services.callback_target import HostLookupPending, UnsafeCallbackUrl, resolve_target
from runner.services.job_views import view_from_job
from runner.services.lifecycle import JobEvent

log = logging.getLogger(__name__)

HEADER = "X-Callback-Url"
JOB_ID_HEADER = "X-Runner-Job-Id"
EVENT_HEADER = "X-Runner-Event"
SIGNATURE_HEADER = "X-Runner-Signature"
CALLBACK_QUEUE = "callbacks"
DELIVERY_ENTRY_POINT = "runner.services.callbacks.deliver_callback"
CALLBACK_EVENTS = frozenset({"finished", "failed", "stopped", "canceled"})
# The longest an API request waits for the callback host's addresses; a slower DNS: accepted unjudged.
API_RESOLVE_SECONDS = 2.0
# All of one delivery: resolving the host, connecting, sending, the answer's status line and headers.
DELIVERY_TIMEOUT_SECONDS = 10
# The part of it that resolving the host may take (glibc's own timeout per DNS server is 5 s).
DELIVERY_RESOLVE_SECONDS = 5.0
# Seconds before each retry of a delivery that met a connection error, a timeout, a 429 or a 5xx.
DELIVERY_BACKOFF = (5, 30, 120, 600, 1800)
# The delivery job's own timeout, a backstop: the delivery ends by DELIVERY_TIMEOUT_SECONDS.
DELIVERY_JOB_TIMEOUT = 30
DELIVERY_RESULT_TTL = 24 * 3600
DELIVERY_FAILURE_TTL = 7 * 24 * 3600
USER_AGENT = "async-task-runner-callbacks/1"


def check_callback_url(raw: str | None, settings: Settings) -> str | None:
    """The X-Callback-Url header's value (None when absent); InvalidInput naming the header when unsafe.

    A host that does not resolve within API_RESOLVE_SECONDS is accepted: the delivery judges it.
    """
    if raw is None:
        return None
    try:
        resolve_target(raw, allow_private=settings.callback_allow_private, within=API_RESOLVE_SECONDS)
    except HostLookupPending as exc:
        log.info("%s accepted unjudged, %s: judged at delivery", HEADER, exc)
    except UnsafeCallbackUrl as exc:
        message = f"The {HEADER} header is refused: {exc}."
        raise InvalidInput(message, details=[{"field": HEADER, "message": str(exc), "type": "callback_url"}]) from None
    return raw


def signature(body: bytes, secret: str) -> str:
    """`sha256=<hex>`: the HMAC-SHA256 of the exact body bytes with the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def enqueue_callbacks(connection: redis.Redis, event: JobEvent) -> None:
    """Lifecycle listener: when a job with a callback URL ends, enqueue the delivery of its final view."""
    if event.event not in CALLBACK_EVENTS or not event.callback_url:
        return  # most jobs have no callback: no Redis read for them
    try:
        job = Job.fetch(event.job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return
    url = event.callback_url
    body = json.dumps(view_from_job(job).to_dict(), default=str)
    queue_for(CALLBACK_QUEUE, connection).enqueue_call(
        func=DELIVERY_ENTRY_POINT,
        args=(url, job.id, event.event, body),
        timeout=DELIVERY_JOB_TIMEOUT,
        retry=Retry(max=len(DELIVERY_BACKOFF), interval=list(DELIVERY_BACKOFF)),
        result_ttl=DELIVERY_RESULT_TTL,
        failure_ttl=DELIVERY_FAILURE_TTL,
        description=f"callback {event.event} of {job.id}",
        # The delivery joins its job's trace.
        meta={tracing.TRACEPARENT: job.meta[tracing.TRACEPARENT]} if tracing.TRACEPARENT in job.meta else None,
    )


def _give_up(message: str) -> CallbackDeliveryError:
    job = current_job()
    if job is not None:
        job.retries_left = 0  # a refusal or an unsafe address will not change on a retry
    return CallbackDeliveryError(message)


def deliver_callback(url: str, job_id: str, event: str, body: str) -> dict[str, Any]:
    """POST a job's final view to its callback URL (the entry point of every callback job)."""
    settings = Settings.from_env()
    deadline = Deadline(DELIVERY_TIMEOUT_SECONDS)
    delivery = current_job()
    traceparent = delivery.meta.get(tracing.TRACEPARENT) if delivery is not None else None
    try:
        with tracing.span("callback delivery", traceparent=traceparent, kind="CLIENT",
                          attributes={"runner.job_id": job_id, "runner.event": event}):
            return _deliver(url, job_id, event, body.encode(), settings, deadline)
    finally:
        deadline.close()


def _deliver(url: str, job_id: str, event: str, payload: bytes, settings: Settings,
             deadline: Deadline) -> dict[str, Any]:
    try:
        target = resolve_target(url, allow_private=settings.callback_allow_private,
                                within=min(DELIVERY_RESOLVE_SECONDS, deadline.remaining()))
    except HostLookupPending as exc:
        raise CallbackDeliveryError(f"Callback URL not checked yet: {exc}; will retry.") from None
    except UnsafeCallbackUrl as exc:
        raise _give_up(f"Callback URL refused at delivery: {exc}.") from None
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        JOB_ID_HEADER: job_id,
        EVENT_HEADER: event,
    }
    if settings.callback_secret:
        headers[SIGNATURE_HEADER] = signature(payload, settings.callback_secret)
    errors: list[str] = []
    for address in target.addresses:
        try:
            status = post(target, address, payload, headers, deadline)
        except DeadlinePassed:
            errors.append(f"{address}: no answer within {DELIVERY_TIMEOUT_SECONDS} s, the delivery's deadline")
            break
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{address}: {type(exc).__name__}: {exc}")
            continue
        if 200 <= status < 300:
            return {"status": status, "address": address}
        if status == 429 or status >= 500:
            raise CallbackDeliveryError(f"The callback receiver answered {status}; will retry.")
        raise _give_up(f"The callback receiver answered {status}; not retried.")
    raise CallbackDeliveryError(f"The callback receiver could not be reached: {'; '.join(errors)}.")
