"""GET /jobs/<id>/artifacts/<name>: nosniff and a sandbox policy always; active content downloaded unless ?inline=1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.artifacts import CONTENT_SECURITY_POLICY
from runner import function, save_artifact
from runner.authoring.registry import Registry

# name, media type given to save_artifact (None: guessed), and whether a browser shows it by default.
ARTIFACTS: list[tuple[str, str | None, bool]] = [
    ("report.html", "text/html", False),
    ("page.htm", None, False),
    ("page.xhtml", "application/xhtml+xml", False),
    ("drawing.svg", "image/svg+xml", False),
    ("feed.xml", "application/xml", False),
    ("data.xsl", "text/xsl", False),
    ("doc.pdf", "application/pdf", False),
    ("message.eml", "message/rfc822", False),
    ("script.js", "text/javascript", False),
    ("blob.bin", None, False),
    ("Mixed.HTML", "Text/HTML; charset=utf-8", False),
    ("notes.txt", "text/plain", True),
    ("Notes.TXT", "Text/Plain; charset=utf-8", True),
    ("table.csv", "text/csv", True),
    ("result.json", "application/json", True),
    ("thumb.png", "image/png", True),
    ("photo.jpg", None, True),
    ("clip.mp4", "video/mp4", True),
]
CONTENT = b"<script>alert(document.domain)</script><svg onload=alert(1)>"


@pytest.fixture
def artifact_job(make_client: Callable[..., FlaskClient], run_jobs: Callable[..., bool]) -> tuple[FlaskClient, str]:
    """A client and the id of a finished job that saved every artifact of ARTIFACTS (all with hostile bytes)."""

    @function(queue="default")
    def write_files() -> dict[str, int]:
        """Save one artifact per media type."""
        for name, media_type, _ in ARTIFACTS:
            save_artifact(name, CONTENT, media_type)
        return {"saved": len(ARTIFACTS)}

    registry = Registry([write_files.__runner_function__])  # type: ignore[attr-defined]
    client = make_client(registry_=registry)
    job_id = client.post("/functions/write_files/invocations", json={}).get_json()["id"]
    run_jobs(registry_=registry)
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "finished"
    return client, job_id


@pytest.mark.parametrize(("name", "media_type", "passive"), ARTIFACTS, ids=[name for name, _, _ in ARTIFACTS])
def test_every_artifact_is_sandboxed_and_active_content_is_downloaded(
    artifact_job: tuple[FlaskClient, str], name: str, media_type: str | None, passive: bool,
) -> None:
    client, job_id = artifact_job
    url = f"/jobs/{job_id}/artifacts/{name}"
    default = "inline" if passive else "attachment"
    for query, disposition in [("", default), ("?inline=1", "inline"), ("?inline=true", "inline"),
                               ("?inline=0", "attachment"), ("?inline=", default)]:
        response = client.get(url + query)
        assert response.status_code == 200 and response.data == CONTENT
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["Content-Disposition"].split(";")[0] == disposition, (query, media_type)
    head = client.head(url)
    assert (head.headers["X-Content-Type-Options"], head.headers["Content-Security-Policy"]) == (
        "nosniff", CONTENT_SECURITY_POLICY)


def test_the_policy_allows_no_script_and_sandboxes() -> None:
    directives = dict(part.strip().partition(" ")[::2] for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'none'" and "script-src" not in directives
    assert "sandbox" in directives and directives["sandbox"] == ""  # no allow-scripts, no allow-same-origin
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'none'"


@pytest.mark.parametrize("value", ["2", "maybe", "inline"])
def test_a_bad_inline_value_is_400(artifact_job: tuple[FlaskClient, str], api_error: Callable[..., dict[str, Any]],
                                   value: str) -> None:
    client, job_id = artifact_job
    body = api_error(client.get(f"/jobs/{job_id}/artifacts/report.html?inline={value}"), 400, "malformed_request")
    assert body["details"] == {"inline": value}


def test_the_openapi_document_describes_inline_and_the_headers(client: FlaskClient) -> None:
    operation = client.get("/openapi.json").get_json()["paths"]["/jobs/{job_id}/artifacts/{name}"]["get"]
    assert "inline" in [parameter["name"] for parameter in operation["parameters"]]
    headers = operation["responses"]["200"]["headers"]
    assert headers["X-Content-Type-Options"]["schema"]["enum"] == ["nosniff"]
    assert headers["Content-Security-Policy"]["schema"]["enum"] == [CONTENT_SECURITY_POLICY]
    assert "Content-Disposition" in headers and "400" in operation["responses"]
