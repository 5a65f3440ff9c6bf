"""POST /uploads, GET /uploads/<id>, artifacts: limits, bad input, names that try to escape their folder."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient
from rq.job import Job

from runner.authoring.registry import Registry, function
from runner.errors import InvalidInput
from runner.services.backends import Backends
from runner.store.files import ArtifactStore, UploadStore, check_artifact_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _upload(client: FlaskClient, data: bytes, filename: str = "notes.txt") -> Any:
    return client.post("/uploads", data={"file": (io.BytesIO(data), filename)}, content_type="multipart/form-data")


def test_upload_returns_id_size_hash_and_type(client: FlaskClient) -> None:
    data = "héllo wörld\nsecond line\n".encode()
    response = _upload(client, data)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["media_type"] == "text/plain"
    assert response.headers["Location"] == f"/uploads/{body['id']}"
    assert client.get(f"/uploads/{body['id']}").get_json() == body


def test_upload_detects_an_image_by_its_bytes(client: FlaskClient) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(buffer, "PNG")
    body = _upload(client, buffer.getvalue(), filename="misleading.txt").get_json()
    assert body["media_type"] == "image/png"


def test_upload_over_the_limit_is_413_and_leaves_no_file(
    make_client: Callable[..., FlaskClient], settings: Any, api_error: Callable[..., Any], backends: Backends
) -> None:
    small = dataclasses.replace(settings, max_upload_bytes=1000)
    client = make_client(settings=small)
    api_error(_upload(client, b"x" * 5000), 413, "payload_too_large")
    folder = small.effective_upload_dir
    assert not folder.exists() or [p for p in folder.iterdir() if not p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"file": "x"}}, 415, "unsupported_media_type"),
        ({"data": b"raw bytes", "content_type": "application/octet-stream"}, 415, "unsupported_media_type"),
        ({"data": {"other": (io.BytesIO(b"x"), "a.txt")}, "content_type": "multipart/form-data"}, 400,
         "malformed_request"),
    ],
)
def test_bad_uploads(client: FlaskClient, api_error: Callable[..., Any], kwargs: dict[str, Any], status: int,
                     code: str) -> None:
    api_error(client.post("/uploads", **kwargs), status, code)


@pytest.mark.parametrize(
    ("upload_id", "code"), [("0" * 32, "upload_not_found"), ("not-an-id", "upload_not_found"), ("..%2F..%2Fetc", None)]
)
def test_unknown_upload_is_404(client: FlaskClient, api_error: Callable[..., Any], upload_id: str,
                               code: str | None) -> None:
    api_error(client.get(f"/uploads/{upload_id}"), 404, code)


@pytest.mark.parametrize("name", ["../escape", "..", ".hidden", "a/b", "a\\b", "", "x" * 200, "a..b", "ünï"])
def test_artifact_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_artifact_name(name)


def test_artifact_store_never_serves_outside_its_folder(tmp_path: Any) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    (tmp_path / "secret.txt").write_text("secret")
    store.write("job1", "ok.txt", b"fine")
    assert store.path("job1", "ok.txt").read_bytes() == b"fine"
    for job_id, name in [("job1", "../../secret.txt"), ("..", "secret.txt"), ("job1", "missing.txt")]:
        with pytest.raises(Exception) as caught:
            store.path(job_id, name)
        assert type(caught.value).__name__ == "ArtifactNotFound"


def test_a_job_artifact_is_listed_and_served(
    make_client: Callable[..., FlaskClient], run_jobs: Callable[..., bool], api_error: Callable[..., Any],
    connection: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner import save_artifact

    @function(queue="default")
    def draw(label: str) -> dict[str, str]:
        """Write a tiny PNG artifact."""
        save_artifact("image.png", PNG_SIGNATURE + label.encode(), "image/png")
        return {"label": label}

    registry = Registry([draw.__runner_function__])  # type: ignore[attr-defined]
    client = make_client(registry_=registry)
    job_id = client.post("/functions/draw/invocations", json={"label": "hi"}).get_json()["id"]
    run_jobs(registry_=registry)
    view = client.get(f"/jobs/{job_id}").get_json()
    assert view["status"] == "finished"
    assert view["artifacts"] == [{"name": "image.png", "size": len(PNG_SIGNATURE) + 2, "media_type": "image/png",
                                  "url": f"/jobs/{job_id}/artifacts/image.png"}]
    served = client.get(view["artifacts"][0]["url"])
    assert served.status_code == 200 and served.mimetype == "image/png"
    assert served.data == PNG_SIGNATURE + b"hi"
    api_error(client.get(f"/jobs/{job_id}/artifacts/other.png"), 404, "artifact_not_found")
    api_error(client.get(f"/jobs/{job_id}/artifacts/..%2F..%2Frunner.db"), 404)
    api_error(client.get("/jobs/no-such-job/artifacts/image.png"), 404, "job_not_found")

    def result_read(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("serving an artifact reads the job's result")

    # The media type comes from the job's listing in Redis, without its result; then from its SQL row.
    monkeypatch.setattr(Job, "return_value", result_read)
    assert client.get(view["artifacts"][0]["url"]).mimetype == "image/png"
    connection.delete(Job.key_for(job_id))
    assert client.get(view["artifacts"][0]["url"]).mimetype == "image/png"


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("image_analysis", {}),
        ("image_analysis", {"upload_id": "UPLOADED", "image_base64": "aGk="}),
        ("data_processing", {}),
        ("data_processing", {"records": [{"a": 1}], "upload_id": "UPLOADED"}),
    ],
)
def test_exactly_one_input_is_checked_before_enqueue(
    client: FlaskClient, api_error: Callable[..., Any], backends: Backends, name: str, payload: dict[str, Any]
) -> None:
    if payload.get("upload_id") == "UPLOADED":
        payload = {**payload, "upload_id": _upload(client, b"a,b\n1,2\n", "t.csv").get_json()["id"]}
    body = api_error(client.post(f"/functions/{name}/invocations", json=payload), 422, "invalid_input")
    assert "exactly one of" in body["message"]
    assert backends.connection.llen("rq:queue:ai_processing") == 0


# Expiry and the total size of stored uploads (issue 19, item 11).
class Clock:
    """A clock the tests move forward by hand."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(backends: Backends) -> Clock:
    """The uploads' clock, under the test's control."""
    clock = Clock()
    backends.uploads.clock = clock
    return clock


