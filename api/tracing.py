"""A span per API request when tracing is on (runner.tracing): the root of an invocation's trace."""

from __future__ import annotations

from contextlib import ExitStack

from flask import Flask, Response, g, request

from runner import tracing


def install_tracing(app: Flask) -> None:
    """Start tracing in this process and open a server span around each request; nothing when off."""
    tracing.start_tracing("runner-api")
    if not tracing.tracing_on():
        return  # no hooks: untraced requests cost nothing
    app.before_request(_open_span)
    app.after_request(_note_status)
    app.teardown_request(_close_span)


def _open_span() -> None:
    spans = ExitStack()
    route = request.url_rule.rule if request.url_rule is not None else request.path
    g.request_span = spans.enter_context(tracing.span(
        f"{request.method} {route}", kind="SERVER",
        attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path}))
    g.request_spans = spans


def _note_status(response: Response) -> Response:
    current = g.get("request_span")
    if current is not None:
        current.set_attribute("http.response.status_code", response.status_code)
    return response


def _close_span(_error: BaseException | None) -> None:
    spans = g.pop("request_spans", None)
    if spans is not None:
        spans.close()
