"""How the HTTP client's requests travel: a pluggable transport (urllib by default; tests wire a Flask
test client in its place), and the base URL it is given."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from runner.errors import ApiUnreachable

UNREACHABLE_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class TransportResponse(Protocol):
    """What a transport hands back: a status, headers, and a body read whole or line by line."""

    status: int

    def header(self, name: str) -> str | None:
        """One response header, or None."""

    def read(self) -> bytes:
        """The whole body."""

    def iter_lines(self) -> Iterator[str]:
        """The body line by line, as it arrives (without line endings)."""

    def close(self) -> None:
        """Release the connection."""


class Transport(Protocol):
    """Sends one request; raises ApiUnreachable when no HTTP answer comes back."""

    def __call__(
        self, method: str, path: str, *, params: Mapping[str, str], body: bytes | None, headers: Mapping[str, str],
        timeout: float,
    ) -> TransportResponse: ...


class UrllibResponse:
    """A urllib response (or HTTPError, which is one too) as a TransportResponse."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.status = int(raw.status if hasattr(raw, "status") else raw.code)

    def header(self, name: str) -> str | None:
        value = self.raw.headers.get(name)
        return None if value is None else str(value)

    def read(self) -> bytes:
        try:
            return bytes(self.raw.read())
        except UNREACHABLE_ERRORS as exc:
            raise ApiUnreachable(f"The connection broke while reading the answer ({exc}).") from exc

    def iter_lines(self) -> Iterator[str]:
        try:
            while line := self.raw.readline():
                yield line.decode("utf-8", errors="replace").rstrip("\r\n")
        except UNREACHABLE_ERRORS as exc:
            raise ApiUnreachable(f"The event stream broke ({exc}).") from exc

    def close(self) -> None:
        self.raw.close()


def normalize_base_url(url: str) -> str:
    """`url` as the API's base URL: `host:port` gets http://, a trailing slash goes; ValueError unless http(s)."""
    given = url.strip()
    url = given if "://" in given else f"http://{given}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{given!r} is not an http(s) URL such as http://127.0.0.1:8000 or 127.0.0.1:8000")
    return url.rstrip("/")


class UrllibTransport:
    """Talks HTTP to a base URL with urllib."""

    def __init__(self, base_url: str) -> None:
        self.base_url = normalize_base_url(base_url)

    def __call__(
        self, method: str, path: str, *, params: Mapping[str, str], body: bytes | None, headers: Mapping[str, str],
        timeout: float,
    ) -> TransportResponse:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            f"{self.base_url}{path}{query}", data=body, headers=dict(headers), method=method
        )
        try:
            return UrllibResponse(urllib.request.urlopen(request, timeout=timeout))
        except urllib.error.HTTPError as error:
            return UrllibResponse(error)  # an HTTP answer: the client reads its error body
        except urllib.error.URLError as exc:
            raise ApiUnreachable(f"Cannot reach the API at {self.base_url} ({exc.reason}).") from exc
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            raise ApiUnreachable(f"Cannot reach the API at {self.base_url} ({exc or type(exc).__name__}).") from exc
