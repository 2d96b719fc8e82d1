"""Box geometry as pure numpy functions: IoU, NMS, mapping back to the original image."""

from __future__ import annotations

import numpy as np

from service.preprocess import Geometry


def box_area(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 -> [N]; inverted boxes count as empty."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [M, 4] -> [N, M] intersection over union."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    Each round suppresses every remaining box that overlaps the current best by more than the threshold,
    one vectorised IoU row per kept box.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best = order[0]
        keep.append(int(best))
        if order.size == 1:
            break
        overlaps = box_iou(boxes[best : best + 1], boxes[order[1:]])[0]
        order = order[1:][overlaps <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float,
                max_keep: int | None = None, agnostic: bool = False) -> np.ndarray:
    """Class-aware NMS in one pass: boxes of different classes are moved apart so they never overlap."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if agnostic:
        return nms(boxes, scores, iou_threshold, max_keep)
    span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
    shifted = boxes + (class_ids.astype(boxes.dtype) * span)[:, None]
    return nms(shifted, scores, iou_threshold, max_keep)


def boxes_to_original(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Model-input pixel boxes -> original-image pixel boxes, clipped to the image."""
    x1, y1 = geometry.to_original(boxes[:, 0], boxes[:, 1])
    x2, y2 = geometry.to_original(boxes[:, 2], boxes[:, 3])
    return clip_to_image(np.stack([x1, y1, x2, y2], axis=1), geometry)


def clip_to_image(xy: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[..., 2k] original-pixel x, y columns (alternating) clipped to the image, in place; returned."""
    xy[..., 0::2] = np.clip(xy[..., 0::2], 0, geometry.original_width)
    xy[..., 1::2] = np.clip(xy[..., 1::2], 0, geometry.original_height)
    return xy


def points_to_original(xy: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[..., 2] model-input pixel points -> original-image pixels (not clipped: a joint may be outside)."""
    x, y = geometry.to_original(xy[..., 0], xy[..., 1])
    return np.stack([x, y], axis=-1)
