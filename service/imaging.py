"""Bytes -> upright Pillow image in the colour mode a model asks for, with every check a public
endpoint needs: known formats only, pixel limit read from the header before any pixel is decoded (so
decompression bombs never allocate), truncation and corruption reported as client errors.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service import errors

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Formats people send that Pillow cannot open here: reported as "unsupported" (415), not "not an image".
_FOREIGN_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"<svg", "SVG"),
    (0, b"\x00\x00\x00\x0cjXL ", "JPEG XL"),
    (0, b"\xff\x0a", "JPEG XL"),
)

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# Premultiplied-alpha modes Pillow converts only to their straight-alpha twin.
_STRAIGHT_ALPHA = {"La": "LA", "RGBa": "RGBA"}

# A decoder meeting hostile or damaged bytes can fail in many ways (struct.error, IndexError, ...): every
# one of them means the same thing to the client, so they are all reported as a corrupt image.
_DECODER_FAILURES = (Exception,)


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Image.Image  # upright (EXIF orientation applied), in the requested colour mode
    width: int  # of the image as sent (upright); `image` may be smaller after JPEG DCT scaling
    height: int
    format: str
    orientation: int = 1  # the EXIF orientation tag that was applied (1 = stored upright)


def decode_image(data: bytes, *, mode: str, max_pixels: int, min_side: int | None = None) -> DecodedImage:
    """Decode and normalise an image for a model whose input is `mode` ("L" or "RGB").

    With `min_side`, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's draft
    mode) as long as both sides stay at least `min_side` pixels: a 12-megapixel photo bound for a
    small model input then costs a fraction of a full decode.
    """
    if not data:
        raise errors.empty_body()
    image = _open(data)
    if image.format not in ALLOWED_FORMATS:
        raise errors.unsupported_image_format(str(image.format), list(ALLOWED_FORMATS))
    width, height = image.size
    if width * height > max_pixels:
        raise errors.image_too_large(width, height, max_pixels)
    if min_side and image.format == "JPEG":
        _draft_jpeg(image, mode, width, height, min_side)
    try:
        image.load()
    except _DECODER_FAILURES as exc:
        raise errors.corrupt_image(str(exc) or type(exc).__name__) from exc
    fmt = str(image.format)
    orientation = _exif_orientation(image)
    # Only a rotated photo is transposed: exif_transpose copies even an upright image, a second full frame.
    upright = _apply_exif_orientation(image) if orientation != 1 else image
    if upright.size != image.size:
        width, height = height, width  # a 90-degree EXIF rotation swaps the sent size too
    try:
        converted = convert_mode(upright, mode)
    except ValueError as exc:  # a colour mode Pillow decodes but cannot convert
        raise errors.unsupported_image_format(f"{fmt} in colour mode {upright.mode}", list(ALLOWED_FORMATS)) from exc
    return DecodedImage(converted, width, height, fmt, orientation)


def _exif_orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except _DECODER_FAILURES:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _draft_jpeg(image: Image.Image, mode: str, width: int, height: int, min_side: int) -> None:
    """Let libjpeg do the cheap part: scale in the DCT domain, and for a grey model decode only the
    luma plane (the same ITU-R 601 weights Pillow's RGB -> L conversion uses, within rounding)."""
    grey = mode == "L" and image.mode in ("RGB", "YCbCr")
    small = min(width, height) >= 2 * min_side
    if grey or small:
        size = _draft_request(width, height, min_side) if small else (width, height)
        image.draft("L" if grey else image.mode, size)


def _draft_request(width: int, height: int, min_side: int) -> tuple[int, int]:
    """The size to ask draft() for: it picks the largest DCT reduction that keeps both sides >= this."""
    ratio = min_side / min(width, height)
    return max(1, int(width * ratio + 0.5)), max(1, int(height * ratio + 0.5))


def convert_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any Pillow mode -> "L" or "RGB". 16-bit is rescaled (Pillow would clip), alpha is composited
    over black (the background the bundled models were trained on)."""
    if image.mode == mode:
        return image
    if image.mode in _STRAIGHT_ALPHA:
        image = image.convert(_STRAIGHT_ALPHA[image.mode])
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        return _high_depth_to_8bit(image).convert(mode)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert(mode)
    return _convert_through_rgb(image, mode)


def _convert_through_rgb(image: Image.Image, mode: str) -> Image.Image:
    """Some modes (LAB, HSV) convert only to RGB, and Pillow does not chain conversions itself."""
    try:
        return image.convert(mode)
    except ValueError:
        return image.convert("RGB").convert(mode)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is the policy; Pillow's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise errors.StrideError(413, "image_too_large", f"the image is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        foreign = _foreign_format(data)
        if foreign:
            raise errors.unsupported_image_format(foreign, list(ALLOWED_FORMATS)) from exc
        raise errors.not_an_image("no supported image format recognised in the data") from exc
    except _DECODER_FAILURES as exc:
        raise errors.corrupt_image(str(exc) or type(exc).__name__) from exc


def _foreign_format(data: bytes) -> str | None:
    head = data[:64].lstrip() if data[:1].isspace() else data[:64]
    for offset, signature, name in _FOREIGN_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if head.startswith(b"<?xml") and b"<svg" in data[:1024]:
        return "SVG"
    return None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except _DECODER_FAILURES:
        # A malformed EXIF block should not cost the user the prediction: keep the stored orientation.
        return image


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image)
    if image.mode == "F":
        eight_bit = np.clip(np.rint(pixels), 0, 255)
    else:
        eight_bit = np.rint(np.clip(pixels.astype(np.float64), 0, 65535) / 257.0)
    return Image.fromarray(eight_bit.astype(np.uint8), mode="L")
