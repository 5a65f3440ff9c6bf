"""Analyse an image with Pillow: format, size, channel statistics, dominant colours, dHash, thumbnail."""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Annotated, Any

from PIL import Image, ImageStat, UnidentifiedImageError
from pydantic import Field

from runner import PermanentError, UploadId, function, progress, save_artifact, upload_path

# About 20 MB of base64 text (15 MB of image); the API's own body limit may be lower.
MAX_BASE64_CHARS = 20 * 1024 * 1024
# Above this many pixels an image is refused as a possible decompression bomb.
MAX_PIXELS = 50_000_000
THUMBNAIL_EDGE = 256
THUMBNAIL_NAME = "thumbnail.png"
PALETTE_COLORS = 5
# Dominant colours are estimated on a copy at most this wide/high: quantizing is O(pixels).
PALETTE_SAMPLE_EDGE = 160
# dHash compares horizontally adjacent cells of a (HASH_EDGE + 1) x HASH_EDGE grayscale grid.
HASH_EDGE = 8
DECIMALS = 4
# Modes ImageStat reads as 8-bit channels directly; anything else is converted first.
EIGHT_BIT_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK"})
ORIENTATION_TAG = 0x0112
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@function(
    queue="ai_processing", timeout=120, retries=2, backoff=[2, 10], exactly_one_of=[("upload_id", "image_base64")]
)
def image_analysis(
    upload_id: UploadId | None = None,
    image_base64: Annotated[str | None, Field(min_length=1, max_length=MAX_BASE64_CHARS)] = None,
) -> dict[str, Any]:
    """Analyse an uploaded or base64 image: statistics, dominant colours, perceptual hash and a thumbnail."""
    if upload_id is not None:
        path = upload_path(upload_id)
        # Pillow reads lazily from the open file: the upload is never copied into memory whole.
        with path.open("rb") as handle:
            return _analyse(handle, "upload", path.stat().st_size)
    assert image_base64 is not None  # exactly_one_of: the input model gives one or the other
    data = _decode_base64(image_base64)
    return _analyse(io.BytesIO(data), "base64", len(data))


def _decode_base64(text: str) -> bytes:
    # Accept a data URL ("data:image/png;base64,....") and line-wrapped base64 as well.
    if text.startswith("data:") and "," in text[:200]:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError("'image_base64' is not valid base64.") from None
    if not data:
        raise PermanentError("'image_base64' decodes to an empty file.")
    return data


def _analyse(stream: IO[bytes], source: str, size: int) -> dict[str, Any]:
    with _pixel_limit(MAX_PIXELS):
        image = _open(stream)
    progress(15, f"decoded {image.format} {image.width}x{image.height}")
    base = _eight_bit(image)
    channels = _channel_stats(base)
    progress(30, "channel statistics computed")
    luminance = base if base.mode == "L" else base.convert("L")
    brightness = _round(ImageStat.Stat(luminance).mean[0])
    progress(40, "brightness computed")
    colors = _dominant_colors(base)
    progress(60, "dominant colours found")
    digest = dhash(luminance)
    progress(75, "perceptual hash computed")
    thumbnail = _thumbnail(image, base)
    progress(95, "thumbnail saved")
    result = {
        "source": source,
        "bytes": size,
        "format": image.format,
        "media_type": Image.MIME.get(image.format or ""),
        "width": image.width,
        "height": image.height,
        "mode": image.mode,
        "frames": int(getattr(image, "n_frames", 1)),
        "has_exif": len(image.getexif()) > 0,
        "stats_mode": base.mode,
        "channels": channels,
        "brightness": brightness,
        "dominant_colors": colors,
        "dhash": digest,
        "thumbnail": thumbnail,
    }
    progress(100, "done")
    return result


