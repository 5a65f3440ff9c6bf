"""Uploaded files (inputs of functions) and artifacts (files a job writes), on disk.

Both live in folders from the settings; on a fleet those folders are shared storage.
Names never come from a path a user typed: uploads are addressed by a generated id, and
artifact names are checked against a strict pattern, so nothing escapes its folder.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import filetype  # type: ignore[import-untyped]

from runner.errors import ArtifactNotFound, InvalidInput, PayloadTooLarge, UploadNotFound

UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
ARTIFACT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JOB_FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHUNK_BYTES = 1024 * 1024
SNIFF_BYTES = 8192


@dataclass(frozen=True)
class UploadInfo:
    """What is known of a stored upload."""

    id: str
    filename: str
    size: int
    sha256: str
    media_type: str
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of an upload."""
        return asdict(self)


def sniff_media_type(head: bytes, filename: str) -> str:
    """The media type from the file's first bytes, then its name; text when it decodes as text."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    guessed, _ = mimetypes.guess_type(filename)
    if _looks_like_text(head):
        return guessed if guessed and (guessed.startswith("text/") or guessed.endswith("json")) else "text/plain"
    return guessed or "application/octet-stream"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        return exc.start >= len(head) - 3


class UploadStore:
    """Stores uploads as `<dir>/<id>/blob` plus `<dir>/<id>/info.json`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def save(self, stream: IO[bytes], filename: str, max_bytes: int) -> UploadInfo:
        """Copy `stream` in chunks, hashing as it goes; PayloadTooLarge past `max_bytes`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        upload_id = uuid.uuid4().hex
        digest, size, head = hashlib.sha256(), 0, b""
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
        try:
            with os.fdopen(handle, "wb") as target:
                while chunk := stream.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"The file is larger than the limit of {max_bytes} bytes.",
                                              details={"limit": max_bytes})
                    if len(head) < SNIFF_BYTES:
                        head += chunk[: SNIFF_BYTES - len(head)]
                    digest.update(chunk)
                    target.write(chunk)
            folder = self.directory / upload_id
            folder.mkdir()
            os.replace(temporary, folder / "blob")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        from runner.store.models import utcnow

        info = UploadInfo(
            id=upload_id,
            filename=Path(filename or "upload").name[:255],
            size=size,
            sha256=digest.hexdigest(),
            media_type=sniff_media_type(head, filename or ""),
            created_at=utcnow().isoformat(),
        )
        (folder / "info.json").write_text(json.dumps(info.to_dict()))
        return info

    def info(self, upload_id: str) -> UploadInfo:
        """The stored upload `upload_id`; UploadNotFound when there is none."""
        if not isinstance(upload_id, str) or not UPLOAD_ID_PATTERN.match(upload_id):
            raise UploadNotFound(f"{upload_id!r} is not an upload id.")
        try:
            return UploadInfo(**json.loads((self.directory / upload_id / "info.json").read_text()))
        except (OSError, ValueError, TypeError):
            raise UploadNotFound(f"No upload has the id {upload_id!r}.") from None

    def path(self, upload_id: str) -> Path:
        """Where the bytes of `upload_id` are (after checking it exists)."""
        self.info(upload_id)
        return self.directory / upload_id / "blob"


def check_artifact_name(name: str) -> str:
    """`name` if it is a safe file name (letters, digits, . _ -, no leading dot); else InvalidInput."""
    if not isinstance(name, str) or not ARTIFACT_NAME_PATTERN.match(name) or ".." in name:
        raise InvalidInput(f"{name!r} is not a valid artifact name.",
                           details=[{"field": "name", "message": f"must match {ARTIFACT_NAME_PATTERN.pattern}",
                                     "type": "invalid_name"}])
    return name


class ArtifactStore:
    """Stores the files a job writes as `<dir>/<job id>/<name>`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def write(self, job_id: str, name: str, data: bytes, media_type: str | None = None) -> dict[str, Any]:
        """Write one artifact and return its listing entry."""
        check_artifact_name(name)
        folder = self.directory / job_id
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{name}.partial"
        temporary.write_bytes(data)
        os.replace(temporary, folder / name)
        kind = media_type or mimetypes.guess_type(name)[0] or sniff_media_type(data[:SNIFF_BYTES], name)
        return {"name": name, "size": len(data), "media_type": kind}

    def path(self, job_id: str, name: str) -> Path:
        """The file of one artifact; ArtifactNotFound when it does not exist."""
        missing = ArtifactNotFound(f"Job {job_id!r} has no artifact named {name!r}.")
        if not ARTIFACT_NAME_PATTERN.match(name) or ".." in name or not JOB_FOLDER_PATTERN.match(job_id):
            raise missing
        candidate = self.directory / job_id / name
        if not candidate.is_file():
            raise missing
        return candidate
