"""COCO metrics (pycocotools) of a dense model's served answers.

The answers come from `training.decoding` (the service's own decoder, as an HTTP request without parameters
gets them: score >= 0.25, class-aware NMS at IoU 0.45, at most 100, boxes and joints in original pixels,
masks cropped to their boxes); this module only turns them into COCO results and scores them.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from service.results import Detections
from training.decoding import full_mask

OKS_SIGMA = 0.05


def coco_results(det: Detections, image_id: int, category_ids: list[int], height: int,
                 width: int) -> dict[str, list[dict]]:
    """One image's detections as COCO result entries: "bbox", and "segm" / "keypoints" when it has them."""
    res: dict[str, list[dict]] = {"bbox": [], "segm": [], "keypoints": []}
    for k in range(len(det)):
        x1, y1, x2, y2 = (float(v) for v in det.boxes[k])
        base = {"image_id": image_id, "category_id": int(category_ids[det.class_ids[k]]), "score": float(det.scores[k])}
        res["bbox"].append({**base, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if det.masks is not None:
            res["segm"].append({**base, "segmentation": compressed_rle(full_mask(det.masks[k], height, width))})
        if det.keypoints is not None:
            res["keypoints"].append({**base, "keypoints": [float(v) for v in det.keypoints[k].reshape(-1)],
                                     "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return res


def compressed_rle(mask: np.ndarray) -> dict:
    """[H, W] bool -> pycocotools' compressed RLE with a str `counts` (what loadRes reads)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


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
