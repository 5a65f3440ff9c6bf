"""Types a function signature can use beyond plain JSON values."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo

from runner.errors import UploadNotFound
from runner.store.files import UPLOAD_ID_PATTERN


def _check_upload(value: str, info: ValidationInfo) -> str:
    # The API and the worker pass the upload store as validation context; an id that names no
    # stored file fails validation (422 at invoke time), never later in a worker.
    uploads = (info.context or {}).get("uploads")
    if uploads is not None:
        try:
            uploads.info(value)
        except UploadNotFound:
            raise ValueError(f"no upload has the id {value!r}") from None
    return value


UploadId = Annotated[
    str,
    Field(pattern=UPLOAD_ID_PATTERN.pattern, description="An id returned by POST /uploads."),
    AfterValidator(_check_upload),
]
