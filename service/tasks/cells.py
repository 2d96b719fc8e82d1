"""The working resolution of a map derived from a model's output grid (class maps, instance masks).

A map is evaluated at most CELL_SUBDIVISION samples per output cell along each axis, never more than the
image's own pixels, and scaled up to the original size by nearest neighbour: post-processing then costs
what the model's grid costs, whatever the photo's size.
"""

from __future__ import annotations

import math

import numpy as np

# A boundary lands within 1/8 of the model's own grid cell, far finer than what the model can place.
CELL_SUBDIVISION = 8
MAX_WORKING_SIDE = 2048  # whatever the model's grid, a working map stays small


def working_side(original: int, cells_spanned: float) -> int:
    """Samples along one axis: every pixel of a small image, else CELL_SUBDIVISION per cell, capped."""
    return max(1, min(original, math.ceil(CELL_SUBDIVISION * cells_spanned), MAX_WORKING_SIDE))


def cell_edges(original: int, samples: int) -> np.ndarray:
    """[samples + 1] original positions where each sample's span starts (the last is `original`): sample k,
    taken at the centre of its span (as a resize does), covers round(k * original / samples) up to the next."""
    return np.rint(np.arange(samples + 1) * (original / samples)).astype(np.int64)
