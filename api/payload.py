"""Reading request bodies and query parameters, with a clear error for each mistake."""

from __future__ import annotations

import io
import json
import math
from functools import cached_property
from typing import IO, Any, cast

from flask import Request
from gunicorn.http.errors import NoMoreData, ParseException

from api.errors import DRAIN_LIMIT_BYTES
from runner.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"
DRAIN_CHUNK_BYTES = 64 * 1024


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large")
    return value


# Made once: json.loads with hooks builds a decoder per call, which costs more than a small body.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


class RunnerRequest(Request):
    """Flask's request, with a body of unknown length (chunked) held to the same limit as any other."""

    @cached_property
    def stream(self) -> IO[bytes]:
        """The body; a chunked one raises PayloadTooLarge past the limit, MalformedRequest on bad framing."""
        limit = self.max_content_length
        if self.content_length is None and self.environ.get("wsgi.input_terminated") and limit is not None:
            return cast(IO[bytes], ChunkedBody(self.environ["wsgi.input"], limit))  # as Werkzeug casts its own
        return super().stream


class ChunkedBody(io.RawIOBase):
    """A body whose end the server finds (chunked transfer coding), read through its size limit.

    Werkzeug stops reading such a body at the limit and hands over what it read as if it were all:
    a JSON body over 1 MiB was silently cut there and accepted. And gunicorn's chunk parser raises
    its own errors (bad chunk sizes, missing line ends, a client gone mid-body), which were 500s.
    """

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__()
        self._stream = stream
        self._limit = limit
        self._read = 0

    def readable(self) -> bool:
        """Whether the body can be read: always."""
        return True

    def readinto(self, buffer: Any) -> int:
        """Read the next bytes of the body into `buffer`; 0 at its end."""
        try:
            data = self._stream.read(len(buffer))
        except (ParseException, NoMoreData) as exc:
            raise MalformedRequest(f"The chunked request body is malformed: {exc}.") from None
        self._read += len(data)
        if self._read > self._limit:
            self._discard_rest()
            raise PayloadTooLarge(f"The request body is larger than the limit of {self._limit} bytes.",
                                  details={"limit": self._limit})
        buffer[: len(data)] = data
        return len(data)

    def _discard_rest(self) -> None:
        # As for a body whose length was announced (api.errors): reading a moderate rest lets the
        # client read the 413 instead of a reset connection; past DRAIN_LIMIT_BYTES, closing is cheaper.
        try:
            while self._read <= self._limit + DRAIN_LIMIT_BYTES and (chunk := self._stream.read(DRAIN_CHUNK_BYTES)):
                self._read += len(chunk)
        except (ParseException, NoMoreData):
            pass  # the client's framing is broken too: nothing more to save


def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object, when it is JSON or has no content type."""
    # The type is judged before the length: an empty form post is what a page of another site
    # can make a browser send without asking (no CORS preflight), and it must not act as `{}`.
    mimetype = request.mimetype or ""
    if mimetype and mimetype != JSON_MEDIA_TYPE and not mimetype.endswith("+json"):
        raise _not_json(request, mimetype)
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if not mimetype:
        raise _not_json(request, "a body without a content type")
    try:
        value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedRequest(f"The body must be a JSON object, not {type(value).__name__}.")
    return value


def _not_json(request: Request, sent: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(f"Send the input as {JSON_MEDIA_TYPE}, not {sent}.",
                                details={"content_type": request.content_type})


def refuse_parameter(name: str, raw: str, reason: str) -> MalformedRequest:
    """The 400 for a bad query parameter: `reason` completes "The parameter 'name' ...", the value is in details."""
    return MalformedRequest(f"The parameter {name!r} {reason}.", details={name: raw})


def parse_number(name: str, raw: str, reason: str) -> float:
    """The text of query parameter `name` as a finite number; `reason` is the 400's message otherwise."""
    try:
        value = float(raw)
    except ValueError:
        raise refuse_parameter(name, raw, reason) from None
    if not math.isfinite(value):
        raise refuse_parameter(name, raw, reason)
    return value


def read_number(request: Request, name: str, *, minimum: float, maximum: float) -> float | None:
    """A numeric query parameter within bounds (clamped to `maximum`), or None when absent."""
    raw = request.args.get(name)
    if not raw:  # `?name=` counts as absent, as for the listing filters
        return None
    reason = f"must be a finite number of at least {minimum:g}"
    value = parse_number(name, raw, reason)
    if value < minimum:
        raise refuse_parameter(name, raw, reason)
    return min(value, maximum)


def read_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    """A whole-number query parameter within bounds, or `default` when absent."""
    raw = request.args.get(name)
    if not raw:  # as in read_number
        return default
    try:
        value = int(raw)
    except ValueError:
        raise refuse_parameter(name, raw, "must be a whole number") from None
    if not minimum <= value <= maximum:
        raise refuse_parameter(name, raw, f"must be between {minimum} and {maximum}")
    return value
