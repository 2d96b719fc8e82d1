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
    rows, columns = local.shape
    return encode_scaled(local, np.arange(rows + 1), np.arange(columns + 1), x0, y0, height, width)


def encode_scaled(cells: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, x0: int, y0: int,
                  height: int, width: int) -> dict[str, object]:
    """RLE of an image-sized mask that is zero outside a region given at a coarser resolution: cell (i, j)
    covers rows row_edges[i]..row_edges[i+1] and columns col_edges[j]..col_edges[j+1] of the region, whose
    top-left is (x0, y0) in the image (nearest-neighbour upscaling, done run by run).

    Cost follows the cells and the runs, never the image's pixel count: memory stays bounded for any size.
    """
    starts, ends = _foreground_intervals(cells, np.asarray(row_edges, np.int64), np.asarray(col_edges, np.int64),
                                         x0, y0, height)
    return {"size": [height, width], "counts": counts_to_string(interval_runs(starts, ends, height * width))}


def _foreground_intervals(cells: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, x0: int, y0: int,
                          height: int) -> tuple[np.ndarray, np.ndarray]:
    """Column-major [start, end) positions of the foreground runs in the image, sorted, touching ones merged."""
    if cells.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    mask = cells.astype(bool, copy=False)
    # Run boundaries down each cell column, found row-major (no transposed copy of the mask).
    flips_row, flips_col = np.nonzero(mask[1:] != mask[:-1])
    top_col = np.flatnonzero(mask[0])
    bottom_col = np.flatnonzero(mask[-1])
    boundary_col = np.concatenate([top_col, flips_col, bottom_col])
    boundary_row = np.concatenate([np.zeros(top_col.size, np.int64), flips_row + 1,
                                   np.full(bottom_col.size, mask.shape[0], np.int64)])
    order = np.lexsort((boundary_row, boundary_col))  # by column, then row: starts and ends alternate
    run_col = boundary_col[order][0::2]
    run_start, run_end = row_edges[boundary_row[order][0::2]], row_edges[boundary_row[order][1::2]]
    # Every image column a cell column covers repeats that cell column's runs.
    repeats = np.diff(col_edges)[run_col]
    first = np.repeat(np.cumsum(repeats) - repeats, repeats)
    image_col = np.repeat(col_edges[run_col], repeats) + (np.arange(int(repeats.sum())) - first) + x0
    start_row, end_row = np.repeat(run_start, repeats) + y0, np.repeat(run_end, repeats) + y0
    order = np.lexsort((start_row, image_col))
    starts = image_col[order].astype(np.int64) * height + start_row[order]
    ends = image_col[order].astype(np.int64) * height + end_row[order]
    touching = np.flatnonzero(starts[1:] == ends[:-1])  # a run through a column's bottom into the next's top
    return np.delete(starts, touching + 1), np.delete(ends, touching)


def interval_runs(starts: np.ndarray, ends: np.ndarray, total: int) -> list[int]:
    """Sorted, disjoint, non-touching foreground [start, end) intervals -> alternating background/foreground
    run lengths, starting with background (0 when the first pixel is foreground)."""
    if starts.size == 0:
        return [total]
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = total - ends[-1]
    return counts.tolist() if counts[-1] else counts[:-1].tolist()


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


def decode(size: list[int], counts: str) -> np.ndarray:
    """{"size": [H, W], "counts": str} -> [H, W] bool mask: the inverse of `encode`."""
    height, width = size
    lengths = np.array(string_to_counts(counts), dtype=np.int64)
    total = height * width
    if lengths.sum() != total:
        raise ValueError(f"the RLE runs cover {int(lengths.sum())} pixels, not {height}x{width} = {total}")
    foreground = np.arange(lengths.size) % 2 == 1  # runs alternate, starting with background
    return np.repeat(foreground, lengths).reshape(width, height).T


def string_to_counts(text: str) -> list[int]:
    """COCO's compressed counts string -> run lengths (pycocotools' rleFrString)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            chunk = ord(text[position]) - 48
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            position += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift  # sign-extend the last group
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts
