"""Semantic segmentation logits -> a class-id map at the original image size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.preprocess import Geometry

_BAND_ROWS = 256  # rows resized at a time: bounds memory on large photos to classes x band x width floats


@dataclass(frozen=True, slots=True)
class ClassMap:
    ids: np.ndarray  # [H, W] uint8 (uint16 beyond 256 classes) class id per original pixel

    def fractions(self, num_classes: int) -> np.ndarray:
        counts = np.bincount(self.ids.ravel(), minlength=num_classes)
        return counts / max(1, self.ids.size)


def class_map(logits: np.ndarray, geometry: Geometry) -> ClassMap:
    """logits [C, h, w] at model-input (or strided) resolution -> argmax at every original pixel.

    The logits of the image's own area (letterbox padding cropped) are resized bilinearly to the
    original size, class by class, then the argmax is taken: boundaries land where the model put them,
    to the pixel, instead of being blown up from the model's grid.
    """
    classes, height_in, width_in = logits.shape
    stride_y = geometry.input_height / height_in
    stride_x = geometry.input_width / width_in
    width, height = geometry.original_width, geometry.original_height
    dtype = np.uint8 if classes <= 256 else np.uint16
    ids = np.empty((height, width), dtype=dtype)
    planes = [Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F") for plane in logits]
    for top in range(0, height, _BAND_ROWS):
        bottom = min(height, top + _BAND_ROWS)
        source = (
            geometry.offset_x / stride_x,
            (top * geometry.scale_y + geometry.offset_y) / stride_y,
            (width * geometry.scale_x + geometry.offset_x) / stride_x,
            (bottom * geometry.scale_y + geometry.offset_y) / stride_y,
        )
        band = np.stack([np.asarray(p.resize((width, bottom - top), Image.Resampling.BILINEAR, box=source))
                         for p in planes])
        ids[top:bottom] = np.argmax(band, axis=0)
    return ClassMap(ids)
