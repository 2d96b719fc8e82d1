"""COCO images and annotations -> model-input tensors and targets, through the service's `prepare`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from service.contract import InputSpec, Interpolation, ResizePolicy
from service.preprocess import Geometry, prepare


def default_input_spec(size: int = 128) -> InputSpec:
    return InputSpec(
        name="images", height=size, width=size, channels=3, resize=ResizePolicy.LETTERBOX,
        interpolation=Interpolation.BILINEAR, pad_value=114, scale=1.0 / 255.0,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dynamic_batch=True,
    )


@dataclass
class Sample:
    x: np.ndarray  # [3, H, W] float16 model input
    boxes: np.ndarray  # [n, 4] x1, y1, x2, y2 in model-input pixels
    labels: np.ndarray  # [n] class index (0-based)
    keypoints: np.ndarray | None = None  # [n, J, 3] x, y in input pixels, COCO visibility
    masks: np.ndarray | None = None  # [n, H/s, W/s] float16 fraction of each prototype pixel covered


def input_mask(mask: np.ndarray, geometry: Geometry, stride: int) -> np.ndarray:
    """An original-resolution mask -> its letterboxed model-input coverage at prototype resolution."""
    new_w = max(1, round(geometry.original_width * geometry.scale_x))
    new_h = max(1, round(geometry.original_height * geometry.scale_y))
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.zeros((geometry.input_height, geometry.input_width), dtype=np.float32)
    top, left = int(geometry.offset_y), int(geometry.offset_x)
    canvas[top:top + new_h, left:left + new_w] = np.asarray(resized, dtype=np.float32) / 255.0
    h, w = geometry.input_height // stride, geometry.input_width // stride
    return canvas.reshape(h, stride, w, stride).mean((1, 3))


def to_sample(image: Image.Image, anns: list[dict], spec: InputSpec, class_of: dict[int, int],
              task: str, prototype_stride: int = 4, mask_of=None) -> Sample:
    """`class_of`: category id -> class index (categories not in it are skipped); `mask_of(ann)` -> bool
    mask in original pixels (instance segmentation only)."""
    x, g = prepare(image, spec)
    anns = [a for a in anns if a["category_id"] in class_of and not a.get("iscrowd", 0)]
    boxes = np.zeros((len(anns), 4), np.float32)
    for i, a in enumerate(anns):
        bx, by, bw, bh = a["bbox"]
        boxes[i] = [bx * g.scale_x + g.offset_x, by * g.scale_y + g.offset_y,
                    (bx + bw) * g.scale_x + g.offset_x, (by + bh) * g.scale_y + g.offset_y]
    labels = np.array([class_of[a["category_id"]] for a in anns], np.int64)
    sample = Sample(x.astype(np.float16), boxes, labels)
    if task == "keypoints":
        kps = np.zeros((len(anns), 0, 3), np.float32)
        if anns:
            kps = np.array([a.get("keypoints", []) for a in anns], np.float32).reshape(len(anns), -1, 3)
            kps[..., 0] = kps[..., 0] * g.scale_x + g.offset_x
            kps[..., 1] = kps[..., 1] * g.scale_y + g.offset_y
            kps[kps[..., 2] <= 0] = 0.0  # unlabelled joints stay (0, 0, 0)
        sample.keypoints = kps
    if task == "instance_segmentation":
        h, w = spec.height // prototype_stride, spec.width // prototype_stride
        masks = np.zeros((len(anns), h, w), np.float16)
        for i, a in enumerate(anns):
            masks[i] = input_mask(mask_of(a), g, prototype_stride)
        sample.masks = masks
    return sample


def collate(samples: list[Sample], flip: np.ndarray | None = None,
            flip_pairs: list[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
    """Pad to the most objects in the batch (labels -1 mark padding); optionally mirror some samples."""
    b = len(samples)
    m = max(1, max(len(s.labels) for s in samples))
    width = samples[0].x.shape[-1]
    x = torch.from_numpy(np.stack([s.x for s in samples]).astype(np.float32))
    boxes = torch.zeros(b, m, 4)
    labels = torch.full((b, m), -1, dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    kp = samples[0].keypoints is not None
    mk = samples[0].masks is not None
    if kp:
        j = max((s.keypoints.shape[1] for s in samples if len(s.labels)), default=1)
        kps = torch.zeros(b, m, j, 3)
    if mk:
        masks = torch.zeros(b, m, *samples[0].masks.shape[1:])
    for i, s in enumerate(samples):
        n = len(s.labels)
        boxes[i, :n] = torch.from_numpy(s.boxes)
        labels[i, :n] = torch.from_numpy(s.labels)
        if kp and n:
            kps[i, :n] = torch.from_numpy(s.keypoints)
        if mk and n:
            masks[i, :n] = torch.from_numpy(s.masks.astype(np.float32))
        if flip is not None and flip[i]:
            x[i] = x[i].flip(-1)
            boxes[i, :n] = torch.stack([width - boxes[i, :n, 2], boxes[i, :n, 1],
                                        width - boxes[i, :n, 0], boxes[i, :n, 3]], -1)
            if kp and n:
                kps[i, :n, :, 0] = torch.where(kps[i, :n, :, 2] > 0, width - kps[i, :n, :, 0], kps[i, :n, :, 0])
                for a, c in flip_pairs or []:
                    kps[i, :n, [a, c]] = kps[i, :n, [c, a]]
            if mk and n:
                masks[i, :n] = masks[i, :n].flip(-1)
    out.update(x=x, boxes=boxes, labels=labels)
    if kp:
        out["keypoints"] = kps
    if mk:
        out["masks"] = masks
    return out
