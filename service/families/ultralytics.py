"""Ultralytics YOLO ONNX exports, served with nothing beside the file.

Recognised from their own `metadata_props` (Python literals, read with `ast.literal_eval`) and output
shapes; preprocessed and decoded as Ultralytics' predictor does for that file (tests/fixtures/ultralytics
holds its own answers, and the tests compare against them):
- letterbox with OpenCV's bilinear resize (no antialiasing), grey 114, centred; a dynamic-shape file gets
  the minimal rectangle (padding only to a multiple of the stride); classify: torchvision's Resize + CenterCrop
  on the RGB image, no normalisation;
- candidates `[B, 4 + nc + extra, N]` (cx, cy, w, h in input pixels; sigmoid scores): score > conf (strict),
  best class, class-aware NMS, max_det; end-to-end files `[B, max_det, 6 + extra]` are only filtered;
- masks: coefficients x prototypes, cropped to the box at prototype resolution, bilinear upsample to the
  input, > 0, cropped to the box; then the letterbox undone with a bilinear resize and > 0.5; an empty
  mask drops its instance (box too);
- keypoints decoded in the graph (x, y, visibility); oriented boxes NMS-ed with probabilistic IoU.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from service.contract import (
    DetectionSpec,
    InputSpec,
    KeypointSpec,
    MaskSpec,
    ModelMetadata,
    OutputSpec,
    ResizePolicy,
    Task,
)
from service.families.base import ClassifyQuery, Query, ServedModel, top_k
from service.preprocess import Geometry
from service.results import Detections, TaskResult, rotated_corners
from service.tasks import rotated as rotated_boxes
from service.tasks.detection import DetectionQuery, best_class_candidates, select_detections
from service.tasks.geometry import boxes_to_original, clip_to_image, points_to_original
from service.tasks.masks import LocalMask

# Ultralytics' own predictor defaults (ultralytics/cfg/default.yaml).
DEFAULT_CONFIDENCE, DEFAULT_IOU, DEFAULT_MAX_DET = 0.25, 0.7, 300
MAX_NMS_CANDIDATES = 30_000  # Ultralytics keeps at most this many candidates (by score) before NMS
CLASS_OFFSET = 7680.0  # Ultralytics' max_wh: rotated boxes of different classes are moved this far apart
LETTERBOX_GREY = 114
PROTOTYPES = 32

TASKS = {
    "detect": Task.DETECTION,
    "obb": Task.DETECTION,
    "segment": Task.INSTANCE_SEGMENTATION,
    "pose": Task.KEYPOINTS,
    "classify": Task.CLASSIFICATION,
}

COCO_KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle"]
COCO_SKELETON = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)]


class NotUltralytics(ValueError):
    """The file's metadata is not an Ultralytics export's."""


def is_ultralytics(props: Mapping[str, str]) -> bool:
    return {"task", "names", "imgsz", "stride"} <= set(props) and props["task"].strip() in TASKS


def _literal(props: Mapping[str, str], key: str, default: Any = None) -> Any:
    raw = props.get(key)
    if raw is None:
        return default
    try:
        return ast.literal_eval(raw)  # never eval: the file may come from anywhere
    except (ValueError, SyntaxError) as exc:
        raise NotUltralytics(f"metadata key '{key}' is not a Python literal: {raw[:60]!r}") from exc


class UltralyticsModel(ServedModel):
    family = "ultralytics"
    allows_jpeg_draft = False  # Ultralytics decodes at full size; DCT scaling would change the answers

    def __init__(self, metadata: ModelMetadata, source: str, *, yolo_task: str, end2end: bool,
                 extra: int) -> None:
        super().__init__(metadata, source)
        self.yolo_task = yolo_task
        self.end2end = end2end
        self.extra = extra  # columns after the class scores: mask coefficients, K*3 keypoints or the angle

    # Preprocessing is the shared one: the contract says letterbox (cv2, grey 114, minimal rectangle for
    # dynamic shapes) or centre crop, and its geometry (a gain per axis, pad = round(margin / 2 - 0.1)) is
    # exactly Ultralytics' scale_boxes.

    # --- decoding ---------------------------------------------------------------------------------

    def decode(self, outputs: list[np.ndarray], geometry: Geometry, query: Query) -> TaskResult:
        if self.yolo_task == "classify":
            assert isinstance(query, ClassifyQuery)
            return top_k(outputs[0], query.top_k)
        assert isinstance(query, DetectionQuery)
        if self.yolo_task == "obb":
            return self._oriented(outputs[0], geometry, query)
        rows, boxes_xyxy, scores = self._candidates(outputs[0])
        if self.end2end:
            chosen = _end2end_selection(rows, query)
            boxes_in, kept_scores, class_ids = boxes_xyxy[chosen], rows[chosen, 4], rows[chosen, 5].astype(np.int64)
        else:
            found = select_detections(boxes_xyxy, scores, geometry, query, strict=True)
            chosen, boxes_in, kept_scores, class_ids = found.indices, found.boxes_input, found.scores, found.class_ids
        extras = rows[chosen, rows.shape[1] - self.extra:] if self.extra else None
        boxes = boxes_to_original(boxes_in, geometry)
        masks = keypoints = None
        if self.yolo_task == "segment":
            assert extras is not None
            masks, kept = prototype_masks(extras, outputs[1], boxes_in, geometry)
            masks = [m for m, k in zip(masks, kept, strict=True) if k]  # Ultralytics drops empty masks
            boxes, kept_scores, class_ids = boxes[kept], kept_scores[kept], class_ids[kept]
        if self.yolo_task == "pose":
            assert extras is not None
            keypoints = _keypoints_to_original(extras.reshape(len(chosen), self.extra // 3, 3), geometry)
        return Detections(boxes=boxes, scores=np.asarray(kept_scores, dtype=np.float64), class_ids=class_ids,
                          masks=masks, keypoints=keypoints)

    def _candidates(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's output -> (rows [N, columns], boxes x1y1x2y2 in input pixels, class scores [N, nc])."""
        nc = len(self.metadata.labels)
        if self.end2end:
            rows = output.astype(np.float32)  # [max_det, 6 + extra]: x1, y1, x2, y2, score, class, extra
            return rows, rows[:, :4].astype(np.float64), rows[:, 4:5]
        rows = output.T.astype(np.float32)  # [N, 4 + nc + extra]
        return rows, xywh_to_xyxy(rows[:, :4].astype(np.float64)), rows[:, 4 : 4 + nc]

    def _oriented(self, output: np.ndarray, geometry: Geometry, query: DetectionQuery) -> Detections:
        nc = len(self.metadata.labels)
        if self.end2end:  # [max_det, 7]: cx, cy, w, h, score, class, angle
            rows = output.astype(np.float64)
            chosen = _end2end_selection(rows, query)
            xywhr = np.concatenate([rows[chosen, :4], rows[chosen, 6:7]], axis=1)
            scores, class_ids = rows[chosen, 4], rows[chosen, 5].astype(np.int64)
        else:  # [4 + nc + 1, N]: cx, cy, w, h, class scores, angle
            rows = output.T.astype(np.float64)
            candidates, class_ids, scores = best_class_candidates(rows[:, 4 : 4 + nc], query, strict=True)
            candidates = candidates[np.argsort(-scores[candidates], kind="stable")][:MAX_NMS_CANDIDATES]
            xywhr = np.concatenate([rows[candidates, :4], rows[candidates, -1:]], axis=1)
            shifted = xywhr.copy()
            if not query.agnostic:  # classes apart, as Ultralytics does: offset the centres by class
                shifted[:, :2] += class_ids[candidates, None] * CLASS_OFFSET
            order = rotated_boxes.rotated_nms(shifted, scores[candidates], query.iou)[: query.max_detections]
            chosen = candidates[order]
            xywhr, scores, class_ids = xywhr[order], scores[chosen], class_ids[chosen]
        # Back to original pixels as Ultralytics' scale_boxes(xywh=True): pad off the centre, each axis
        # divided by its gain, no clipping, the angle as the head gave it.
        xywhr[:, 0] = (xywhr[:, 0] - geometry.offset_x) / geometry.scale_x
        xywhr[:, 1] = (xywhr[:, 1] - geometry.offset_y) / geometry.scale_y
        xywhr[:, 2] /= geometry.scale_x
        xywhr[:, 3] /= geometry.scale_y
        corners = rotated_corners(xywhr)
        enclosing = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1) if len(xywhr) else \
            np.zeros((0, 4))
        return Detections(boxes=clip_to_image(enclosing, geometry), scores=np.asarray(scores, dtype=np.float64),
                          class_ids=np.asarray(class_ids, dtype=np.int64), rotated=xywhr)


