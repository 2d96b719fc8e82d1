"""Test images for the benchmarks: a smooth photo-like JPEG at any size (as make_model.py in the shared
harness draws it), and a JPEG rendering of a scene or digit upscaled to a given size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, quality: int = 90) -> bytes:
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    r = 127 + 100 * np.sin(xx / width * 3.1 + 0.5)
    g = 127 + 100 * np.cos(yy / height * 2.3)
    b = 127 + 90 * np.sin((xx + yy) / (width + height) * 5.0)
    image = Image.fromarray(np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8))
    return jpeg(image, quality)


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def upscaled(image: Image.Image, width: int, height: int) -> bytes:
    """A small image blown up to photo size, as a phone camera would deliver the same scene."""
    return jpeg(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC), quality=92)
