"""Serving a job's artifact so that a browser never runs what a function wrote.

An artifact's bytes and media type come from function code and, through it, from callers' input
(a report built from job names, an e-mail body). Opened from this API's own host, an HTML or SVG
artifact would run its scripts with this origin's rights. So every artifact response carries
`X-Content-Type-Options: nosniff` (the browser keeps the declared type) and a Content-Security-
Policy that allows no script, no fetch, no form and no framing, in a sandbox with an origin of its
own. Media types a browser shows passively (text, CSV, JSON, raster images, audio, video) are
served inline; every other type (HTML, SVG, XML, PDF, anything unknown) is an attachment, unless
the caller asks `?inline=1`, and even then the policy holds.
"""

from __future__ import annotations

from pathlib import Path

from flask import Request, Response, send_file

from api.payload import refuse_parameter

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
PASSIVE_MEDIA_TYPES = frozenset({
    "text/plain", "text/csv", "text/tab-separated-values", "application/json", "application/x-ndjson",
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp",
})
PASSIVE_PREFIXES = ("audio/", "video/")
INLINE_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def is_passive(media_type: str) -> bool:
    """True for a media type a browser displays without running anything in it."""
    essence = media_type.partition(";")[0].strip().lower()
    return essence in PASSIVE_MEDIA_TYPES or essence.startswith(PASSIVE_PREFIXES)


def read_inline(request: Request) -> bool | None:
    """`?inline=1` or `?inline=0` (also true/false, yes/no); None when absent."""
    raw = request.args.get("inline")
    if raw is None or raw == "":
        return None
    if raw.strip().lower() not in INLINE_WORDS:
        raise refuse_parameter("inline", raw, "must be 1 or 0")
    return INLINE_WORDS[raw.strip().lower()]


def artifact_response(path: Path, name: str, media_type: str, inline: bool | None) -> Response:
    """The file as a download or for display (passive types by default), with nosniff and the sandbox policy."""
    as_attachment = not is_passive(media_type) if inline is None else not inline
    response = send_file(path, mimetype=media_type, download_name=name, as_attachment=as_attachment, max_age=0)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response
