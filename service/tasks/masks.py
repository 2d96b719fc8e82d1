"""Instance masks from prototypes, at the original image size, and their three wire formats.

Cost follows the model's output: inside its box a mask is evaluated at most CELL_SUBDIVISION times per
prototype cell along each axis (every pixel of a small box) and scaled up by nearest neighbour when encoded;
RLE and polygons are built from the evaluated cells, so a box filling a 40-megapixel photo stays cheap.
"""

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
from service.tasks.cells import cell_edges, working_side


@dataclass(frozen=True, slots=True)
class LocalMask:
    """A mask that is zero outside its box: `pixels` [h, w] placed at (x0, y0) of the original image.

    With edges, `pixels` are cells: cell (i, j) covers rows row_edges[i]..row_edges[i+1] and columns
    col_edges[j]..col_edges[j+1] of the box (nearest-neighbour scale); without, one cell is one pixel.
    """

    pixels: np.ndarray
    x0: int
    y0: int
    row_edges: np.ndarray | None = None
    col_edges: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.pixels.shape[0] + 1) if self.row_edges is None else self.row_edges

    @property
    def columns(self) -> np.ndarray:
        return np.arange(self.pixels.shape[1] + 1) if self.col_edges is None else self.col_edges

    @property
    def area(self) -> int:
        """Original pixels in the mask."""
        if self.row_edges is None and self.col_edges is None:
            return int(self.pixels.sum())
        return int(np.diff(self.rows) @ self.pixels.astype(np.int64) @ np.diff(self.columns))

    def full_size(self) -> np.ndarray:
        """[h, w] bool at original pixels (one byte per pixel of the box)."""
        if self.row_edges is None and self.col_edges is None:
            return self.pixels
        return np.repeat(np.repeat(self.pixels, np.diff(self.rows), axis=0), np.diff(self.columns), axis=1)


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
        work_w = working_side(x1 - x0, source[2] - source[0])
        work_h = working_side(y1 - y0, source[3] - source[1])
        region = Image.fromarray(logit_map, mode="F").resize((work_w, work_h), Image.Resampling.BILINEAR, box=source)
        cells = np.asarray(region) > cut
        if (work_h, work_w) == (y1 - y0, x1 - x0):
            masks.append(LocalMask(cells, x0, y0))
        else:
            masks.append(LocalMask(cells, x0, y0, cell_edges(y1 - y0, work_h), cell_edges(x1 - x0, work_w)))
    return masks


def as_rle(mask: LocalMask, height: int, width: int) -> dict[str, object]:
    return rle.encode_scaled(mask.pixels, mask.rows, mask.columns, mask.x0, mask.y0, height, width)


def as_polygons(mask: LocalMask) -> list[list[list[int]]]:
    # Cell corners map exactly to pixel corners through the edges: the outline of the scaled-up mask.
    rows, columns = mask.rows, mask.columns
    return [[[int(columns[x]) + mask.x0, int(rows[y]) + mask.y0] for x, y in polygon]
            for polygon in polygons.mask_to_polygons(mask.pixels)]


def as_png(mask: LocalMask, height: int, width: int) -> str:
    """Base64 1-bit PNG of the whole image (255 = mask)."""
    canvas = Image.new("1", (width, height), 0)
    if mask.pixels.size:
        canvas.paste(Image.fromarray(mask.full_size()), (mask.x0, mask.y0))
    return png_base64(canvas)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over a few percent of size
    return base64.b64encode(buffer.getvalue()).decode("ascii")
