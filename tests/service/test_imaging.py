import io

import numpy as np
import pytest
from PIL import Image

from service.errors import StrideError
from service.imaging import convert_mode, decode_image
from tests.conftest import png_bytes

BIG = 10_000_000


def decode(data: bytes, mode: str = "RGB", max_pixels: int = BIG, min_side: int | None = None):
    return decode_image(data, mode=mode, max_pixels=max_pixels, min_side=min_side)


def error_of(data: bytes, **kwargs: object) -> StrideError:
    with pytest.raises(StrideError) as caught:
        decode(data, **kwargs)
    return caught.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_supported_formats_decode(fmt: str) -> None:
    decoded = decode(png_bytes(Image.new("RGB", (12, 7), (10, 200, 30)), fmt))
    assert (decoded.width, decoded.height, decoded.format) == (12, 7, fmt)
    assert decoded.image.mode == "RGB"


@pytest.mark.parametrize(
    ("mode", "value", "target", "expected"),
    [
        ("L", 100, "RGB", (100, 100, 100)),
        ("RGB", (10, 20, 30), "L", 18),  # ITU-R 601-2 luma
        ("1", 1, "L", 255),
        ("CMYK", (0, 0, 0, 0), "RGB", (255, 255, 255)),
        ("RGBA", (200, 100, 50, 0), "RGB", (0, 0, 0)),  # fully transparent -> the black background
        ("RGBA", (200, 100, 50, 255), "RGB", (200, 100, 50)),
        ("LA", (200, 128), "L", 100),
        ("I;16", 65535, "L", 255),  # rescaled, not clipped: 16-bit white stays white
        ("I;16", 257 * 100, "L", 100),
        ("I", 257 * 40, "L", 40),
        ("F", 12.4, "L", 12),
    ],
)
def test_any_mode_converts_to_what_the_model_asks(mode: str, value, target: str, expected) -> None:
    converted = convert_mode(Image.new(mode, (3, 2), value), target)
    assert converted.mode == target
    assert converted.getpixel((1, 1)) == pytest.approx(expected, abs=1)


def test_palette_with_transparency_is_composited() -> None:
    image = Image.new("P", (2, 2), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    assert convert_mode(image, "RGB").getpixel((0, 0)) == (0, 0, 0)


def test_sixteen_bit_png_round_trip_keeps_its_range() -> None:
    pixels = np.full((4, 4), 50_000, dtype=np.uint16)
    decoded = decode(png_bytes(Image.fromarray(pixels)), mode="L")
    assert decoded.image.getpixel((0, 0)) == round(50_000 / 257)


def test_exif_orientation_is_applied_and_reported_size_is_upright() -> None:
    image = Image.new("RGB", (40, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 5, 10))  # blue strip on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode(png_bytes(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert (decoded.width, decoded.height) == (10, 40)
    red, _, blue = decoded.image.getpixel((5, 2))  # the left strip is now along the top
    assert blue > 200 and red < 60


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_body"),
        (b"hello, this is text", 400, "not_an_image"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, 415, "unsupported_image_format"),
        (b"%PDF-1.7\n" + b"x" * 64, 415, "unsupported_image_format"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', 415, "unsupported_image_format"),
    ],
)
def test_non_images_are_client_errors(data: bytes, status: int, code: str) -> None:
    error = error_of(data)
    assert (error.status, error.code) == (status, code)


def test_format_outside_the_allow_list_is_415() -> None:
    error = error_of(png_bytes(Image.new("RGB", (16, 16)), "ICO"))
    assert (error.status, error.code) == (415, "unsupported_image_format")
    assert "ICO" in error.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_400(fmt: str) -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = png_bytes(noisy, fmt)
    error = error_of(data[: len(data) // 2])
    assert (error.status, error.code) == (400, "corrupt_image")


def test_pixel_limit_is_checked_before_decoding() -> None:
    error = error_of(png_bytes(Image.new("L", (20, 20))), max_pixels=399)
    assert (error.status, error.code) == (413, "image_too_large")
    assert "20x20" in error.message


def test_decompression_bomb_never_allocates() -> None:
    # A PNG whose header claims 100000 x 100000 pixels: refused from the header alone.
    small = png_bytes(Image.new("L", (1, 1)))
    ihdr = small.index(b"IHDR")
    import struct
    import zlib

    body = b"IHDR" + struct.pack(">II", 100_000, 100_000) + small[ihdr + 12 : ihdr + 17]
    bomb = small[: ihdr - 4] + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body)) + small[ihdr + 21 :]
    error = error_of(bomb, max_pixels=40_000_000)
    assert (error.status, error.code) == (413, "image_too_large")


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("L", (4, 4), v) for v in (10, 250)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode(buffer.getvalue(), mode="L")
    assert decoded.image.getpixel((0, 0)) == 10


def photo_like(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[:height, :width]
    return Image.fromarray(np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1).astype(np.uint8))


@pytest.mark.parametrize(
    ("min_side", "expected"), [(64, (160, 120)), (200, (320, 240)), (240, (320, 240)), (241, (640, 480))]
)
def test_jpeg_draft_decodes_at_reduced_scale_but_reports_the_sent_size(min_side: int, expected: tuple) -> None:
    data = png_bytes(photo_like(640, 480), "JPEG", quality=90)
    decoded = decode(data, mode="RGB", min_side=min_side)
    assert decoded.image.size == expected
    assert (decoded.width, decoded.height) == (640, 480)


def test_jpeg_draft_keeps_the_pixels_close_to_a_full_decode() -> None:
    data = png_bytes(photo_like(640, 480), "JPEG", quality=90)
    full = np.asarray(decode(data, mode="L").image.resize((32, 32), Image.Resampling.BILINEAR), dtype=float)
    drafted = np.asarray(decode(data, mode="L", min_side=64).image.resize((32, 32), Image.Resampling.BILINEAR),
                         dtype=float)
    assert np.abs(full - drafted).mean() < 2.0  # 8-bit levels, after the resize a model input goes through


def test_draft_never_applies_to_png_or_small_jpegs() -> None:
    assert decode(png_bytes(photo_like(640, 480)), min_side=64).image.size == (640, 480)
    assert decode(png_bytes(photo_like(100, 80), "JPEG"), min_side=64).image.size == (100, 80)
