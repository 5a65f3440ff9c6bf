"""Unit tests of process_file_upload: hashes, media types and text counts of known files."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import functions.process_file_upload as module
from functions.process_file_upload import TextCounter, process_file_upload
from runner.errors import InvalidInput

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
# Two-, three- and four-byte UTF-8 characters, a blank line and a last line without a newline.
TEXT = "héllo wörld\n日本語 テキスト 🎉\n\nlast line without newline"
Process = Callable[[bytes], dict[str, Any]]


@pytest.fixture
def progress_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    calls: list[tuple[float, str]] = []
    monkeypatch.setattr(module, "progress", lambda percent, message="": calls.append((percent, message)))
    return calls


@pytest.fixture
def process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Process:
    """Store `data` as the upload and process it."""
    path = tmp_path / "blob"
    monkeypatch.setattr(module, "upload_path", lambda upload_id: path if upload_id == UPLOAD_ID else None)

    def run(data: bytes) -> dict[str, Any]:
        path.write_bytes(data)
        return process_file_upload(UPLOAD_ID)

    return run


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data", [b"hello\n", os.urandom(5000), png_bytes()], ids=["text", "random", "png"])
def test_size_and_sha256(process: Process, data: bytes) -> None:
    result = process(data)
    assert result["size"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 1024 * 1024])
def test_counts_utf8_text_across_chunk_boundaries(
    process: Process, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    monkeypatch.setattr(module, "CHUNK_BYTES", chunk_bytes)  # cuts characters and words in every possible place
    result = process(TEXT.encode())
    assert (result["media_type"], result["is_text"]) == ("text/plain", True)
    assert result["text"] == {"encoding": "utf-8", "lines": 4, "words": 9, "characters": 49}
    assert (len(TEXT), len(TEXT.split())) == (49, 9)


@pytest.mark.parametrize(
    ("text", "lines", "words"),
    [("a\r\nb\r\n", 2, 2), ("one\n", 1, 1), ("  spaced   out  ", 1, 2), ("\n\n\n", 3, 0), ("x", 1, 1)],
)
def test_line_and_word_rules(
    process: Process, monkeypatch: pytest.MonkeyPatch, text: str, lines: int, words: int
) -> None:
    monkeypatch.setattr(module, "CHUNK_BYTES", 2)
    counts = process(text.encode())["text"]
    assert (counts["lines"], counts["words"], counts["characters"]) == (lines, words, len(text))


@pytest.mark.parametrize(
    ("encoding", "reported"), [("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16"), ("utf-32", "utf-32")]
)
def test_byte_order_marks(process: Process, monkeypatch: pytest.MonkeyPatch, encoding: str, reported: str) -> None:
    monkeypatch.setattr(module, "CHUNK_BYTES", 3)
    result = process(TEXT.encode(encoding))
    assert result["text"] == {"encoding": reported, "lines": 4, "words": 9, "characters": 49}  # the BOM is no char


def test_latin1_text_is_detected_as_not_utf8(process: Process) -> None:
    text = "Le café était très animé ce matin.\nÀ côté, l'école fermée.\n" * 20
    result = process(text.encode("latin-1"))
    assert (result["media_type"], result["is_text"]) == ("text/plain", True)
    assert result["text"]["encoding"] not in ("utf-8", "utf-8-sig", "ascii")
    assert text.encode("latin-1").decode(result["text"]["encoding"]) == text
    assert (result["text"]["lines"], result["text"]["characters"]) == (40, len(text))


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("name,n\ncafé,1\nnaïve,2\nÉcole,3\n", "latin-1"),
        ("Price: 5€ – “quoted” text…\n" * 5, "cp1252"),
        ("Zażółć gęślą jaźń. Łódź jest dużym miastem w Polsce.\n" * 10, "cp1250"),
        ("Привет, как дела? Это тестовый текст на русском языке.\n" * 10, "cp1251"),
        ("Привет, как дела? Это тестовый текст на русском языке.\n" * 10, "koi8_r"),
        ("これは日本語のテキストです。東京は大きな都市です。\n" * 10, "shift_jis"),
        ("这是一个中文文本。北京是中国的首都。\n" * 10, "gb18030"),
    ],
)
def test_legacy_encodings_decode_to_the_original_text(process: Process, text: str, encoding: str) -> None:
    result = process(text.encode(encoding))
    detected = result["text"]["encoding"]
    assert text.encode(encoding).decode(detected) == text, detected
    assert (result["text"]["lines"], result["text"]["characters"]) == (text.count("\n"), len(text))


def test_png_is_binary(process: Process) -> None:
    result = process(png_bytes())
    assert (result["media_type"], result["is_text"], result["text"]) == ("image/png", False, None)


def test_unknown_binary(process: Process) -> None:
    result = process(bytes(range(256)) * 4)
    assert (result["media_type"], result["is_text"], result["text"]) == ("application/octet-stream", False, None)


def test_empty_file(process: Process) -> None:
    result = process(b"")
    assert result["size"] == 0
    assert result["sha256"] == hashlib.sha256(b"").hexdigest()
    assert result["text"] == {"encoding": "utf-8", "lines": 0, "words": 0, "characters": 0}


def test_text_that_turns_binary_after_the_sniffed_head(process: Process, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "SNIFF_BYTES", 64)
    result = process(b"plain text\n" * 10 + b"\xff\xfe\x00garbage")
    assert (result["media_type"], result["is_text"]) == ("application/octet-stream", False)
    assert "not valid utf-8 at byte 110" in result["text"]["error"]
    assert result["sha256"] == hashlib.sha256(b"plain text\n" * 10 + b"\xff\xfe\x00garbage").hexdigest()


def test_progress_per_chunk_is_bounded(
    process: Process, monkeypatch: pytest.MonkeyPatch, progress_calls: list[tuple[float, str]]
) -> None:
    monkeypatch.setattr(module, "CHUNK_BYTES", 100)
    process(b"word " * 20_000)  # 1,000 chunks
    percents = [percent for percent, _ in progress_calls]
    assert percents == sorted(percents) and percents[-1] == 100
    assert 15 <= len(percents) <= 21
    assert progress_calls[0][1] == "read 5000 of 100000 bytes"


def test_counter_with_single_byte_feeds() -> None:
    counter = TextCounter("utf-8")
    for byte in "ab 🎉c d".encode():
        counter.feed(bytes([byte]))
    assert counter.finish() == {"encoding": "utf-8", "lines": 1, "words": 3, "characters": 7}


def test_declared_policy() -> None:
    spec = process_file_upload.__runner_function__  # type: ignore[attr-defined]
    assert (spec.queue, spec.timeout, spec.retries, spec.backoff) == ("demo_tasks", 300, 1, (5,))


@pytest.mark.parametrize(
    ("payload", "field"),
    [({}, "upload_id"), ({"upload_id": 5}, "upload_id"), ({"upload_id": "abc"}, "upload_id"),
     ({"upload_id": UPLOAD_ID, "extra": True}, "extra")],
)
def test_validation_rejects_bad_input(payload: dict[str, Any], field: str) -> None:
    spec = process_file_upload.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    assert field in {detail["field"] for detail in caught.value.details}
