"""Keypoint outputs of kept detections -> joints in original-image pixels."""

from __future__ import annotations

import numpy as np

from service.preprocess import Geometry
from service.tasks.geometry import points_to_original


def joints_to_original(keypoints: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[M, K, 3] (x, y in model-input pixels, score) -> [M, K, 3] with x, y in original pixels."""
    if keypoints.size == 0:
        return keypoints.reshape(0, *keypoints.shape[1:]).astype(np.float64)
    out = keypoints.astype(np.float64).copy()
    out[..., :2] = points_to_original(out[..., :2], geometry)
    return out
