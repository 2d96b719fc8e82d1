"""Post-processing exactly as the service does it (numpy), and COCO metrics with pycocotools.

Per image: best class per candidate, score filter (>= 0.25), class-aware greedy NMS (IoU 0.45), at most 100
detections, then boxes / joints mapped back to original pixels with `Geometry.to_original` and clipped to
the image. Masks: the logits coefficients @ prototypes sampled bilinearly at every original pixel of the
(original-pixel) box through the letterbox, zero outside the box, sigmoid > 0.5 (see `decode_masks`).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from service.preprocess import Geometry

SCORE_THRESHOLD = 0.25
NMS_IOU = 0.45
MAX_DETECTIONS = 100
OKS_SIGMA = 0.05


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Class-aware greedy NMS: indices kept, highest score first (ties: lower index first)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), bool)
    ious = iou_matrix(boxes, boxes) if len(boxes) else np.zeros((0, 0))
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= (ious[i] > iou) & (classes == classes[i])
    return np.asarray(keep, dtype=np.int64)


@dataclass
class Detections:
    boxes: np.ndarray  # [K, 4] original pixels
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] class index
    candidates: np.ndarray  # [K] candidate index into the model outputs
    keypoints: np.ndarray | None = None  # [K, J, 3] original pixels, visibility probability
    masks: np.ndarray | None = None  # [K, H, W] bool, original resolution


def postprocess(outputs: dict[str, np.ndarray], geometry: Geometry, score_threshold: float = SCORE_THRESHOLD,
                iou: float = NMS_IOU, max_detections: int = MAX_DETECTIONS) -> Detections:
    """outputs: one image's tensors without the batch axis, keyed by output name."""
    boxes, scores = outputs["boxes"], outputs["scores"]
    classes = scores.argmax(1)
    best = scores[np.arange(len(scores)), classes]
    cand = np.flatnonzero(best >= score_threshold)
    keep = cand[nms(boxes[cand], best[cand], classes[cand], iou)][:max_detections]
    w, h = geometry.original_width, geometry.original_height
    x1, y1 = geometry.to_original(boxes[keep, 0], boxes[keep, 1])
    x2, y2 = geometry.to_original(boxes[keep, 2], boxes[keep, 3])
    out_boxes = np.stack([np.clip(x1, 0, w), np.clip(y1, 0, h), np.clip(x2, 0, w), np.clip(y2, 0, h)], -1)
    det = Detections(out_boxes.reshape(-1, 4), best[keep], classes[keep], keep)
    if "keypoints" in outputs:
        k = outputs["keypoints"][keep].copy()
        k[..., 0], k[..., 1] = geometry.to_original(k[..., 0], k[..., 1])
        det.keypoints = k
    if "mask_prototypes" in outputs:
        det.masks = decode_masks(outputs["mask_coefficients"][keep], outputs["mask_prototypes"],
                                 det.boxes, geometry)
    return det


def decode_masks(coefficients: np.ndarray, prototypes: np.ndarray, boxes: np.ndarray, geometry: Geometry,
                 threshold: float = 0.5) -> np.ndarray:
    """coefficients [K, P], prototypes [P, h, w], boxes [K, 4] in ORIGINAL pixels -> [K, H, W] bool masks.

    mask = sigmoid(coefficients @ prototypes) > threshold, zero outside the box: every original pixel of the
    box (floor(x1)..ceil(x2)) maps through the letterbox to prototype coordinates and the logit map is
    sampled there bilinearly (one PIL resize of the box's source region), as the service decodes masks.
    """
    p, ph, pw = prototypes.shape
    stride_x, stride_y = geometry.input_width / pw, geometry.input_height / ph
    logits = (coefficients.astype(np.float32) @ prototypes.reshape(p, -1)).reshape(-1, ph, pw)
    cut = math.log(threshold / (1.0 - threshold))
    out = np.zeros((len(boxes), geometry.original_height, geometry.original_width), bool)
    for i, box in enumerate(boxes):
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        x1 = min(math.ceil(box[2]), geometry.original_width)
        y1 = min(math.ceil(box[3]), geometry.original_height)
        if x1 <= x0 or y1 <= y0:
            continue
        source = ((x0 * geometry.scale_x + geometry.offset_x) / stride_x,
                  (y0 * geometry.scale_y + geometry.offset_y) / stride_y,
                  (x1 * geometry.scale_x + geometry.offset_x) / stride_x,
                  (y1 * geometry.scale_y + geometry.offset_y) / stride_y)
        region = Image.fromarray(logits[i], mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR,
                                                             box=source)
        out[i, y0:y1, x0:x1] = np.asarray(region) > cut
    return out


def coco_results(det: Detections, image_id: int, category_ids: list[int]) -> dict[str, list[dict]]:
    res: dict[str, list[dict]] = {"bbox": [], "segm": [], "keypoints": []}
    for k in range(len(det.scores)):
        x1, y1, x2, y2 = (float(v) for v in det.boxes[k])
        base = {"image_id": image_id, "category_id": int(category_ids[det.classes[k]]), "score": float(det.scores[k])}
        res["bbox"].append({**base, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if det.masks is not None:
            rle = mask_utils.encode(np.asfortranarray(det.masks[k].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            res["segm"].append({**base, "segmentation": rle})
        if det.keypoints is not None:
            kp = det.keypoints[k].copy()
            res["keypoints"].append({**base, "keypoints": [float(v) for v in kp.reshape(-1)],
                                     "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return res


def coco_from_dict(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_map(gt: COCO, results: list[dict], iou_type: str, cat_ids: list[int] | None = None) -> tuple[float, float]:
    """(AP@0.5, AP@[.5:.95]) from pycocotools; 0 when there are no detections."""
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        if iou_type == "keypoints":
            joints = len(results[0]["keypoints"]) // 3
            ev.params.kpt_oks_sigmas = np.full(joints, OKS_SIGMA)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(max(ev.stats[1], 0.0)), float(max(ev.stats[0], 0.0))
