"""Completion callbacks: when a job ends, POST its final view to the URL given at invoke time.

`X-Callback-Url` is checked when the invocation arrives (http/https, a port other than 0,
resolvable, and, unless RUNNER_CALLBACK_ALLOW_PRIVATE is on, only public addresses, the IPv4
address inside an IPv6 one included: runner.services.address_guard). When the job finishes,
fails or is stopped, a lifecycle listener enqueues a separate job on the `callbacks` queue whose
entry point is `deliver_callback` below, never anything named by a request. Delivery resolves
the host again, checks every address again with the same judgement (a DNS answer may have
changed since) and connects to a checked address only. Bodies are signed
with RUNNER_CALLBACK_SECRET (`X-Runner-Signature: sha256=<hex HMAC of the body>`).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from runner.config import Settings
from runner.errors import CallbackDeliveryError, InvalidInput
from runner.rq_seam.bookkeeping import current_job
from runner.rq_seam.queues import queue_for
from runner.services.address_guard import address_refusal
from runner.services.job_views import view_from_job
from runner.services.lifecycle import JobEvent

log = logging.getLogger(__name__)

HEADER = "X-Callback-Url"
JOB_ID_HEADER = "X-Runner-Job-Id"
EVENT_HEADER = "X-Runner-Event"
SIGNATURE_HEADER = "X-Runner-Signature"
CALLBACK_QUEUE = "callbacks"
DELIVERY_ENTRY_POINT = "runner.services.callbacks.deliver_callback"
CALLBACK_EVENTS = frozenset({"finished", "failed", "stopped"})
MAX_URL_LENGTH = 2048
DELIVERY_TIMEOUT_SECONDS = 10
# Seconds before each retry of a delivery that met a connection error, a 429 or a 5xx.
DELIVERY_BACKOFF = (5, 30, 120, 600, 1800)
# The delivery job's own timeout: DNS plus a 10 s request on a couple of addresses.
DELIVERY_JOB_TIMEOUT = 60
DELIVERY_RESULT_TTL = 24 * 3600
DELIVERY_FAILURE_TTL = 7 * 24 * 3600
USER_AGENT = "async-task-runner-callbacks/1"


class UnsafeCallbackUrl(ValueError):
    """A callback URL the runner will not POST to; the message says why."""


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def resolve_target(url: str, *, allow_private: bool) -> CallbackTarget:
    """Parse, resolve and check a callback URL; UnsafeCallbackUrl says what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeCallbackUrl(f"it is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UnsafeCallbackUrl("it contains spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeCallbackUrl(f"it is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeCallbackUrl("only http and https URLs are allowed")
    if not parts.hostname:
        raise UnsafeCallbackUrl("it has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeCallbackUrl("credentials in the URL are not supported")
    if port == 0:  # not a port anything listens on; left as is, it would read as the default port
        raise UnsafeCallbackUrl("port 0 is not allowed")
    port = port or (443 if scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeCallbackUrl(f"its host {parts.hostname!r} cannot be resolved ({exc})") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeCallbackUrl(f"its host {parts.hostname!r} has no address")
    if not allow_private:
        for address in addresses:
            reason = address_refusal(address)
            if reason:
                raise UnsafeCallbackUrl(f"its host {parts.hostname!r} resolves to a {reason}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return CallbackTarget(scheme, parts.hostname, port, path, addresses)


def check_callback_url(raw: str | None, settings: Settings) -> str | None:
    """The X-Callback-Url header's value (None when absent); InvalidInput naming the header when unsafe."""
    if raw is None:
        return None
    try:
        resolve_target(raw, allow_private=settings.callback_allow_private)
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
    )


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a checked address, whatever the host name resolves to by now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate checked against the host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host)


def _post(target: CallbackTarget, address: str, body: bytes, headers: dict[str, str]) -> int:
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = kind(target.host, target.port, address, DELIVERY_TIMEOUT_SECONDS)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)  # a receiver's body is not ours to keep; read a little so it can finish
        return int(response.status)
    finally:
        connection.close()


def _give_up(message: str) -> CallbackDeliveryError:
    job = current_job()
    if job is not None:
        job.retries_left = 0  # a refusal or an unsafe address will not change on a retry
    return CallbackDeliveryError(message)


def deliver_callback(url: str, job_id: str, event: str, body: str) -> dict[str, Any]:
    """POST a job's final view to its callback URL (the entry point of every callback job)."""
    settings = Settings.from_env()
    try:
        target = resolve_target(url, allow_private=settings.callback_allow_private)
    except UnsafeCallbackUrl as exc:
        raise _give_up(f"Callback URL refused at delivery: {exc}.") from None
    payload = body.encode()
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
            status = _post(target, address, payload, headers)
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{address}: {type(exc).__name__}: {exc}")
            continue
        if 200 <= status < 300:
            return {"status": status, "address": address}
        if status == 429 or status >= 500:
            raise CallbackDeliveryError(f"The callback receiver answered {status}; will retry.")
        raise _give_up(f"The callback receiver answered {status}; not retried.")
    raise CallbackDeliveryError(f"The callback receiver could not be reached: {'; '.join(errors)}.")
