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


@dataclass(frozen=True, slots=True)
class Fitted:
    """An image fitted to the model's input: `pixels` (uint8, [h, w] or [h, w, c]) placed at `left`, `top` of
    a `width` x `height` canvas whose other pixels are the pad value."""

    pixels: np.ndarray
    left: int
    top: int
    width: int
    height: int
    geometry: Geometry


def fit_to_input(image: Image.Image, spec: InputSpec) -> Fitted:
    """Resize (and place or crop) an image already in `spec.color_mode` for the model's input."""
    if image.mode != spec.color_mode:
        raise ValueError(f"image mode {image.mode} does not match the model's {spec.color_mode}")
    w, h = image.size
    out_w, out_h = spec.width, spec.height

    if spec.resize is ResizePolicy.STRETCH:
        pixels = _resized_pixels(image, (out_w, out_h), spec)
        return Fitted(pixels, 0, 0, out_w, out_h, Geometry(w, h, out_w, out_h, out_w / w, out_h / h, 0.0, 0.0))

    if spec.resize is ResizePolicy.LETTERBOX:
        ratio = min(out_w / w, out_h / h)
        new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
        if spec.pad_to_stride:  # the minimal rectangle: pad only up to the next multiple of the stride
            out_w = new_w + (out_w - new_w) % spec.pad_to_stride
            out_h = new_h + (out_h - new_h) % spec.pad_to_stride
        left, top = (out_w - new_w) // 2, (out_h - new_h) // 2  # = round(pad / 2 - 0.1), as Ultralytics
        pixels = _resized_pixels(image, (new_w, new_h), spec)
        geometry = Geometry(w, h, out_w, out_h, new_w / w, new_h / h, float(left), float(top))
        return Fitted(pixels, left, top, out_w, out_h, geometry)

    # CENTER_CROP as torchvision's Resize(int(size / crop_fraction)) + CenterCrop(size): the short side to
    # that size (the long side truncated), then the centre; a non-square input stretches to the scaled size.
    if out_w == out_h:
        short = int(out_w / spec.crop_fraction)
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    else:
        new_w, new_h = int(out_w / spec.crop_fraction), int(out_h / spec.crop_fraction)
    left, top = round((new_w - out_w) / 2.0), round((new_h - out_h) / 2.0)  # Python's round, as torchvision
    pixels = _resized_pixels(image, (new_w, new_h), spec)[top:top + out_h, left:left + out_w]
    geometry = Geometry(w, h, out_w, out_h, new_w / w, new_h / h, float(-left), float(-top))
    return Fitted(pixels, 0, 0, out_w, out_h, geometry)


def resize_to_input(image: Image.Image, spec: InputSpec) -> tuple[Image.Image, Geometry]:
    """The fitted image as a Pillow image of the input size (what training renders its data with)."""
    fitted = fit_to_input(image, spec)
    canvas = np.full((fitted.height, fitted.width, *fitted.pixels.shape[2:]), spec.pad_value, dtype=np.uint8)
    canvas[fitted.top:fitted.top + fitted.pixels.shape[0], fitted.left:fitted.left + fitted.pixels.shape[1]] = \
        fitted.pixels
    return Image.fromarray(canvas), fitted.geometry


def _resized_pixels(image: Image.Image, size: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """Pillow's antialiased resampling, or OpenCV's plain interpolation (what Ultralytics feeds its models)."""
    if image.size == size:
        return np.asarray(image)
    if spec.antialias:
        return np.asarray(image.resize(size, _RESAMPLE[spec.interpolation]))
    return cv2.resize(np.asarray(image), size, interpolation=_CV2_INTERPOLATION[spec.interpolation])


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A resized image -> float32 array [C, H, W], scaled and normalised."""
    pixels = np.asarray(image)
    return _normalised(Fitted(pixels, 0, 0, pixels.shape[1], pixels.shape[0], _NO_GEOMETRY), spec)


def _normalised(fitted: Fitted, spec: InputSpec) -> np.ndarray:
    """(pixel * scale - mean) / std per channel, written straight into the [C, H, W] tensor: the padding
    holds the pad value's normalised level, and one pass per channel converts the image's own pixels."""
    pixels = fitted.pixels if fitted.pixels.ndim == 3 else fitted.pixels[:, :, np.newaxis]
    channels = pixels.shape[2]
    gain = [np.float32(spec.scale / std) for std in spec.std]
    offset = [np.float32(mean / std) for mean, std in zip(spec.mean, spec.std, strict=True)]
    tensor = np.empty((channels, fitted.height, fitted.width), dtype=np.float32)
    height, width = pixels.shape[:2]
    sources = range(channels - 1, -1, -1) if spec.channel_order == "BGR" and channels == 3 else range(channels)
    for out, source in enumerate(sources):
        plane = tensor[out]
        if (height, width) != plane.shape:
            plane.fill(np.float32(spec.pad_value) * gain[out] - offset[out])
        region = plane[fitted.top:fitted.top + height, fitted.left:fitted.left + width]
        np.multiply(pixels[:, :, source], gain[out], out=region, casting="unsafe")
        region -= offset[out]
    return tensor


def prepare(image: Image.Image, spec: InputSpec,
            original_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Geometry]:
    """Upright image in the model's colour mode -> ([C, H, W] tensor, geometry to undo the resize).

    `original_size` is the size the client sent when the decoder already shrank the image (JPEG DCT
    scaling); the geometry then maps the client's coordinates, not the shrunken image's.
    """
    fitted = fit_to_input(image, spec)
    geometry = fitted.geometry
    if original_size and original_size != image.size:
        geometry = _relative_to(geometry, image.size, original_size)
    return _normalised(fitted, spec), geometry


def _relative_to(geometry: Geometry, decoded: tuple[int, int], original: tuple[int, int]) -> Geometry:
    shrink_x, shrink_y = decoded[0] / original[0], decoded[1] / original[1]
    return replace(geometry, original_width=original[0], original_height=original[1],
                   scale_x=geometry.scale_x * shrink_x, scale_y=geometry.scale_y * shrink_y)


_NO_GEOMETRY = Geometry(1, 1, 1, 1, 1.0, 1.0, 0.0, 0.0)  # to_tensor normalises an already fitted image
