"""Semantic segmentation logits -> a class-id map at the original image size.

Cost follows the model's output, not the photo: the map is evaluated at the working resolution of
service.tasks.cells (a few samples per logit cell, never more than the image itself), and the original-size
map is that working map scaled up by nearest neighbour. Its run-length encoding, class fractions and PNG
are built from the working map (runs scaled run by run), so a 40-megapixel photo costs what the model's
grid costs; only the PNG answer holds one byte per original pixel, once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.preprocess import Geometry
from service.tasks import masks as mask_formats
from service.tasks import rle
from service.tasks.cells import cell_edges, working_side

_BAND_ROWS = 256  # working rows resized at a time: bounds memory to classes x band x width floats


@dataclass(frozen=True, slots=True)
class ClassMap:
    """The class id of every original pixel, held as `cells` [h, w] (uint8, uint16 beyond 256 classes): cell
    (i, j) covers original rows row_edges[i]..row_edges[i+1] and columns col_edges[j]..col_edges[j+1]."""

    cells: np.ndarray
    row_edges: np.ndarray  # [h + 1], from 0 to the original height
    col_edges: np.ndarray  # [w + 1], from 0 to the original width

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.row_edges[-1]), int(self.col_edges[-1])

    @property
    def ids(self) -> np.ndarray:
        """[H, W] class id per original pixel (built on each access: one byte per pixel)."""
        if self.cells.shape == self.shape:
            return self.cells
        return np.repeat(np.repeat(self.cells, np.diff(self.row_edges), axis=0), np.diff(self.col_edges), axis=1)

    def fractions(self, num_classes: int) -> np.ndarray:
        weights = np.outer(np.diff(self.row_edges), np.diff(self.col_edges)).ravel()
        counts = np.bincount(self.cells.ravel(), weights=weights, minlength=num_classes)
        height, width = self.shape
        return counts / max(1, height * width)

    def rle(self, class_id: int) -> dict[str, object]:
        """COCO RLE of one class at the original size, built from the working map run by run."""
        height, width = self.shape
        return rle.encode_scaled(self.cells == class_id, self.row_edges, self.col_edges, 0, 0, height, width)

    def png_base64(self) -> str:
        """The original-size map as a greyscale PNG (pixel value = class id), base64."""
        return mask_formats.png_base64(Image.fromarray(self.ids))


def class_map(logits: np.ndarray, geometry: Geometry) -> ClassMap:
    """logits [C, h, w] at model-input (or strided) resolution -> argmax at every original pixel.

    The logits of the image's own area (letterbox padding cropped) are resized bilinearly to the working
    size, class by class, then the argmax is taken: boundaries land where the model put them instead of
    being blown up from the model's grid.
    """
    classes, height_in, width_in = logits.shape
    stride_y = geometry.input_height / height_in
    stride_x = geometry.input_width / width_in
    width, height = geometry.original_width, geometry.original_height
    work_w = working_side(width, width * geometry.scale_x / stride_x)
    work_h = working_side(height, height * geometry.scale_y / stride_y)
    dtype = np.uint8 if classes <= 256 else np.uint16
    cells = np.empty((work_h, work_w), dtype=dtype)
    planes = [Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F") for plane in logits]
    rows_per_cell = height / work_h
    for top in range(0, work_h, _BAND_ROWS):
        bottom = min(work_h, top + _BAND_ROWS)
        source = (
            geometry.offset_x / stride_x,
            (top * rows_per_cell * geometry.scale_y + geometry.offset_y) / stride_y,
            (width * geometry.scale_x + geometry.offset_x) / stride_x,
            (bottom * rows_per_cell * geometry.scale_y + geometry.offset_y) / stride_y,
        )
        band = np.stack([np.asarray(p.resize((work_w, bottom - top), Image.Resampling.BILINEAR, box=source))
                         for p in planes])
        cells[top:bottom] = np.argmax(band, axis=0)
    return ClassMap(cells, cell_edges(height, work_h), cell_edges(width, work_w))
