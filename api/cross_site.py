"""Requests another site makes a browser send: refused on every state-changing route.

Any web page can make a visitor's browser POST to this API: a form post needs no CORS
preflight, and the browser adds whatever it holds for this host (a Basic login to the
dashboard). Without API keys nothing else stands in the way, so a page could invoke functions
or requeue every failed job. Browsers label each request with `Sec-Fetch-Site` and, on a POST,
`Origin`: a request labelled as coming from another host is refused with 403 `forbidden`,
whether keys are set or not. Clients that send neither label (curl, scripts, the CLI) are not
a browser riding on someone's login, and pass.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Request, request

from runner.errors import RequestForbidden

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Sec-Fetch-Site values of a request made by this API's own pages, or typed by the user.
OWN_FETCHES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _authority(scheme: str, netloc: str) -> str:
    netloc = netloc.lower()
    default_port = DEFAULT_PORTS.get(scheme, "")
    return netloc.removesuffix(default_port) if default_port else netloc


def from_another_site(incoming: Request) -> bool:
    """True when a browser says the request comes from a page of another host (or of no host at all)."""
    fetch_site = incoming.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in OWN_FETCHES:
        return True  # cross-site, same-site (a sibling subdomain) or a value we do not know
    origin = incoming.headers.get("Origin")
    if origin is None:
        return False
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return True  # "null": a sandboxed frame, a file: page, a redirect across origins
    # Hosts, not schemes: behind a TLS-terminating proxy the app sees http while the page is https.
    return _authority(parts.scheme, parts.netloc) != _authority(parts.scheme, incoming.host)


def refuse_cross_site_changes() -> None:
    """The `before_request` hook: RequestForbidden for a state-changing request from another site."""
    if request.method in STATE_CHANGING_METHODS and from_another_site(request):
        raise RequestForbidden(
            "Requests that change state are not accepted from another site's pages.",
            details={"origin": request.headers.get("Origin"), "sec_fetch_site": request.headers.get("Sec-Fetch-Site")},
        )


def install_cross_site_guard(app: Flask) -> None:
    """Refuse cross-site POST, PUT, PATCH and DELETE on every route, the dashboard's included."""
    app.before_request(refuse_cross_site_changes)
