"""Binary mask -> polygons that follow the pixel edges exactly (no OpenCV).

Each boundary between a mask pixel and a background pixel is a unit edge, oriented so the mask lies on
its right; linking edges end to start gives closed loops. Outer boundaries run clockwise on screen
(y down) and holes counter-clockwise; like COCO's polygon format we report outer boundaries only.
"""

from __future__ import annotations

import numpy as np

Point = tuple[int, int]

# Preference when two edges leave one vertex (pixels touching only at a corner): turn right first,
# which keeps diagonal neighbours as separate polygons.
_RIGHT_OF = {(1, 0): (0, 1), (0, 1): (-1, 0), (-1, 0): (0, -1), (0, -1): (1, 0)}


def mask_to_polygons(local: np.ndarray, x0: int = 0, y0: int = 0) -> list[list[list[int]]]:
    """[h, w] bool mask -> outer boundaries as lists of [x, y] pixel-corner points, offset by (x0, y0)."""
    if not local.any():
        return []
    edges = _boundary_edges(local)
    polygons = []
    for loop in _link(edges):
        simplified = _drop_collinear(loop)
        if _signed_area(simplified) > 0:  # clockwise on screen: an outer boundary
            polygons.append([[x + x0, y + y0] for x, y in simplified])
    return polygons


def _boundary_edges(mask: np.ndarray) -> dict[Point, list[Point]]:
    padded = np.pad(mask.astype(bool), 1)
    outgoing: dict[Point, list[Point]] = {}

    def add(starts_x: np.ndarray, starts_y: np.ndarray, dx: int, dy: int) -> None:
        for x, y in zip(starts_x.tolist(), starts_y.tolist(), strict=True):
            outgoing.setdefault((x, y), []).append((x + dx, y + dy))

    above, below = padded[:-1, 1:-1], padded[1:, 1:-1]  # pairs across horizontal grid lines y = 0..h
    ys, xs = np.nonzero(below & ~above)
    add(xs, ys, 1, 0)  # mask below: run east
    ys, xs = np.nonzero(above & ~below)
    add(xs + 1, ys, -1, 0)  # mask above: run west
    left, right = padded[1:-1, :-1], padded[1:-1, 1:]  # pairs across vertical grid lines x = 0..w
    ys, xs = np.nonzero(left & ~right)
    add(xs, ys, 0, 1)  # mask on the left: run south
    ys, xs = np.nonzero(right & ~left)
    add(xs, ys + 1, 0, -1)  # mask on the right: run north
    return outgoing


def _link(outgoing: dict[Point, list[Point]]) -> list[list[Point]]:
    loops = []
    while outgoing:
        start = next(iter(outgoing))
        loop = [start]
        current, direction = start, None
        while True:
            ends = outgoing[current]
            end = ends[0]
            if len(ends) > 1 and direction is not None:
                turn = _RIGHT_OF[direction]
                end = next((e for e in ends if (e[0] - current[0], e[1] - current[1]) == turn), ends[0])
            ends.remove(end)
            if not ends:
                del outgoing[current]
            direction = (end[0] - current[0], end[1] - current[1])
            current = end
            if current == start:  # in-degree equals out-degree everywhere, so every walk closes
                break
            loop.append(current)
        loops.append(loop)
    return loops


def _drop_collinear(loop: list[Point]) -> list[Point]:
    kept = []
    count = len(loop)
    for i, point in enumerate(loop):
        before, after = loop[i - 1], loop[(i + 1) % count]
        if (point[0] - before[0]) * (after[1] - point[1]) != (point[1] - before[1]) * (after[0] - point[0]):
            kept.append(point)
    return kept


def _signed_area(points: list[Point]) -> float:
    xs = np.array([p[0] for p in points], dtype=np.float64)
    ys = np.array([p[1] for p in points], dtype=np.float64)
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