def _end2end_selection(rows: np.ndarray, query: DetectionQuery) -> np.ndarray:
    keep = rows[:, 4] > query.confidence
    if query.classes is not None:
        keep &= np.isin(rows[:, 5].astype(np.int64), list(query.classes))
    return np.flatnonzero(keep)[: query.max_detections]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.empty_like(boxes)
    out[:, :2] = boxes[:, :2] - boxes[:, 2:] / 2
    out[:, 2:] = boxes[:, :2] + boxes[:, 2:] / 2
    return out


def _keypoints_to_original(keypoints: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[M, K, 3] input-pixel joints -> original pixels, clipped to the image as Ultralytics clips them."""
    out = keypoints.astype(np.float64).copy()
    out[..., :2] = clip_to_image(points_to_original(out[..., :2], geometry), geometry)
    return out


def prototype_masks(coefficients: np.ndarray, prototypes: np.ndarray, boxes_input: np.ndarray,
                    geometry: Geometry) -> tuple[list[LocalMask], np.ndarray]:
    """Ultralytics' two-stage masks, computed only around each box.

    Stage 1 (input space, `process_mask`): logits = coefficients @ prototypes, bilinearly upsampled to the
    input size (align_corners=False), > 0, then cropped to the input-space box (pixel index x1 <= c < x2).
    Stage 2 (`scale_masks`): the letterbox padding cut off, the binary mask resized bilinearly to the
    original size, > 0.5. Both resamplings are evaluated at exactly the pixels the full-size versions would
    compute, but only in each box's neighbourhood, so memory follows the boxes, not the photo.
    Returns the masks and, per mask, whether it has any pixel at input scale (Ultralytics drops the others).
    """
    count, proto_h, proto_w = prototypes.shape
    in_w, in_h = geometry.input_width, geometry.input_height
    flat = prototypes.reshape(count, -1).astype(np.float32)
    # The image's part of the input (what scale_masks keeps) and its size there.
    left, top = int(geometry.offset_x), int(geometry.offset_y)
    kept_w = max(1, round(geometry.original_width * geometry.scale_x))
    kept_h = max(1, round(geometry.original_height * geometry.scale_y))
    to_kept_x, to_kept_y = kept_w / geometry.original_width, kept_h / geometry.original_height
    masks, nonempty = [], []
    for coeffs, box in zip(coefficients.astype(np.float32), boxes_input, strict=True):
        # Original pixels whose value can be non-zero: the box mapped back, grown by a pixel of the input.
        x0 = max(0, math.floor((box[0] - 1 - left) / to_kept_x))
        y0 = max(0, math.floor((box[1] - 1 - top) / to_kept_y))
        x1 = min(geometry.original_width, math.ceil((box[2] + 1 - left) / to_kept_x) + 1)
        y1 = min(geometry.original_height, math.ceil((box[3] + 1 - top) / to_kept_y) + 1)
        if x1 <= x0 or y1 <= y0:
            masks.append(LocalMask(np.zeros((0, 0), dtype=bool), x0, y0))
            nonempty.append(False)
            continue
        # Stage 2 reads the kept part at u = (x + 0.5) * kept / original - 0.5 (edges replicated).
        u = np.clip((np.arange(x0, x1) + 0.5) * to_kept_x - 0.5, 0, kept_w - 1) + left
        v = np.clip((np.arange(y0, y1) + 0.5) * to_kept_y - 0.5, 0, kept_h - 1) + top
        cols = np.arange(math.floor(u[0]), min(left + kept_w - 1, math.floor(u[-1]) + 1) + 1)
        rows = np.arange(math.floor(v[0]), min(top + kept_h - 1, math.floor(v[-1]) + 1) + 1)
        # Stage 1 at those input pixels only.
        logits = (coeffs @ flat).reshape(proto_h, proto_w)
        px = np.clip((cols + 0.5) * (proto_w / in_w) - 0.5, 0, None)
        py = np.clip((rows + 0.5) * (proto_h / in_h) - 0.5, 0, None)
        inside = ((rows >= box[1]) & (rows < box[3]))[:, None] & ((cols >= box[0]) & (cols < box[2]))[None, :]
        binary = ((_bilinear(logits, px, py) > 0) & inside).astype(np.float32)
        values = _bilinear(binary, u - cols[0], v - rows[0])
        masks.append(LocalMask(values > 0.5, x0, y0))
        nonempty.append(bool(binary.any()))  # the cols/rows span covers the whole box at input scale
    return masks, np.asarray(nonempty, dtype=bool)


def _bilinear(grid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sample `grid` at the outer product of fractional columns `xs` and rows `ys` (edges replicated)."""
    h, w = grid.shape
    xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (xs - x0)[None, :], (ys - y0)[:, None]
    top = grid[np.ix_(y0, x0)] * (1 - fx) + grid[np.ix_(y0, x1)] * fx
    bottom = grid[np.ix_(y1, x0)] * (1 - fx) + grid[np.ix_(y1, x1)] * fx
    return top * (1 - fy) + bottom * fy


# --- recognising a file ---------------------------------------------------------------------------


def ultralytics_model(props: Mapping[str, str], input_shape: list[Any], output_shapes: list[list[Any]],
                      output_names: list[str], source: str, version: str) -> UltralyticsModel:
    """The contract an Ultralytics export implies, from its metadata and its graph's shapes."""
    yolo_task = props["task"].strip()
    names = _literal(props, "names", {})
    if not isinstance(names, dict) or not names:
        raise NotUltralytics("metadata key 'names' is not a non-empty {id: name} dict")
    labels = [str(names[k]) for k in sorted(names)]
    imgsz = _literal(props, "imgsz", [640, 640])
    height, width = (imgsz, imgsz) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    stride = int(_literal(props, "stride", 32))
    args = _literal(props, "args", {}) or {}
    kpt_shape = _literal(props, "kpt_shape")
    dynamic_hw = any(not isinstance(d, int) for d in input_shape[2:4])
    channels = input_shape[1] if isinstance(input_shape[1], int) else 3
    if channels != 3:
        raise NotUltralytics(f"only 3-channel Ultralytics exports are served; this one has {channels}")
    end2end = bool(_literal(props, "end2end", False)) or bool(args.get("nms", False))
    first = output_shapes[0]
    if not end2end and yolo_task != "classify" and len(first) == 3 and isinstance(first[2], int) and \
            isinstance(first[1], int) and first[2] <= 7 + (kpt_shape[0] * kpt_shape[1] if kpt_shape else PROTOTYPES):
        end2end = True  # [B, max_det, 6 + extra]: NMS-free head exported without the metadata flag
    extra = {"segment": PROTOTYPES, "obb": 1, "pose": kpt_shape[0] * kpt_shape[1] if kpt_shape else 0}.get(yolo_task, 0)
    if yolo_task == "pose" and (not kpt_shape or kpt_shape[1] != 3):
        raise NotUltralytics(f"pose export with kpt_shape {kpt_shape}; only [K, 3] (x, y, visibility) is served")

    task = TASKS[yolo_task]
    if task is Task.CLASSIFICATION:
        spec = InputSpec(name="images", height=height, width=width, channels=3, resize=ResizePolicy.CENTER_CROP,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dynamic_batch=not isinstance(input_shape[0], int))
        outputs = [OutputSpec(name=output_names[0], layout="batch,class", kind="probabilities")]
    else:
        spec = InputSpec(name="images", height=height, width=width, channels=3, resize=ResizePolicy.LETTERBOX,
                         antialias=False, pad_value=LETTERBOX_GREY, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                         pad_to_stride=stride if dynamic_hw else None,
                         dynamic_batch=not isinstance(input_shape[0], int))
        kind = "yolo_end2end" if end2end else "yolo_candidates"
        layout = "batch,candidate,column" if end2end else "batch,column,candidate"
        outputs = [OutputSpec(name=output_names[0], layout=layout, kind=kind)]
        if yolo_task == "segment":
            outputs.append(OutputSpec(name=output_names[1], layout="batch,prototype,height,width",
                                      kind="mask_prototypes"))
    sections: dict[str, Any] = {}
    if task is not Task.CLASSIFICATION:
        sections["detection"] = DetectionSpec(strides=[stride], confidence=DEFAULT_CONFIDENCE, iou=DEFAULT_IOU,
                                              max_detections=DEFAULT_MAX_DET, rotated=yolo_task == "obb")
    if yolo_task == "segment":
        sections["masks"] = MaskSpec(prototype_stride=4, prototypes=PROTOTYPES)
    if yolo_task == "pose":
        sections["keypoints"] = _keypoint_spec(kpt_shape[0], _literal(props, "kpt_names"))
    metadata = ModelMetadata(
        task=task, labels=labels, input=spec, outputs=outputs, model_version=version,
        architecture=str(props.get("description", "Ultralytics YOLO")),
        training_data=f"Ultralytics export (ultralytics {props.get('version', '?')}, {props.get('date', '?')})",
        **sections,
    )
    return UltralyticsModel(metadata, source, yolo_task=yolo_task, end2end=end2end, extra=extra)


def _keypoint_spec(joints: int, kpt_names: Any) -> KeypointSpec:
    names: list[str] | None = None
    if isinstance(kpt_names, dict) and kpt_names:  # {class id: [names]}; one class per pose model here
        names = [str(n) for n in next(iter(kpt_names.values()))]
    elif isinstance(kpt_names, list | tuple):
        names = [str(n) for n in kpt_names]
    if names is not None and len(names) == joints:
        skeleton = COCO_SKELETON if names == COCO_KEYPOINTS else []
        return KeypointSpec(names=names, skeleton=skeleton)
    if joints == len(COCO_KEYPOINTS):
        return KeypointSpec(names=COCO_KEYPOINTS, skeleton=COCO_SKELETON)
    return KeypointSpec(names=[f"kp{i}" for i in range(joints)], skeleton=[])
