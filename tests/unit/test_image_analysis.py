"""Unit tests of image_analysis on generated images whose statistics are known in advance."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import functions.image_analysis as module
from functions.image_analysis import MAX_BASE64_CHARS, THUMBNAIL_EDGE, image_analysis
from runner import PermanentError
from runner.errors import InvalidInput
from runner.store.files import UploadStore

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
Analyse = Callable[..., dict[str, Any]]


class Recorder:
    """Stands in for the worker: serves one upload file and keeps saved artifacts and progress."""

    def __init__(self, tmp_path: Path) -> None:
        self.upload = tmp_path / "blob"
        self.artifacts: dict[str, tuple[bytes, str | None]] = {}
        self.progress: list[tuple[float, str]] = []

    def upload_path(self, upload_id: str) -> Path:
        assert upload_id == UPLOAD_ID
        return self.upload

    def save_artifact(self, name: str, data: bytes | str, media_type: str | None = None) -> dict[str, Any]:
        content = data.encode() if isinstance(data, str) else data
        self.artifacts[name] = (content, media_type)
        return {"name": name, "size": len(content), "media_type": media_type}


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorded = Recorder(tmp_path)
    monkeypatch.setattr(module, "upload_path", recorded.upload_path)
    monkeypatch.setattr(module, "save_artifact", recorded.save_artifact)
    monkeypatch.setattr(module, "progress", lambda percent, message="": recorded.progress.append((percent, message)))
    return recorded


@pytest.fixture(params=["upload", "base64"])
def analyse(request: pytest.FixtureRequest, recorder: Recorder) -> Analyse:
    """Analyse encoded image bytes, once through an upload file and once as base64."""

    def run(data: bytes) -> dict[str, Any]:
        if request.param == "upload":
            recorder.upload.write_bytes(data)
            return image_analysis(upload_id=UPLOAD_ID)
        return image_analysis(image_base64=base64.b64encode(data).decode())

    return run


def encode(image: Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def half_red_half_blue(size: int = 100) -> Image.Image:
    image = Image.new("RGB", (size, size), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size // 2, size))
    return image


def gradient(width: int, height: int, rising: bool) -> Image.Image:
    image = Image.new("L", (width, height))
    image.putdata([(x if rising else width - 1 - x) * 255 // (width - 1) for _ in range(height) for x in range(width)])
    return image


def test_half_red_half_blue(analyse: Analyse) -> None:
    result = analyse(encode(half_red_half_blue()))
    assert (result["format"], result["media_type"], result["width"], result["height"]) == ("PNG", "image/png", 100, 100)
    assert result["mode"] == "RGB"
    assert result["channels"] == {
        "R": {"mean": 127.5, "std": 127.5},
        "G": {"mean": 0.0, "std": 0.0},
        "B": {"mean": 127.5, "std": 127.5},
    }
    # Pillow's luma: L = R*299/1000 + G*587/1000 + B*114/1000, so red is 76 and blue is 29.
    assert result["brightness"] == 52.5
    colors = {entry["hex"]: entry["share"] for entry in result["dominant_colors"]}
    assert colors == {"#ff0000": 0.5, "#0000ff": 0.5}
    assert result["dominant_colors"][0]["rgb"] in ([255, 0, 0], [0, 0, 255])


def test_solid_grey(analyse: Analyse) -> None:
    result = analyse(encode(Image.new("L", (40, 30), 128)))
    assert result["channels"] == {"L": {"mean": 128.0, "std": 0.0}}
    assert result["brightness"] == 128.0
    assert result["dominant_colors"] == [{"hex": "#808080", "rgb": [128, 128, 128], "share": 1.0}]
    assert result["dhash"] == "0000000000000000"  # no cell is brighter than its neighbour


def test_five_colours_ranked_by_share(analyse: Analyse) -> None:
    image = Image.new("RGB", (100, 10))
    stripes = [((255, 255, 255), 40), ((0, 0, 0), 25), ((255, 0, 0), 20), ((0, 255, 0), 10), ((0, 0, 255), 5)]
    left = 0
    for color, width in stripes:
        image.paste(color, (left, 0, left + width, 10))
        left += width
    result = analyse(encode(image))
    assert [(entry["hex"], entry["share"]) for entry in result["dominant_colors"]] == [
        ("#ffffff", 0.4), ("#000000", 0.25), ("#ff0000", 0.2), ("#00ff00", 0.1), ("#0000ff", 0.05)
    ]
    assert sum(entry["share"] for entry in result["dominant_colors"]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("image_format", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                     ("BMP", "image/bmp"), ("WEBP", "image/webp")]
)
def test_detects_format(analyse: Analyse, image_format: str, media_type: str) -> None:
    result = analyse(encode(half_red_half_blue(), image_format))
    assert (result["format"], result["media_type"]) == (image_format, media_type)


def test_palette_image_is_analysed_as_rgb(analyse: Analyse) -> None:
    result = analyse(encode(half_red_half_blue(), "GIF"))
    assert result["mode"] == "P"
    assert result["stats_mode"] == "RGB"
    assert result["channels"]["R"] == {"mean": 127.5, "std": 127.5}


@pytest.mark.parametrize(("rising", "expected"), [(True, "0000000000000000"), (False, "ffffffffffffffff")])
def test_dhash_of_gradients(analyse: Analyse, rising: bool, expected: str) -> None:
    assert analyse(encode(gradient(90, 80, rising)))["dhash"] == expected


def test_dhash_stable_for_identical_and_different_for_different_images(analyse: Analyse) -> None:
    first = analyse(encode(half_red_half_blue()))["dhash"]
    again = analyse(encode(half_red_half_blue()))["dhash"]
    mirrored = analyse(encode(half_red_half_blue().transpose(Image.Transpose.FLIP_LEFT_RIGHT)))["dhash"]
    assert first == again
    assert len(first) == 16 and int(first, 16) >= 0
    assert mirrored != first


@pytest.mark.parametrize("with_exif", [True, False])
def test_exif_presence(analyse: Analyse, with_exif: bool) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Test Camera Maker"  # Make
    options = {"exif": exif.tobytes()} if with_exif else {}
    result = analyse(encode(half_red_half_blue(), "JPEG", **options))
    assert result["has_exif"] is with_exif


def test_thumbnail_is_a_bounded_png_artifact(analyse: Analyse, recorder: Recorder) -> None:
    result = analyse(encode(half_red_half_blue(1000).resize((1000, 500))))
    data, media_type = recorder.artifacts["thumbnail.png"]
    assert media_type == "image/png"
    thumb = Image.open(io.BytesIO(data))
    assert (thumb.format, thumb.size) == ("PNG", (THUMBNAIL_EDGE, THUMBNAIL_EDGE // 2))
    assert result["thumbnail"] == {"name": "thumbnail.png", "width": 256, "height": 128, "size": len(data)}


def test_small_image_is_not_upscaled(analyse: Analyse, recorder: Recorder) -> None:
    analyse(encode(Image.new("RGB", (20, 10), (1, 2, 3))))
    assert Image.open(io.BytesIO(recorder.artifacts["thumbnail.png"][0])).size == (20, 10)


def test_thumbnail_follows_exif_orientation(analyse: Analyse, recorder: Recorder) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: must be rotated 90 degrees clockwise to display
    result = analyse(encode(Image.new("RGB", (400, 200), (9, 9, 9)), "JPEG", exif=exif.tobytes()))
    assert (result["width"], result["height"]) == (400, 200)
    assert Image.open(io.BytesIO(recorder.artifacts["thumbnail.png"][0])).size == (128, 256)


def test_progress_is_monotonic_and_bounded(analyse: Analyse, recorder: Recorder) -> None:
    analyse(encode(half_red_half_blue()))
    percents = [percent for percent, _ in recorder.progress]
    assert percents == sorted(percents)
    assert percents[-1] == 100
    assert 5 <= len(percents) <= 10


def truncated_png() -> bytes:
    data = encode(Image.effect_noise((200, 200), 64).convert("RGB"))
    return data[: len(data) // 2]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb(width: int, height: int) -> bytes:
    """A PNG that declares width x height 1-bit pixels but holds none: refused before any decoding."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def ico_bomb(width: int, height: int) -> bytes:
    """An ICO whose directory says 256x256 but whose embedded PNG declares width x height."""
    frame = bomb(width, height)
    directory = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(frame), 22)  # 0 means 256; data at offset 22
    return struct.pack("<HHH", 0, 1, 1) + directory + frame


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is plain text, not an image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not an image"),
        (truncated_png(), "corrupt or truncated"),
        (bomb(20000, 20000), "too large to analyse safely"),  # over twice the limit: Pillow's error
        (bomb(8000, 7000), "too large to analyse safely"),  # 56 MP, just over: Pillow only warns
        # Pillow decodes an ICO's frame inside Image.open: only its own (lowered) limit stops it in time.
        (ico_bomb(8000, 7000), "too large to analyse safely"),
    ],
    ids=["text", "png-header-only", "truncated", "bomb-error", "bomb-warning", "bomb-ico-frame"],
)
def test_rejects_unreadable_images(analyse: Analyse, recorder: Recorder, data: bytes, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        analyse(data)
    assert recorder.artifacts == {}
    assert Image.MAX_IMAGE_PIXELS != module.MAX_PIXELS  # the global limit is restored after the call


@pytest.mark.parametrize(
    ("payload", "given"),
    [
        ({}, "none"),
        ({"upload_id": UPLOAD_ID, "image_base64": base64.b64encode(b"x").decode()}, "upload_id, image_base64"),
    ],
    ids=["neither", "both"],
)
def test_validation_requires_exactly_one_input(payload: dict[str, str], given: str) -> None:
    spec = image_analysis.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    assert f"give exactly one of upload_id, image_base64 (given: {given})" in caught.value.message


@pytest.mark.usefixtures("recorder")
@pytest.mark.parametrize("text", ["not base64!!", "abc"])
def test_rejects_invalid_base64(text: str) -> None:
    with pytest.raises(PermanentError, match="not valid base64"):
        image_analysis(image_base64=text)


def test_accepts_data_url_and_wrapped_base64(recorder: Recorder) -> None:
    encoded = base64.encodebytes(encode(half_red_half_blue())).decode()  # wrapped at 76 characters
    result = image_analysis(image_base64="data:image/png;base64," + encoded)
    assert result["source"] == "base64"
    assert result["channels"]["R"]["mean"] == 127.5


def test_declared_policy() -> None:
    spec = image_analysis.__runner_function__  # type: ignore[attr-defined]
    assert (spec.queue, spec.timeout, spec.retries, spec.backoff) == ("ai_processing", 120, 2, (2, 10))


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"upload_id": "not-an-id"}, "upload_id"),
        ({"upload_id": "0123456789ABCDEF0123456789ABCDEF"}, "upload_id"),
        ({"image_base64": 5}, "image_base64"),
        ({"image_base64": ""}, "image_base64"),
        ({"image_base64": "A" * (MAX_BASE64_CHARS + 4)}, "image_base64"),
        ({"upload_id": UPLOAD_ID, "extra": 1}, "extra"),
    ],
)
def test_validation_rejects_bad_input(payload: dict[str, Any], field: str) -> None:
    spec = image_analysis.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate(payload)
    assert field in {detail["field"] for detail in caught.value.details}


def test_validation_rejects_unknown_upload(tmp_path: Path) -> None:
    spec = image_analysis.__runner_function__  # type: ignore[attr-defined]
    with pytest.raises(InvalidInput) as caught:
        spec.validate({"upload_id": UPLOAD_ID}, {"uploads": UploadStore(tmp_path)})
    assert caught.value.details[0]["field"] == "upload_id"


def test_validation_accepts_good_input() -> None:
    spec = image_analysis.__runner_function__  # type: ignore[attr-defined]
    assert spec.validate({"upload_id": UPLOAD_ID}) == {"upload_id": UPLOAD_ID, "image_base64": None}
