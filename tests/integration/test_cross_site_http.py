"""Over real HTTP (gunicorn, workers, no API keys): what another site's page can make a browser send changes nothing.

A page of evil.example can submit a form to this API (no CORS preflight for a form post) and
the browser labels it with `Origin` and `Sec-Fetch-Site`. Non-browser clients send neither.
"""

from __future__ import annotations

import pytest
import requests

from tests.integration.conftest import Stack

FORM = "application/x-www-form-urlencoded"
EVIL_FORM_POST = {"Content-Type": FORM, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
INVOKE = "/functions/simple_calculation/invocations"


def failed_job(stack: Stack) -> str:
    response = stack.invoke("simple_calculation", {"expression": "1/0"}, wait=10)
    assert response.status_code == 200 and response.json()["status"] == "failed", response.text
    job_id: str = response.json()["id"]
    return job_id


def assert_forbidden(response: requests.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == "forbidden" and set(body) == {"error", "message", "details"}


@pytest.mark.parametrize("body", [b"", b"expression=6*7"], ids=["empty", "fields"])
@pytest.mark.parametrize("labels", [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                                    {"Origin": "null"}, {"Sec-Fetch-Site": "same-site"}])
def test_a_form_post_from_another_site_invokes_nothing(sqlite_stack: Stack, body: bytes,
                                                       labels: dict[str, str]) -> None:
    before = sqlite_stack.row_count()
    response = sqlite_stack.post(INVOKE, data=body, headers={"Content-Type": FORM, **labels})
    assert_forbidden(response)
    assert sqlite_stack.row_count() == before


@pytest.mark.parametrize(
    ("content_type", "body"),
    [(FORM, b""), (FORM, b"expression=6*7"), ("text/plain", b'{"expression": "6*7"}'), ("text/plain", b""),
     ("multipart/form-data; boundary=x", b"")],
)
def test_a_body_that_is_not_json_is_415_whatever_its_length(sqlite_stack: Stack, content_type: str,
                                                            body: bytes) -> None:
    before = sqlite_stack.row_count()
    for path in (INVOKE, "/queues/failed/requeue"):
        response = sqlite_stack.post(path, data=body, headers={"Content-Type": content_type})
        assert response.status_code == 415, response.text
        assert response.json()["error"] == "unsupported_media_type"
    assert sqlite_stack.row_count() == before


def test_a_cross_site_requeue_leaves_failed_jobs_failed(sqlite_stack: Stack) -> None:
    job_id = failed_job(sqlite_stack)
    assert_forbidden(sqlite_stack.post("/queues/failed/requeue", data=b"", headers=EVIL_FORM_POST))
    assert_forbidden(sqlite_stack.post("/queues/failed/requeue", json={}, headers={"Origin": "http://evil.example"}))
    assert_forbidden(sqlite_stack.post(f"/jobs/{job_id}/retry", headers={"Sec-Fetch-Site": "cross-site"}))
    assert sqlite_stack.job(job_id)["status"] == "failed"
    # The same requests from a script (no browser labels) or from the API's own pages work.
    own_page = {"Origin": sqlite_stack.url, "Sec-Fetch-Site": "same-origin"}
    assert sqlite_stack.post(f"/jobs/{job_id}/retry", headers=own_page).status_code == 202
    assert sqlite_stack.wait_until_terminal(job_id)["status"] == "failed"
    requeued = sqlite_stack.post("/queues/failed/requeue", json={})
    assert requeued.status_code == 200 and job_id in requeued.json()["job_ids"]


def test_cancel_from_another_site_is_refused(sqlite_stack: Stack) -> None:
    response = sqlite_stack.invoke("simple_calculation", {"expression": "1+1"}, delay=300)
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert_forbidden(sqlite_stack.post(f"/jobs/{job_id}/cancel", headers={"Origin": "https://evil.example"}))
    assert sqlite_stack.job(job_id)["status"] == "scheduled"
    assert sqlite_stack.post(f"/jobs/{job_id}/cancel").json()["status"] == "canceled"


def test_an_upload_from_another_site_is_refused(sqlite_stack: Stack) -> None:
    files = {"file": ("t.csv", b"a,b\n1,2\n", "text/csv")}
    assert_forbidden(sqlite_stack.post("/uploads", files=files, headers={"Origin": "http://evil.example"}))
    assert sqlite_stack.post("/uploads", files=files).status_code == 201


def test_scripts_and_own_pages_keep_working(sqlite_stack: Stack) -> None:
    for headers in ({}, {"Origin": sqlite_stack.url, "Sec-Fetch-Site": "same-origin"}):
        response = sqlite_stack.post(f"{INVOKE}?wait=10", json={"expression": "6*7"}, headers=headers)
        assert response.status_code == 200 and response.json()["result"]["result"] == 42, response.text
    # Reads are not refused: a page of another site cannot read the answer anyway (no CORS headers).
    assert sqlite_stack.get("/functions", headers={"Origin": "http://evil.example"}).status_code == 200
