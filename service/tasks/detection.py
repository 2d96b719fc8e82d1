"""Detection-style outputs -> filtered, NMS-ed candidates in original-image pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.preprocess import Geometry
from service.tasks.geometry import batched_nms, boxes_to_original


@dataclass(frozen=True, slots=True)
class DetectionQuery:
    confidence: float = 0.25
    iou: float = 0.45
    max_detections: int = 100
    classes: frozenset[int] | None = None  # keep only these class ids
    agnostic: bool = False  # NMS across classes


@dataclass(frozen=True, slots=True)
class Selection:
    """Kept candidates, sorted by score (highest first)."""

    indices: np.ndarray  # [M] candidate index into the model's outputs
    class_ids: np.ndarray  # [M]
    scores: np.ndarray  # [M]
    boxes_input: np.ndarray  # [M, 4] model-input pixels
    boxes: np.ndarray  # [M, 4] original-image pixels, clipped

    def __len__(self) -> int:
        return int(self.indices.size)


def best_class_candidates(scores: np.ndarray, query: DetectionQuery, *,
                          strict: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`scores` [N, C] -> (indices of the candidates that pass, every candidate's best class, its score).

    Each candidate keeps its best class (as single-label detectors do at inference), then the score
    threshold (`strict`: score > confidence, as Ultralytics) and the class filter apply.
    """
    class_ids = np.argmax(scores, axis=1) if scores.size else np.zeros(0, dtype=np.int64)
    best = scores[np.arange(len(scores)), class_ids] if scores.size else np.zeros(0, dtype=np.float32)
    keep = best > query.confidence if strict else best >= query.confidence
    if query.classes is not None:
        keep &= np.isin(class_ids, list(query.classes))
    return np.flatnonzero(keep), class_ids, best


def select_detections(boxes: np.ndarray, scores: np.ndarray, geometry: Geometry, query: DetectionQuery, *,
                      strict: bool = False) -> Selection:
    """`boxes` [N, 4] x1y1x2y2 and `scores` [N, C] of one image -> the detections to report.

    The candidates of `best_class_candidates`, then class-aware NMS, then the cap.
    """
    candidates, class_ids, best = best_class_candidates(scores, query, strict=strict)
    order = batched_nms(boxes[candidates].astype(np.float64), best[candidates], class_ids[candidates],
                        query.iou, query.max_detections, query.agnostic)
    chosen = candidates[order]
    kept_boxes = boxes[chosen].astype(np.float64).reshape(-1, 4)
    return Selection(
        indices=chosen,
        class_ids=class_ids[chosen],
        scores=best[chosen].astype(np.float64),
        boxes_input=kept_boxes,
        boxes=boxes_to_original(kept_boxes, geometry),
    )
