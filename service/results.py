"""One result type per task, in original-image pixels, whatever family of model made it.

Every family's decoder (service.families) produces these; the HTTP layer turns them into pydantic
responses at one boundary (service.api.encode). Plain numpy, no pydantic, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.tasks.masks import LocalMask
from service.tasks.semantic import ClassMap


@dataclass(frozen=True, slots=True)
class Classification:
    """The top-k classes of one image, best first (ties: lower class id first)."""

    class_ids: np.ndarray  # [k] int
    scores: np.ndarray  # [k] probabilities

    def __len__(self) -> int:
        return int(self.class_ids.size)


@dataclass(frozen=True, slots=True)
class Detections:
    """Kept instances of one image, sorted by score (highest first), in original-image pixels.

    `masks`, `keypoints` and `rotated` are present when the model gives them (instance segmentation,
    keypoints, oriented boxes); `boxes` is always the axis-aligned box (the enclosing one for rotated).
    """

    boxes: np.ndarray  # [M, 4] x1, y1, x2, y2, clipped to the image
    scores: np.ndarray  # [M]
    class_ids: np.ndarray  # [M] int
    masks: list[LocalMask] | None = None  # one per instance, zero outside its box
    keypoints: np.ndarray | None = None  # [M, K, 3] x, y, score
    rotated: np.ndarray | None = None  # [M, 5] cx, cy, w, h, angle (radians, clockwise in image axes)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.size)

    def corners(self) -> np.ndarray:
        """[M, 4, 2] the four corners of each rotated box (requires `rotated`)."""
        assert self.rotated is not None
        return rotated_corners(self.rotated)


def rotated_corners(rotated: np.ndarray) -> np.ndarray:
    """[M, 5] cx, cy, w, h, angle -> [M, 4, 2] corners, in Ultralytics' xywhr -> xyxyxyxy order."""
    if rotated.size == 0:
        return np.zeros((0, 4, 2), dtype=np.float64)
    centre, w, h, angle = rotated[:, :2], rotated[:, 2:3], rotated[:, 3:4], rotated[:, 4:5]
    cos, sin = np.cos(angle), np.sin(angle)
    half_w = np.concatenate([w / 2 * cos, w / 2 * sin], axis=1)
    half_h = np.concatenate([-h / 2 * sin, h / 2 * cos], axis=1)
    return np.stack([centre + half_w + half_h, centre + half_w - half_h, centre - half_w - half_h,
                     centre - half_w + half_h], axis=1)


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Feature vectors, one row per input (a whole image: one row), as the model gives them."""

    vectors: np.ndarray  # [K, D] float32
    normalized: bool  # the model states its vectors are L2-normalised already

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def unit(self) -> np.ndarray:
        """[K, D] L2-normalised rows (cosine similarity is then a dot product); zero rows stay zero."""
        if self.normalized:
            return self.vectors
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        return self.vectors / np.maximum(norms, np.finfo(np.float32).tiny)


TaskResult = Classification | Detections | ClassMap | Embeddings

__all__ = ["ClassMap", "Classification", "Detections", "Embeddings", "LocalMask", "TaskResult", "rotated_corners"]
