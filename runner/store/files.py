"""Uploaded files (inputs of functions) and artifacts (files a job writes), on disk.

Both live in folders from the settings; on a fleet those folders are shared storage.
Names never come from a path a user typed: uploads are addressed by a generated id, and
artifact names are checked against a strict pattern, so nothing escapes its folder.

Uploads expire (RUNNER_UPLOAD_TTL): each one records when, is never served after that, and is
deleted by the next upload stored (no worker needed). Their total size is bounded
(RUNNER_UPLOADS_MAX_TOTAL_BYTES): an upload that would pass it is refused (507).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mimetypes
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import filetype  # type: ignore[import-untyped]

from runner.errors import ArtifactNotFound, InsufficientStorage, InvalidInput, PayloadTooLarge, UploadNotFound

UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
ARTIFACT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JOB_FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHUNK_BYTES = 1024 * 1024
SNIFF_BYTES = 8192
INCOMING_PREFIX = ".incoming-"
LOCK_NAME = ".lock"
# A half-written upload (a process died while storing it) older than this is debris.
ABANDONED_AFTER_SECONDS = 3600


@dataclass(frozen=True)
class UploadInfo:
    """What is known of a stored upload."""

    id: str
    filename: str
    size: int
    sha256: str
    media_type: str
    created_at: str
    # After this moment the upload is gone (404, 422 in an invocation); null: it never expires.
    expires_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of an upload."""
        return asdict(self)

    def expired(self, now: datetime, ttl_seconds: int = 0) -> bool:
        """Whether the upload is past its expiry (uploads stored before expiry was recorded: created + ttl)."""
        if self.expires_at is not None:
            return now >= datetime.fromisoformat(self.expires_at)
        return bool(ttl_seconds) and now >= datetime.fromisoformat(self.created_at) + timedelta(seconds=ttl_seconds)


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
    """Stores uploads as `<dir>/<id>/blob` plus `<dir>/<id>/info.json`.

    `ttl_seconds` and `max_total_bytes` bound what is kept (0: no expiry, no total limit); reading
    needs neither, since each upload records its own expiry.
    """

    def __init__(self, directory: Path, ttl_seconds: int = 0, max_total_bytes: int = 0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.directory = Path(directory)
        self.ttl_seconds = ttl_seconds
        self.max_total_bytes = max_total_bytes
        self.clock = clock

    def save(self, stream: IO[bytes], filename: str, max_bytes: int) -> UploadInfo:
        """Copy `stream` in chunks, hashing as it goes; PayloadTooLarge past `max_bytes`,
        InsufficientStorage past the room left under `max_total_bytes`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            room = self._room()
        upload_id = uuid.uuid4().hex
        digest, size, head = hashlib.sha256(), 0, b""
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=INCOMING_PREFIX)
        try:
            with os.fdopen(handle, "wb") as target:
                while chunk := stream.read(CHUNK_BYTES):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(f"The file is larger than the limit of {max_bytes} bytes.",
                                              details={"limit": max_bytes})
                    if room is not None and size > room:
                        raise self._full(size)
                    if len(head) < SNIFF_BYTES:
                        head += chunk[: SNIFF_BYTES - len(head)]
                    digest.update(chunk)
                    target.write(chunk)
            now = self.clock()
            info = UploadInfo(
                id=upload_id,
                filename=Path(filename or "upload").name[:255],
                size=size,
                sha256=digest.hexdigest(),
                media_type=sniff_media_type(head, filename or ""),
                created_at=now.isoformat(),
                expires_at=(now + timedelta(seconds=self.ttl_seconds)).isoformat() if self.ttl_seconds else None,
            )
            # Checked again with the upload in hand: others may have been stored meanwhile.
            with self._locked():
                room = self._room()
                if room is not None and size > room:
                    raise self._full(size)
                folder = self.directory / upload_id
                folder.mkdir()
                (folder / "info.json").write_text(json.dumps(info.to_dict()))
                os.replace(temporary, folder / "blob")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return info

    def info(self, upload_id: str) -> UploadInfo:
        """The stored upload `upload_id`; UploadNotFound when there is none (or it has expired)."""
        if not isinstance(upload_id, str) or not UPLOAD_ID_PATTERN.match(upload_id):
            raise UploadNotFound(f"{upload_id!r} is not an upload id.")
        info = self._read(upload_id)
        if info is None or not (self.directory / upload_id / "blob").is_file():
            raise UploadNotFound(f"No upload has the id {upload_id!r}.")
        if info.expired(self.clock(), self.ttl_seconds):
            shutil.rmtree(self.directory / upload_id, ignore_errors=True)
            raise UploadNotFound(f"The upload {upload_id!r} has expired.")
        return info

    def path(self, upload_id: str) -> Path:
        """Where the bytes of `upload_id` are (after checking it exists)."""
        self.info(upload_id)
        return self.directory / upload_id / "blob"

    def prune(self) -> int:
        """Delete expired uploads and abandoned partial ones; the bytes the others hold."""
        with self._locked():
            return self._prune()

    def _room(self) -> int | None:
        """Bytes a new upload may take under the total limit (None: no limit), after pruning."""
        stored = self._prune()
        return None if not self.max_total_bytes else max(0, self.max_total_bytes - stored)

    def _prune(self) -> int:
        now, stored = self.clock(), 0
        abandoned = time.time() - ABANDONED_AFTER_SECONDS
        for entry in self._entries():
            if entry.name.startswith(INCOMING_PREFIX):
                if _modified(entry) < abandoned:
                    entry.unlink(missing_ok=True)
                continue
            if not UPLOAD_ID_PATTERN.match(entry.name):
                continue
            info = self._read(entry.name)
            if info is None:  # a folder a crashed process left without its info.json
                if _modified(entry) < abandoned:
                    shutil.rmtree(entry, ignore_errors=True)
            elif info.expired(now, self.ttl_seconds):
                shutil.rmtree(entry, ignore_errors=True)
            else:
                stored += info.size
        return stored

    def _entries(self) -> Iterator[Path]:
        try:
            yield from self.directory.iterdir()
        except FileNotFoundError:
            return

    def _read(self, upload_id: str) -> UploadInfo | None:
        try:
            return UploadInfo(**json.loads((self.directory / upload_id / "info.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _full(self, size: int) -> InsufficientStorage:
        return InsufficientStorage(
            f"The uploads already stored leave no room for {size} more bytes under the limit of "
            f"{self.max_total_bytes} bytes; retry once older uploads have expired.",
            details={"limit": self.max_total_bytes})

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time across processes on this machine (and on shared storage that honours flock).
        with open(self.directory / LOCK_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


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

    def delete_job(self, job_id: str) -> bool:
        """Delete every artifact of `job_id` (its history is pruned); whether it had any."""
        folder = self.directory / job_id
        if not JOB_FOLDER_PATTERN.match(job_id) or not folder.is_dir():
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def path(self, job_id: str, name: str) -> Path:
        """The file of one artifact; ArtifactNotFound when it does not exist."""
        missing = ArtifactNotFound(f"Job {job_id!r} has no artifact named {name!r}.")
        if not ARTIFACT_NAME_PATTERN.match(name) or ".." in name or not JOB_FOLDER_PATTERN.match(job_id):
            raise missing
        candidate = self.directory / job_id / name
        if not candidate.is_file():
            raise missing
        return candidate
