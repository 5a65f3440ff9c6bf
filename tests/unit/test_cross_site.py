"""Cross-site requests (api.cross_site) and the 415 for bodies that are not JSON, on every state-changing route."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask import Request
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder, TestResponse

from api.cross_site import from_another_site
from runner.config import Settings

ApiError = Callable[..., dict[str, Any]]
KEY = "cross-site-key-123"
FORM = "application/x-www-form-urlencoded"

# What a browser says when a page of another host (or of none) makes it send the request.
FOREIGN = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost:8001"},  # another port is another origin
    {"Origin": "http://localhost.evil.example"},
    {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},  # the two labels disagree: refuse
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling subdomain is another site's page too
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://localhost"},
]
# What this API's own pages (the dashboard, /docs), the user's address bar, and non-browsers send.
OWN = [
    {},
    {"Origin": "http://localhost"},
    {"Origin": "https://localhost"},  # behind a TLS-terminating proxy
    {"Origin": "http://LOCALHOST:80"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"},
    {"Sec-Fetch-Site": "none"},
]
# Every state-changing route, with a body it takes. Each acts on something that does not exist or
# is harmless, so what matters is whether the request got past the guard.
STATE_CHANGING: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/functions/simple_calculation/invocations", {"json": {"expression": "6*7"}}),
    ("POST", "/queues/failed/requeue", {"json": {}}),
    ("POST", "/jobs/no-such-job/cancel", {}),
    ("POST", "/jobs/no-such-job/retry", {}),
    ("POST", "/uploads", {"upload": b"a,b\n1,2\n"}),
    ("POST", "/dashboard/requeue/demo_tasks", {}),
    ("DELETE", "/jobs/no-such-job", {}),
    ("PUT", "/functions/simple_calculation", {"json": {}}),
    ("PATCH", "/jobs/no-such-job", {"json": {}}),
]
route_ids = [f"{method} {path}" for method, path, _ in STATE_CHANGING]


def send(client: FlaskClient, method: str, path: str, options: dict[str, Any], headers: dict[str, str]) -> TestResponse:
    """The request, with `upload` sent as a multipart file field (a fresh stream each time)."""
    if "upload" in options:
        options = {"data": {"file": (io.BytesIO(options["upload"]), "t.csv")}, "content_type": "multipart/form-data"}
    return client.open(path, method=method, headers=headers, **options)


@pytest.fixture
def keyed(make_client: Callable[..., FlaskClient], settings: Settings) -> FlaskClient:
    return make_client(settings=replace(settings, api_keys=KEY))


@pytest.mark.parametrize(("method", "path", "options"), STATE_CHANGING, ids=route_ids)
@pytest.mark.parametrize("headers", FOREIGN)
def test_state_changing_requests_from_another_site_are_403(
    client: FlaskClient, api_error: ApiError, assert_nothing_enqueued: Callable[[], None],
    method: str, path: str, options: dict[str, Any], headers: dict[str, str],
) -> None:
    body = api_error(send(client, method, path, options, headers), 403, "forbidden")
    assert body["details"] == {"origin": headers.get("Origin"), "sec_fetch_site": headers.get("Sec-Fetch-Site")}
    assert_nothing_enqueued()


@pytest.mark.parametrize(("method", "path", "options"), STATE_CHANGING, ids=route_ids)
def test_with_api_keys_a_valid_key_does_not_open_the_door_to_another_site(
    keyed: FlaskClient, api_error: ApiError, method: str, path: str, options: dict[str, Any],
) -> None:
    # A browser that logged in to the dashboard sends its Basic credentials to any page's form post.
    headers = {"Authorization": f"Bearer {KEY}", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
    api_error(send(keyed, method, path, options, headers), 403, "forbidden")
    api_error(send(keyed, method, path, options, {"Origin": "http://evil.example"}), 401, "unauthorized")


@pytest.mark.parametrize("headers", OWN)
def test_own_pages_and_non_browsers_are_let_through(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.post("/functions/simple_calculation/invocations", json={"expression": "6*7"}, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert client.post("/queues/failed/requeue", json={}, headers=headers).status_code == 200
    upload = client.post("/uploads", data={"file": (io.BytesIO(b"x"), "x.txt")}, headers=headers)
    assert upload.status_code == 201


@pytest.mark.parametrize("headers", FOREIGN)
def test_reading_is_not_state_changing(client: FlaskClient, headers: dict[str, str]) -> None:
    # A page of another site cannot read the answer (no CORS headers); refusing GETs would break links.
    assert client.get("/functions", headers=headers).status_code == 200
    assert client.open("/functions", method="OPTIONS", headers=headers).status_code == 200


def test_a_cross_site_requeue_leaves_failed_jobs_failed(
    client: FlaskClient, invoke: Callable[..., TestResponse], run_jobs: Callable[..., bool], api_error: ApiError,
) -> None:
    failed = invoke("simple_calculation", {"expression": "1/0"}).get_json()["id"]
    run_jobs()
    form_post = {"Origin": "http://evil.example", "Content-Type": FORM}
    api_error(client.post("/queues/failed/requeue", data=b"", headers=form_post), 403, "forbidden")
    assert client.get(f"/jobs/{failed}").get_json()["status"] == "failed"


JSON_ROUTES = ["/functions/simple_calculation/invocations", "/functions/unreliable_task/invocations",
               "/queues/failed/requeue"]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("content_type", [FORM, "multipart/form-data; boundary=x", "text/plain", "application/xml"])
@pytest.mark.parametrize("body", [b"", b"  ", b"expression=1", b'{"expression": "1"}'], ids=["empty", "blank",
                                                                                              "form", "json-text"])
def test_a_body_that_is_not_json_is_415_whatever_its_length(
    client: FlaskClient, api_error: ApiError, assert_nothing_enqueued: Callable[[], None],
    path: str, content_type: str, body: bytes,
) -> None:
    response = client.post(path, data=body, headers={"Content-Type": content_type})
    sent = api_error(response, 415, "unsupported_media_type")["details"]["content_type"]
    assert sent.partition(";")[0] == content_type.partition(";")[0]  # the test client makes its own boundary
    assert_nothing_enqueued()


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/json"},
                                     {"Content-Type": "application/merge-patch+json; charset=utf-8"}])
def test_an_empty_json_or_untyped_body_is_still_an_empty_object(client: FlaskClient, headers: dict[str, str]) -> None:
    # Non-browser clients (curl -X POST) rely on it; a browser form always sends a content type.
    assert client.post("/functions/unreliable_task/invocations", data=b"", headers=headers).status_code == 202
    assert client.post("/queues/failed/requeue", data=b"", headers=headers).get_json()["requeued"] == 0


@pytest.mark.parametrize(
    ("host", "headers", "foreign"),
    [
        ("runner.example.com", {"Origin": "https://runner.example.com"}, False),
        ("runner.example.com:443", {"Origin": "https://runner.example.com"}, False),
        ("runner.example.com:8443", {"Origin": "https://runner.example.com:8443"}, False),
        ("runner.example.com:8443", {"Origin": "https://runner.example.com"}, True),
        ("runner.example.com", {"Origin": "https://app.example.com"}, True),
        ("runner.example.com", {"Origin": "file://"}, True),
        ("runner.example.com", {"Sec-Fetch-Site": "Cross-Site"}, True),
        ("runner.example.com", {"Sec-Fetch-Site": "some-future-value"}, True),
    ],
)
def test_from_another_site_compares_hosts(host: str, headers: dict[str, str], foreign: bool) -> None:
    environ = EnvironBuilder(path="/", method="POST", headers={"Host": host, **headers}).get_environ()
    assert from_another_site(Request(environ)) is foreign


def test_the_openapi_document_lists_the_403_on_every_state_changing_operation(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]
    changing = [(path, method) for path, operations in paths.items() for method in operations
                if method.upper() in {"POST", "PUT", "PATCH", "DELETE"}]
    assert ("/queues/failed/requeue", "post") in changing and ("/uploads", "post") in changing
    for path, method in changing:
        assert paths[path][method]["responses"]["403"]["description"].startswith("A browser sent"), (path, method)
    assert "403" not in paths["/functions"]["get"]["responses"]
