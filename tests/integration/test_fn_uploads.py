"""Functions that take uploads, over real HTTP: POST /uploads -> invoke by upload id -> worker -> result + artifact."""

from __future__ import annotations

import hashlib
import io
import statistics
from typing import Any

import pytest
from PIL import Image

from tests.integration.conftest import Stack

JOB_TIMEOUT = 60.0
# Multi-byte UTF-8 (é, 日本語, 🎉) and a last line without a newline.
TEXT = "héllo wörld\n日本語 テキスト 🎉\n\nlast line without newline"
UNKNOWN_UPLOAD_ID = "0123456789abcdef0123456789abcdef"


def upload(stack: Stack, data: bytes, filename: str) -> dict[str, Any]:
    """POST /uploads as multipart field 'file'; return the created upload."""
    response = stack.post("/uploads", files={"file": (filename, data)})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    return body


def run(stack: Stack, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Invoke, wait for the end and return the job view."""
    response = stack.invoke(name, payload)
    assert response.status_code == 202, response.text
    return stack.wait_until_terminal(str(response.json()["id"]), timeout=JOB_TIMEOUT)


def half_red_half_blue_png(width: int = 600, height: int = 300) -> bytes:
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_image_analysis_of_an_upload_serves_its_thumbnail(stack: Stack) -> None:
    stored = upload(stack, half_red_half_blue_png(), "halves.png")
    assert stored["media_type"] == "image/png"
    view = run(stack, "image_analysis", {"upload_id": stored["id"]})
    assert view["status"] == "finished", view
    assert (view["queue"], view["attempts"], view["progress"]["percent"]) == ("ai_processing", 1, 100)
    result = view["result"]
    assert (result["format"], result["width"], result["height"]) == ("PNG", 600, 300)
    assert result["channels"]["R"] == {"mean": 127.5, "std": 127.5}
    assert result["brightness"] == 52.5
    assert {entry["hex"]: entry["share"] for entry in result["dominant_colors"]} == {"#ff0000": 0.5, "#0000ff": 0.5}

    [artifact] = view["artifacts"]
    assert (artifact["name"], artifact["media_type"]) == ("thumbnail.png", "image/png")
    response = stack.get(artifact["url"])
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("image/png")
    thumbnail = Image.open(io.BytesIO(response.content))
    assert (thumbnail.format, thumbnail.size) == ("PNG", (256, 128))
    assert thumbnail.getpixel((10, 64)) == (255, 0, 0) and thumbnail.getpixel((245, 64)) == (0, 0, 255)


def test_image_analysis_of_a_non_image_fails_without_retry(stack: Stack) -> None:
    stored = upload(stack, b"just some text, not pixels\n", "fake.png")
    view = run(stack, "image_analysis", {"upload_id": stored["id"]})
    assert view["status"] == "failed", view
    assert view["error"]["type"] == "PermanentError"
    assert "not an image" in view["error"]["message"]
    assert view["attempts"] == 1  # the policy allows 2 retries, but this input can never succeed


def test_data_processing_of_an_uploaded_csv(stack: Stack) -> None:
    lines = ["n,half,group"] + [f"{n},{'' if n % 10 == 0 else n / 2},{'ab'[n % 2]}" for n in range(1, 101)]
    stored = upload(stack, ("\n".join(lines) + "\n").encode(), "numbers.csv")
    view = run(stack, "data_processing", {"upload_id": stored["id"], "group_by": "group"})
    assert view["status"] == "finished", view
    result = view["result"]
    assert (result["format"], result["encoding"], result["rows"]) == ("csv", "utf-8", 100)
    n = result["columns"]["n"]
    assert (n["type"], n["min"], n["max"], n["mean"], n["p50"]) == ("integer", 1, 100, 50.5, 50.5)
    assert n["std"] == pytest.approx(statistics.stdev(range(1, 101)), abs=1e-6)
    assert (result["columns"]["half"]["type"], result["columns"]["half"]["missing"]) == ("float", 10)
    groups = {item["key"]: item for item in result["groups"]["items"]}
    assert groups["a"]["columns"]["n"]["sum"] == sum(range(2, 101, 2))
    assert groups["b"]["columns"]["n"]["sum"] == sum(range(1, 101, 2))


def test_data_processing_with_an_unknown_group_column_fails_without_retry(stack: Stack) -> None:
    stored = upload(stack, b"a,b\n1,2\n", "small.csv")
    view = run(stack, "data_processing", {"upload_id": stored["id"], "group_by": "nope"})
    assert view["status"] == "failed", view
    assert "Cannot group by 'nope'" in view["error"]["message"]
    assert view["attempts"] == 1


def test_process_file_upload_of_text_and_png(stack: Stack) -> None:
    data = TEXT.encode()
    stored = upload(stack, data, "notes.txt")
    view = run(stack, "process_file_upload", {"upload_id": stored["id"]})
    assert view["status"] == "finished", view
    assert view["queue"] == "demo_tasks"
    assert view["result"] == {
        "size": len(data),
        "sha256": stored["sha256"],
        "media_type": "text/plain",
        "is_text": True,
        "text": {"encoding": "utf-8", "lines": 4, "words": 9, "characters": 49},
    }

    png = half_red_half_blue_png(8, 8)
    stored = upload(stack, png, "tiny.png")
    result = run(stack, "process_file_upload", {"upload_id": stored["id"]})["result"]
    assert (result["media_type"], result["is_text"], result["text"]) == ("image/png", False, None)
    assert result["sha256"] == hashlib.sha256(png).hexdigest()


@pytest.mark.parametrize("name", ["image_analysis", "data_processing", "process_file_upload"])
@pytest.mark.parametrize(
    ("upload_id", "reason"),
    [(UNKNOWN_UPLOAD_ID, "no upload has the id"), ("../../etc/passwd", "pattern"), ("ABCDEF", "pattern")],
    ids=["never-uploaded", "path", "malformed"],
)
def test_bad_upload_ids_are_rejected_at_invoke_time(stack: Stack, name: str, upload_id: str, reason: str) -> None:
    response = stack.invoke(name, {"upload_id": upload_id})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_input"
    [detail] = [detail for detail in body["details"] if detail["field"] == "upload_id"]
    assert reason in detail["message"]
