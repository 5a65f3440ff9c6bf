"""Uploads: files that functions take by `upload_id`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for

from api.state import runner_state
from runner.errors import MalformedRequest, UnsupportedMediaType

blueprint = Blueprint("uploads", __name__)


@blueprint.post("/uploads")
def create_upload() -> tuple[dict[str, Any], int, dict[str, str]]:
    backends = runner_state().backends
    # Uploads have their own, larger limit than JSON bodies (Flask 3.1 allows it per request).
    request.max_content_length = backends.settings.max_upload_bytes
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the file as multipart/form-data in a field named 'file'.",
            details={"content_type": request.content_type},
        )
    upload = request.files.get("file")
    if upload is None:
        raise MalformedRequest("The form has no file field named 'file'.", details={"fields": sorted(request.files)})
    info = backends.uploads.save(upload.stream, upload.filename or "upload", backends.settings.max_upload_bytes)
    return info.to_dict(), 201, {"Location": url_for("uploads.get_upload", upload_id=info.id)}


@blueprint.get("/uploads/<upload_id>")
def get_upload(upload_id: str) -> dict[str, Any]:
    return runner_state().backends.uploads.info(upload_id).to_dict()
