"""Instance masks from prototypes, at the original image size, and their three wire formats."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.contract import MaskSpec
from service.preprocess import Geometry
from service.tasks import polygons, rle


@dataclass(frozen=True, slots=True)
class LocalMask:
    """A mask that is zero outside its box: `pixels` [h, w] placed at (x0, y0) of the original image."""

    pixels: np.ndarray
    x0: int
    y0: int

    @property
    def area(self) -> int:
        return int(self.pixels.sum())


def instance_masks(coefficients: np.ndarray, prototypes: np.ndarray, boxes: np.ndarray, geometry: Geometry,
                   spec: MaskSpec) -> list[LocalMask]:
    """coefficients [M, P], prototypes [P, h, w], boxes [M, 4] in original pixels -> one mask per box.

    mask = sigmoid(coefficients @ prototypes) > threshold, evaluated directly at original-image pixels:
    each pixel of the box maps through the letterbox to prototype coordinates and is sampled bilinearly,
    so the letterbox is undone exactly and only the box is ever computed.
    """
    if len(boxes) == 0:
        return []
    count, height, width = prototypes.shape
    logits = (coefficients.astype(np.float32) @ prototypes.reshape(count, -1)).reshape(-1, height, width)
    cut = math.log(spec.threshold / (1.0 - spec.threshold))  # sigmoid(x) > t  <=>  x > logit(t)
    stride = spec.prototype_stride
    masks = []
    for logit_map, box in zip(logits, boxes, strict=True):
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        x1 = min(math.ceil(box[2]), geometry.original_width)
        y1 = min(math.ceil(box[3]), geometry.original_height)
        if x1 <= x0 or y1 <= y0:
            masks.append(LocalMask(np.zeros((0, 0), dtype=bool), x0, y0))
            continue
        source = (
            (x0 * geometry.scale_x + geometry.offset_x) / stride,
            (y0 * geometry.scale_y + geometry.offset_y) / stride,
            (x1 * geometry.scale_x + geometry.offset_x) / stride,
            (y1 * geometry.scale_y + geometry.offset_y) / stride,
        )
        region = Image.fromarray(logit_map, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR,
                                                             box=source)
        masks.append(LocalMask(np.asarray(region) > cut, x0, y0))
    return masks


def as_rle(mask: LocalMask, height: int, width: int) -> dict[str, object]:
    return rle.encode_region(mask.pixels, mask.x0, mask.y0, height, width)


def as_polygons(mask: LocalMask) -> list[list[list[int]]]:
    return polygons.mask_to_polygons(mask.pixels, mask.x0, mask.y0)


def as_png(mask: LocalMask, height: int, width: int) -> str:
    """Base64 1-bit PNG of the whole image (255 = mask)."""
    canvas = Image.new("1", (width, height), 0)
    if mask.pixels.size:
        canvas.paste(Image.fromarray(mask.pixels), (mask.x0, mask.y0))
    return png_base64(canvas)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over a few percent of size
    return base64.b64encode(buffer.getvalue()).decode("ascii")