@contextmanager
def _pixel_limit(limit: int) -> Iterator[None]:
    """Lower Pillow's bomb limit for this call and turn its warning into an error.

    Pillow checks the limit in Image.open and again wherever a decoder learns a new size (an ICO's
    embedded PNG is decoded inside Image.open), so a size check of our own after opening would come too late.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _open(stream: IO[bytes]) -> Image.Image:
    """Open and fully decode the first frame; anything Pillow cannot read is a permanent failure."""
    try:
        image = Image.open(stream)
        image.load()  # decodes every pixel: truncated data fails here, not in Image.open
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(f"The image is too large to analyse safely: {exc}") from None
    except UnidentifiedImageError:
        raise PermanentError("The file is not an image Pillow can read.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports corrupt or truncated data with these (e.g. "image file is truncated").
        raise PermanentError(f"The image is corrupt or truncated: {exc}") from None
    if image.width == 0 or image.height == 0:
        raise PermanentError("The image has no pixels.")
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """The image in a mode whose channels are 8-bit values ImageStat can read directly."""
    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode in ("1", "I;16", "I", "F"):
        return image.convert("L")
    has_alpha = image.mode in ("PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if has_alpha else "RGB")


def _channel_stats(image: Image.Image) -> dict[str, dict[str, float]]:
    stat = ImageStat.Stat(image)
    # Population standard deviation, from the variance clamped at 0 against rounding below zero.
    return {
        band: {"mean": _round(mean), "std": _round(math.sqrt(max(0.0, variance)))}
        for band, mean, variance in zip(image.getbands(), stat.mean, stat.var, strict=True)
    }


def _dominant_colors(image: Image.Image) -> list[dict[str, Any]]:
    """The PALETTE_COLORS most common colours (median cut) with their share of the pixels."""
    sample = image.convert("RGB")
    # NEAREST keeps real pixel colours: a blurring filter would invent blends at every edge.
    sample.thumbnail((PALETTE_SAMPLE_EDGE, PALETTE_SAMPLE_EDGE), Image.Resampling.NEAREST)
    quantized = sample.quantize(colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT)
    palette = quantized.getpalette() or []
    counts: dict[str, int] = {}
    for count, index in quantized.getcolors(PALETTE_COLORS * 4) or []:
        start = 3 * int(index)  # type: ignore[arg-type]  # a "P" image's colours are palette indices
        red, green, blue = palette[start : start + 3]
        key = f"#{red:02x}{green:02x}{blue:02x}"
        counts[key] = counts.get(key, 0) + count
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:PALETTE_COLORS]
    return [
        {"hex": key, "rgb": [int(key[i : i + 2], 16) for i in (1, 3, 5)], "share": _round(count / total)}
        for key, count in ranked
    ]


def dhash(image: Image.Image) -> str:
    """64-bit difference hash as 16 hex digits: each bit says whether a cell is brighter than its right neighbour."""
    grid = image.convert("L").resize((HASH_EDGE + 1, HASH_EDGE), Image.Resampling.BOX)
    pixels = grid.tobytes()  # one byte per cell in mode "L"
    bits = 0
    for row in range(HASH_EDGE):
        for column in range(HASH_EDGE):
            left = pixels[row * (HASH_EDGE + 1) + column]
            right = pixels[row * (HASH_EDGE + 1) + column + 1]
            bits = (bits << 1) | (left > right)
    return f"{bits:0{HASH_EDGE * HASH_EDGE // 4}x}"


def _thumbnail(image: Image.Image, base: Image.Image) -> dict[str, Any]:
    """Save a PNG of at most THUMBNAIL_EDGE pixels a side, upright per the original's EXIF orientation."""
    scale = min(1.0, THUMBNAIL_EDGE / base.width, THUMBNAIL_EDGE / base.height)
    size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
    # resize() returns a new image, so `base` (possibly the decoded original) is never modified.
    thumb = base.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0) if scale < 1 else base.copy()
    if thumb.mode == "CMYK":  # PNG has no CMYK
        thumb = thumb.convert("RGB")
    orientation = image.getexif().get(ORIENTATION_TAG)
    if orientation in ORIENTATION_TRANSPOSE:
        thumb = thumb.transpose(ORIENTATION_TRANSPOSE[orientation])
    buffer = io.BytesIO()
    thumb.save(buffer, "PNG", optimize=True)
    data = buffer.getvalue()
    entry = save_artifact(THUMBNAIL_NAME, data, "image/png")
    return {"name": entry.get("name", THUMBNAIL_NAME), "width": thumb.width, "height": thumb.height, "size": len(data)}


def _round(value: float) -> float:
    return round(float(value), DECIMALS)
