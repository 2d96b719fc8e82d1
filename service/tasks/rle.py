"""COCO run-length encoding of binary masks, written without pycocotools (tests check it against
pycocotools): column-major runs starting with background, compressed to COCO's ASCII string."""

from __future__ import annotations

import numpy as np


def encode(mask: np.ndarray) -> dict[str, object]:
    """[H, W] bool mask -> {"size": [H, W], "counts": str}, as pycocotools.mask.encode gives."""
    height, width = mask.shape
    return encode_region(mask, 0, 0, height, width)


def encode_region(local: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict[str, object]:
    """RLE of an image-sized mask that is zero outside `local`, placed with its top-left at (x0, y0).

    Never builds the image-sized array: a 12-megapixel photo with a hundred instances stays cheap.
    """
    columns, rows = np.nonzero(local.T)  # column-major order, as COCO counts run down columns
    positions = (columns.astype(np.int64) + x0) * height + (rows.astype(np.int64) + y0)
    return {"size": [height, width], "counts": counts_to_string(runs(positions, height * width))}


def runs(positions: np.ndarray, total: int) -> list[int]:
    """Sorted foreground positions -> alternating background/foreground run lengths."""
    if positions.size == 0:
        return [total]
    breaks = np.flatnonzero(np.diff(positions) != 1)
    starts = np.concatenate([positions[:1], positions[breaks + 1]])
    ends = np.concatenate([positions[breaks], positions[-1:]]) + 1
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = total - ends[-1]
    return counts.tolist() if counts[-1] else counts[:-1].tolist()


def counts_to_string(counts: list[int]) -> str:
    """COCO's compressed counts: each count minus the one two before it (from the fourth on), in
    LEB128-like groups of 5 bits, as ASCII characters 48..111 (pycocotools' rleToString)."""
    out = bytearray()
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            chunk = value & 0x1F
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            if more:
                chunk |= 0x20
            out.append(chunk + 48)
    return out.decode("ascii")
