"""Describe an uploaded file: size, SHA-256, media type, and for text its encoding and line/word/character counts."""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from typing import Any

import filetype  # type: ignore[import-untyped]

from functions._text_encoding import detect_encoding
from runner import UploadId, function, progress, upload_path

CHUNK_BYTES = 1024 * 1024
SNIFF_BYTES = 64 * 1024  # what media type and encoding detection look at
PROGRESS_STEP = 5  # percent of the file between two progress reports


@function(queue="demo_tasks", timeout=300, retries=1, backoff=[5])
def process_file_upload(upload_id: UploadId) -> dict[str, Any]:
    """Hash an uploaded file, detect its media type and, for text, count lines, words and characters."""
    path = upload_path(upload_id)
    size = path.stat().st_size
    digest = hashlib.sha256()
    read = reported = 0
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
        handle.seek(0)
        media_type, encoding = sniff(head) if head else ("text/plain", "utf-8")  # empty: text with nothing in it
        counter = TextCounter(encoding) if encoding else None
        while chunk := handle.read(CHUNK_BYTES):
            read += len(chunk)
            digest.update(chunk)
            if counter is not None:
                counter.feed(chunk)
            percent = 100 * read // max(1, size)
            if percent >= reported + PROGRESS_STEP and percent < 100:
                reported = percent
                progress(percent, f"read {read} of {size} bytes")
    text = counter.finish() if counter is not None else None
    if text is not None and "error" in text:
        media_type = "application/octet-stream"  # it looked like text at first, but is not
    progress(100, "done")
    return {
        "size": read,
        "sha256": digest.hexdigest(),
        "media_type": media_type,
        "is_text": text is not None and "error" not in text,
        "text": text,
    }


def sniff(head: bytes) -> tuple[str, str | None]:
    """(media type, text encoding or None) from the first bytes: magic numbers, then text heuristics."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime), None
    encoding = detect_encoding(head)
    return ("text/plain", encoding) if encoding else ("application/octet-stream", None)


@dataclass
class TextCounter:
    """Counts lines, words and characters of text fed in byte chunks of any size."""

    encoding: str
    lines: int = 0
    words: int = 0
    characters: int = 0
    error: str | None = None
    _in_word: bool = False  # whether the text so far ends inside a word
    _last: str = ""  # the last character decoded so far
    _offset: int = 0  # bytes fed so far

    def __post_init__(self) -> None:
        # The incremental decoder keeps a multi-byte character cut by a chunk boundary for the next chunk.
        self._decoder = codecs.getincrementaldecoder(self.encoding)(errors="strict")

    def feed(self, chunk: bytes, final: bool = False) -> None:
        """Decode one chunk and count it; a decoding error stops the counting."""
        if self.error is not None:
            return
        try:
            text = self._decoder.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            self.error = f"not valid {self.encoding} at byte {self._offset + exc.start}: {exc.reason}"
            return
        self._offset += len(chunk)
        if not text:
            return
        self.characters += len(text)
        self.lines += text.count("\n")
        pieces = text.split()
        self.words += len(pieces)
        if pieces and self._in_word and not text[0].isspace():
            self.words -= 1  # the first piece continues the word the previous chunk ended with
        self._in_word = not text[-1].isspace()
        self._last = text[-1]

    def finish(self) -> dict[str, Any]:
        """The counts (a last line without a newline counts as a line), or the decoding error."""
        self.feed(b"", final=True)
        if self.error is not None:
            return {"encoding": self.encoding, "error": self.error}
        lines = self.lines + (1 if self._last and self._last != "\n" else 0)
        return {"encoding": self.encoding, "lines": lines, "words": self.words, "characters": self.characters}
