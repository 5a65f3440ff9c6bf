"""Reading request bodies and query parameters, with a clear error for each mistake."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Request

from runner.errors import MalformedRequest, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is too large")
    return value


# Made once: json.loads with hooks builds a decoder per call, which costs more than a small body.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


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
