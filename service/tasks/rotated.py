"""Oriented boxes as pure numpy: probabilistic IoU and the NMS that rotated detectors (YOLO-OBB) use.

Boxes are [N, 5] cx, cy, w, h, angle (radians). The overlap measure is the probabilistic IoU of
"Gaussian Bounding Boxes" (Llerena et al., 2021): each box becomes a 2-D Gaussian, and 1 - Hellinger
distance between the two Gaussians stands in for IoU.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def _covariance(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N, 5] -> the covariance terms (a, b, c) of each box's Gaussian."""
    a, b = boxes[:, 2] ** 2 / 12.0, boxes[:, 3] ** 2 / 12.0
    cos, sin = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    return a * cos**2 + b * sin**2, a * sin**2 + b * cos**2, (a - b) * cos * sin


def probiou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[N, 5] x [M, 5] -> [N, M] probabilistic IoU in [0, 1]."""
    a1, b1, c1 = (t[:, None] for t in _covariance(first))
    a2, b2, c2 = (t[None, :] for t in _covariance(second))
    dx = first[:, None, 0] - second[None, :, 0]
    dy = first[:, None, 1] - second[None, :, 1]
    a, b, c = a1 + a2, b1 + b2, c1 + c2
    det = a * b - c**2
    t1 = (a * dy**2 + b * dx**2) / (det + _EPS) * 0.25
    t2 = (c * -dx * dy) / (det + _EPS) * 0.5
    own = np.sqrt(np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None))
    t3 = np.log(det / (4 * own + _EPS) + _EPS) * 0.5
    distance = np.clip(t1 + t2 + t3, _EPS, 100.0)
    return 1.0 - np.sqrt(1.0 - np.exp(-distance) + _EPS)


def rotated_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Kept indices, highest score first. A box is dropped when any higher-scoring box overlaps it by more
    than `iou_threshold`, whether or not that box was itself kept (the one-pass "fast NMS" YOLO-OBB
    uses: its answers are the reference, so the rule is the same)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    ious = np.triu(probiou(boxes[order], boxes[order]), k=1)
    keep = ~(ious > iou_threshold).any(axis=0)
    return order[keep]
