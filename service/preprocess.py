"""Decoded image -> model input tensor, exactly as the model's InputSpec says.

Training renders its data through these same functions, so what a model saw while learning is what it
sees in production; the golden samples in each model file check that this stays true.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image

from service.contract import InputSpec, Interpolation, ResizePolicy

_CV2_INTERPOLATION = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.BILINEAR: cv2.INTER_LINEAR,
    Interpolation.BICUBIC: cv2.INTER_CUBIC,
}
_RESAMPLE = {
    Interpolation.NEAREST: Image.Resampling.NEAREST,
    Interpolation.BILINEAR: Image.Resampling.BILINEAR,
    Interpolation.BICUBIC: Image.Resampling.BICUBIC,
}


@dataclass(frozen=True, slots=True)
class Geometry:
    """Maps original (upright) pixel coordinates to model-input coordinates: x_in = x * scale_x + offset_x."""

    original_width: int
    original_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_original(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Undo the resize/pad/crop, e.g. for boxes predicted in input coordinates."""
        return (x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y


def resize_to_input(image: Image.Image, spec: InputSpec) -> tuple[Image.Image, Geometry]:
    """Resize (and pad or crop) an image already in `spec.color_mode` to the model's input size."""
    if image.mode != spec.color_mode:
        raise ValueError(f"image mode {image.mode} does not match the model's {spec.color_mode}")
    w, h = image.size
    out_w, out_h = spec.width, spec.height

    if spec.resize is ResizePolicy.STRETCH:
        resized = image if (w, h) == (out_w, out_h) else _resize(image, (out_w, out_h), spec)
        return resized, Geometry(w, h, out_w, out_h, out_w / w, out_h / h, 0.0, 0.0)

    if spec.resize is ResizePolicy.LETTERBOX:
        ratio = min(out_w / w, out_h / h)
        new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
        if spec.pad_to_stride:  # the minimal rectangle: pad only up to the next multiple of the stride
            out_w = new_w + (out_w - new_w) % spec.pad_to_stride
            out_h = new_h + (out_h - new_h) % spec.pad_to_stride
        left, top = (out_w - new_w) // 2, (out_h - new_h) // 2  # = round(pad / 2 - 0.1), as Ultralytics
        canvas = Image.new(spec.color_mode, (out_w, out_h), _fill(spec))
        canvas.paste(image if (w, h) == (new_w, new_h) else _resize(image, (new_w, new_h), spec), (left, top))
        return canvas, Geometry(w, h, out_w, out_h, new_w / w, new_h / h, float(left), float(top))

    # CENTER_CROP as torchvision's Resize(int(size / crop_fraction)) + CenterCrop(size): the short side to
    # that size (the long side truncated), then the centre; a non-square input stretches to the scaled size.
    if out_w == out_h:
        short = int(out_w / spec.crop_fraction)
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    else:
        new_w, new_h = int(out_w / spec.crop_fraction), int(out_h / spec.crop_fraction)
    left, top = round((new_w - out_w) / 2.0), round((new_h - out_h) / 2.0)  # Python's round, as torchvision
    resized = image if (w, h) == (new_w, new_h) else _resize(image, (new_w, new_h), spec)
    cropped = resized.crop((left, top, left + out_w, top + out_h))
    return cropped, Geometry(w, h, out_w, out_h, new_w / w, new_h / h, float(-left), float(-top))


def _resize(image: Image.Image, size: tuple[int, int], spec: InputSpec) -> Image.Image:
    """Pillow's antialiased resampling, or OpenCV's plain interpolation (what Ultralytics feeds its models)."""
    if spec.antialias:
        return image.resize(size, _RESAMPLE[spec.interpolation])
    resized = cv2.resize(np.asarray(image), size, interpolation=_CV2_INTERPOLATION[spec.interpolation])
    return Image.fromarray(resized)


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A resized image -> float32 array [C, H, W], scaled and normalised."""
    pixels = np.asarray(image, dtype=np.float32)
    chw = pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if spec.channel_order == "BGR" and spec.channels == 3:
        chw = chw[::-1]
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((chw * np.float32(spec.scale) - mean) / std, dtype=np.float32)


def prepare(image: Image.Image, spec: InputSpec,
            original_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Geometry]:
    """Upright image in the model's colour mode -> ([C, H, W] tensor, geometry to undo the resize).

    `original_size` is the size the client sent when the decoder already shrank the image (JPEG DCT
    scaling); the geometry then maps the client's coordinates, not the shrunken image's.
    """
    resized, geometry = resize_to_input(image, spec)
    if original_size and original_size != image.size:
        geometry = _relative_to(geometry, image.size, original_size)
    return to_tensor(resized, spec), geometry


def _relative_to(geometry: Geometry, decoded: tuple[int, int], original: tuple[int, int]) -> Geometry:
    shrink_x, shrink_y = decoded[0] / original[0], decoded[1] / original[1]
    return replace(geometry, original_width=original[0], original_height=original[1],
                   scale_x=geometry.scale_x * shrink_x, scale_y=geometry.scale_y * shrink_y)


def _fill(spec: InputSpec) -> int | tuple[int, int, int]:
    return spec.pad_value if spec.channels == 1 else (spec.pad_value,) * 3