def stored_ids(backends: Backends) -> set[str]:
    folder = backends.uploads.directory
    return {path.name for path in folder.iterdir() if not path.name.startswith(".")} if folder.exists() else set()


def test_an_upload_says_when_it_expires(client: FlaskClient, clock: Clock) -> None:
    body = _upload(client, b"data").get_json()
    assert body["created_at"] == clock.now.isoformat()
    assert body["expires_at"] == (clock.now + timedelta(days=7)).isoformat()  # RUNNER_UPLOAD_TTL's default


def test_an_expired_upload_is_404_422_in_an_invocation_and_deleted(
    client: FlaskClient, api_error: Callable[..., Any], backends: Backends, clock: Clock,
    assert_nothing_enqueued: Callable[[], None],
) -> None:
    upload_id, other = (_upload(client, b"a,b\n1,2\n", "t.csv").get_json()["id"] for _ in range(2))
    clock.now += timedelta(days=7) - timedelta(seconds=1)
    assert client.get(f"/uploads/{upload_id}").status_code == 200
    clock.now += timedelta(seconds=1)
    invocation = client.post("/functions/process_file_upload/invocations", json={"upload_id": other})
    assert api_error(invocation, 422, "invalid_input")["details"][0]["field"] == "upload_id"
    assert "expired" in api_error(client.get(f"/uploads/{upload_id}"), 404, "upload_not_found")["message"]
    assert stored_ids(backends) == set()  # each deleted as soon as it was found expired
    assert_nothing_enqueued()


def test_expired_uploads_are_deleted_when_another_is_stored(
    client: FlaskClient, backends: Backends, clock: Clock
) -> None:
    old = {_upload(client, b"old").get_json()["id"] for _ in range(3)}
    clock.now += timedelta(days=3)
    kept = _upload(client, b"kept").get_json()["id"]
    clock.now += timedelta(days=4)
    assert stored_ids(backends) == old | {kept}  # nobody asked for the old ones: still on disk
    new = _upload(client, b"new").get_json()["id"]
    assert stored_ids(backends) == {kept, new}


def test_an_upload_past_the_total_is_507_until_older_ones_expire(
    make_client: Callable[..., FlaskClient], settings: Any, api_error: Callable[..., Any], connection: Any,
    store: Any,
) -> None:
    limited = dataclasses.replace(settings, uploads_max_total_bytes=1000)
    backends = Backends(connection, store, limited)
    clock = Clock()
    backends.uploads.clock = clock
    client = make_client(settings=limited, connection=connection)
    client.application.extensions["runner"] = dataclasses.replace(client.application.extensions["runner"],
                                                                  backends=backends)
    first = _upload(client, b"x" * 600).get_json()["id"]
    body = api_error(_upload(client, b"y" * 600), 507, "insufficient_storage")
    assert body["details"] == {"limit": 1000}
    assert stored_ids(backends) == {first}
    assert _upload(client, b"z" * 400).status_code == 201  # exactly what is left
    api_error(_upload(client, b"w"), 507, "insufficient_storage")
    clock.now += timedelta(days=7)
    assert _upload(client, b"y" * 600).status_code == 201


def test_with_a_ttl_of_zero_uploads_never_expire(tmp_path: Any) -> None:
    uploads = UploadStore(tmp_path, ttl_seconds=0)
    info = uploads.save(io.BytesIO(b"data"), "a.txt", 100)
    assert info.expires_at is None
    uploads.clock = lambda: datetime(9999, 1, 1, tzinfo=UTC)
    assert uploads.info(info.id) == info and uploads.prune() == 4


def test_an_upload_stored_before_expiry_was_recorded_expires_after_the_ttl(tmp_path: Any) -> None:
    uploads = UploadStore(tmp_path, ttl_seconds=60)
    info = uploads.save(io.BytesIO(b"data"), "a.txt", 100)
    legacy = {key: value for key, value in info.to_dict().items() if key != "expires_at"}
    (tmp_path / info.id / "info.json").write_text(json.dumps(legacy))
    uploads.clock = lambda: datetime.fromisoformat(info.created_at) + timedelta(seconds=59)
    assert uploads.info(info.id).expires_at is None
    uploads.clock = lambda: datetime.fromisoformat(info.created_at) + timedelta(seconds=60)
    assert uploads.prune() == 0 and not (tmp_path / info.id).exists()
