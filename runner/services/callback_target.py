"""Where a completion callback may go: its URL checked, its host resolved within a bound, its addresses judged.

A host name is resolved by the system resolver, which may take as long as its DNS servers do
(glibc waits 5 s per server, and tries again). So the lookup runs in a resolver thread of its
own, and the caller waits for it `within` seconds at most: past that, HostLookupPending (the
caller decides: the API accepts the URL and leaves the judgement to the delivery, a delivery is
retried later). At most RESOLVER_THREADS lookups run at once in a process; a caller that finds
them all busy waits for one within the same bound. IP literals are read on the caller's thread,
with no lookup. Every address is judged by runner.services.address_guard.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from runner.services.address_guard import address_refusal

MAX_URL_LENGTH = 2048
# Lookups of slow hosts that may run at once in one process (each in a daemon thread).
RESOLVER_THREADS = 8

AddressInfo = list[tuple[Any, ...]]


class UnsafeCallbackUrl(ValueError):
    """A callback URL the runner will not POST to; the message says why."""


class HostLookupPending(Exception):  # noqa: N818 (a state: the answer may still come)
    """The host's addresses did not come in time (a slow or temporarily failing DNS); ask again later."""


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


_lookups = threading.BoundedSemaphore(RESOLVER_THREADS)


def lookup(host: str, port: int, within: float) -> AddressInfo:
    """socket.getaddrinfo(host, port) for TCP, waited for `within` seconds at most (HostLookupPending past it)."""
    try:  # an IP literal: no DNS, no thread
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    deadline = time.monotonic() + within
    if not _lookups.acquire(timeout=within):
        raise HostLookupPending(f"every resolver thread is busy with a slow lookup for {within:g} s")
    answer: dict[str, Any] = {}
    done = threading.Event()

    def ask() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            answer["error"] = exc
        finally:
            done.set()
            _lookups.release()

    threading.Thread(target=ask, name="runner-resolver", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        raise HostLookupPending(f"no answer within {within:g} s")
    error = answer.get("error")
    if isinstance(error, socket.gaierror) and error.errno == socket.EAI_AGAIN:
        raise HostLookupPending(str(error))
    if error is not None:
        raise error
    infos: AddressInfo = answer["infos"]
    return infos


def resolve_target(url: str, *, allow_private: bool, within: float) -> CallbackTarget:
    """Parse, resolve (within `within` s) and check a callback URL.

    UnsafeCallbackUrl says what is wrong with it; HostLookupPending that its host did not resolve in time.
    """
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
        infos = lookup(parts.hostname, port, within)
    except HostLookupPending as exc:
        raise HostLookupPending(f"its host {parts.hostname!r} did not resolve ({exc})") from None
    except (OSError, UnicodeError) as exc:
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
