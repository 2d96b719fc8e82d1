"""Target assignment and losses of the FCOS-style dense model (training.models.detector): one candidate per
stride-8 cell, boxes, classes, and per task instance masks (prototypes) or joints.

The loss reads the model's training-mode outputs (`DenseModel.forward` in train mode: undecoded heads plus
the decoded boxes and coarse joints), so it is computed from what the module's forward returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensors = dict[str, torch.Tensor]

CENTRE_RADIUS = 1.5  # FCOS centre sampling: positives lie within this many strides of the box centre, per axis
QFL_MIN_TARGET = 0.01  # a positive's soft class target never drops to 0, even when its box misses entirely

# Mask targets are the fraction of each prototype pixel the object covers, times this gain and clipped to 1:
# a prototype pixel counts as inside once a quarter of it is covered (with the 0.5 decoding threshold). With
# plain coverage, the thin limbs of stick figures (2-4 input pixels wide, narrower than a stride-4 prototype
# pixel) stay below 0.5 and vanish; an oracle with perfect stride-4 prototypes scores mask AP@0.5 0.84 with
# plain coverage and 1.0 with this.
MASK_TARGET_GAIN = 2.0

# Weights of each loss part relative to the class loss (weight 1); "kpt" and "kpt_coarse" are set from the
# training config's kpt_weight (training.tasks.dense.loss_weights).
LOSS_WEIGHTS = {"box": 2.0, "l1": 0.5, "kpt": 4.0, "kpt_coarse": 2.0, "vis": 0.5, "mask": 2.0}


@dataclass(frozen=True)
class HeadGeometry:
    """Where the candidates are: cell centres [N, 2] in input pixels, row-major, and the strides."""

    centres: torch.Tensor
    stride: int
    prototype_stride: int


def assign(centres: torch.Tensor, boxes: torch.Tensor, stride: int, radius: float = CENTRE_RADIUS) -> torch.Tensor:
    """centres [N, 2], boxes [M, 4] (x1, y1, x2, y2) -> [N] index of the assigned box, -1 for background.

    A cell is positive for a box when its centre lies inside the box and within `radius` strides of the box
    centre (per axis; FCOS centre sampling); a cell claimed by several boxes goes to the smallest. A box that
    no cell is left for (a sliver, or one whose cells all went to smaller boxes) gets the cell nearest its
    centre, so every object is learnt.
    """
    valid = torch.ones(1, boxes.shape[0], dtype=torch.bool)
    return assign_batch(centres, boxes[None], valid, stride, radius)[0]


def assign_batch(centres: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, stride: int,
                 radius: float = CENTRE_RADIUS) -> torch.Tensor:
    """Batched `assign`: boxes [B, M, 4] with valid [B, M] (padding False) -> [B, N]."""
    b, m = valid.shape
    n = centres.shape[0]
    if m == 0:
        return torch.full((b, n), -1, dtype=torch.long)
    cx, cy = centres[None, :, 0:1], centres[None, :, 1:2]  # [1, N, 1]
    x1, y1, x2, y2 = (boxes[:, None, :, k] for k in range(4))  # [B, 1, M]
    inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
    near = ((cx - (x1 + x2) / 2).abs() < radius * stride) & ((cy - (y1 + y2) / 2).abs() < radius * stride)
    ok = inside & near & valid[:, None, :]
    area = ((x2 - x1) * (y2 - y1)).expand(b, n, m)
    cost = torch.where(ok, area, torch.full_like(area, float("inf")))
    best, idx = cost.min(2)
    idx = torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))
    give_nearest_cell_to_unassigned(idx, centres, boxes, valid)
    return idx


def give_nearest_cell_to_unassigned(idx: torch.Tensor, centres: torch.Tensor, boxes: torch.Tensor,
                                    valid: torch.Tensor) -> None:
    """In place: every valid box without a cell in idx [B, N] takes the cell nearest its centre."""
    b, m = valid.shape
    counts = torch.zeros(b, m + 1, dtype=torch.long).scatter_add_(1, idx + 1, torch.ones_like(idx))[:, 1:]
    missing = torch.nonzero((counts == 0) & valid)
    if not len(missing):
        return
    box_centres = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, M, 2]
    for bi, k in missing.tolist():
        distances = ((centres - box_centres[bi, k]) ** 2).sum(1)
        idx[bi, int(distances.argmin())] = k


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise IoU and GIoU of boxes a [K, 4] and b [K, 4] (training targets, not decoding)."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    elt, erb = torch.min(a[:, :2], b[:, :2]), torch.max(a[:, 2:], b[:, 2:])
    enclose = (erb - elt).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (enclose - union) / enclose


@dataclass(frozen=True)
class Positives:
    """The assignment of one batch: which candidates are positive and the object each one learns."""

    mask: torch.Tensor  # [B, N] bool
    image: torch.Tensor  # [P] batch index of each positive
    cell: torch.Tensor  # [P] candidate index of each positive
    target: torch.Tensor  # [P] object index (into the batch's padded objects) of each positive

    @property
    def count(self) -> int:
        """Loss normaliser: at least 1, so a batch of empty images has finite (zero-box) losses."""
        return max(1, int(self.mask.sum()))

    def gather(self, per_object: torch.Tensor) -> torch.Tensor:
        """[B, M, ...] per padded object -> [P, ...] for each positive."""
        return per_object[self.image, self.target]


def positives_of(geometry: HeadGeometry, batch: Tensors) -> Positives:
    idx = assign_batch(geometry.centres, batch["boxes"], batch["labels"] >= 0, geometry.stride)
    mask = idx >= 0
    image, cell = torch.nonzero(mask, as_tuple=True)
    return Positives(mask, image, cell, idx[image, cell])


def dense_loss(outputs: Tensors, batch: Tensors, geometry: HeadGeometry,
               weights: dict[str, float] | None = None) -> Tensors:
    """Quality focal loss on classes (target = IoU of the predicted box for positives), GIoU + L1 on boxes,
    L1 + visibility BCE on joints, per-pixel BCE inside the box on masks. `outputs`: the model's
    training-mode forward. Returns the parts and "total" (weighted sum), each normalised by the number of
    positive cells."""
    weights = {**LOSS_WEIGHTS, **(weights or {})}
    positives = positives_of(geometry, batch)
    target_boxes = positives.gather(batch["boxes"])  # [P, 4]
    out = class_and_box_losses(outputs, batch, positives, target_boxes, geometry.stride)
    if "kpt" in outputs:
        out.update(joint_losses(outputs, batch, positives, geometry.stride))
    if "proto" in outputs:
        out["mask"] = mask_loss(outputs, batch, positives, target_boxes, geometry.prototype_stride)
    out["total"] = out["cls"] + sum(weights[k] * v for k, v in out.items() if k != "cls")
    return out


def class_and_box_losses(outputs: Tensors, batch: Tensors, positives: Positives, target_boxes: torch.Tensor,
                         stride: int) -> Tensors:
    """Quality focal loss: a positive's class target is its predicted box's IoU with its object, so scores
    rank boxes by localisation quality (what mAP@[.5:.95] and NMS reward); GIoU and L1 (in strides) on boxes."""
    logits = outputs["cls"]
    predicted = outputs["boxes"][positives.image, positives.cell]  # [P, 4]
    iou, giou = box_iou_pairs(predicted, target_boxes)
    soft_target = torch.zeros_like(logits)
    labels = positives.gather(batch["labels"])
    soft_target[positives.image, positives.cell, labels] = iou.detach().clamp(min=QFL_MIN_TARGET)
    probability = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, soft_target, reduction="none")
    n = positives.count
    return {
        "cls": (bce * (probability - soft_target).abs() ** 2).sum() / n,
        "box": (1 - giou).sum() / n,
        "l1": ((predicted - target_boxes).abs() / stride).sum() / n,
    }


def joint_losses(outputs: Tensors, batch: Tensors, positives: Positives, stride: int) -> Tensors:
    """L1 (in strides, labelled joints only: visibility 1 or 2) on the refined joints, the coarse ones as a
    guide at half weight; BCE on visibility with visible (2) as the positive class."""
    targets = positives.gather(batch["keypoints"])  # [P, J, 3]
    coarse = outputs["kpt_xy"][positives.image, positives.cell]  # [P, J, 2]
    labelled = (targets[..., 2] > 0).float()
    joints, n = targets.shape[1], positives.count

    def l1(xy: torch.Tensor) -> torch.Tensor:
        return (((xy - targets[..., :2]).abs().sum(-1) / stride) * labelled).sum() / joints / n

    visibility_logits = outputs["kpt"][positives.image, positives.cell][..., 2]
    out = {"vis": F.binary_cross_entropy_with_logits(visibility_logits, (targets[..., 2] == 2).float(),
                                                     reduction="sum") / joints / n}
    if "kref" in outputs:  # the refinement learns the residual; the coarse stage keeps half of the loss
        out["kpt"] = l1(coarse.detach() + outputs["kref"][positives.image, positives.cell])
        out["kpt_coarse"] = l1(coarse)
    else:
        out["kpt"] = l1(coarse)
    return out


def mask_loss(outputs: Tensors, batch: Tensors, positives: Positives, target_boxes: torch.Tensor,
              prototype_stride: int) -> torch.Tensor:
    """BCE of sigmoid(coefficients @ prototypes) against the (gained) coverage target, inside the object's
    box only: the service crops masks to their boxes when decoding, so outside it nothing is learnt."""
    prototypes = outputs["proto"]  # [B, K, h, w]
    h, w = prototypes.shape[-2:]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) * prototype_stride
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) * prototype_stride
    coefficients = outputs["coef"][positives.image, positives.cell]  # [P, K]
    targets = (positives.gather(batch["masks"]) * MASK_TARGET_GAIN).clamp(max=1.0)  # [P, h, w]
    total = prototypes.new_zeros(())
    for i in positives.image.unique().tolist():
        sel = positives.image == i
        logits = torch.einsum("pk,khw->phw", coefficients[sel], prototypes[i])
        box = target_boxes[sel][:, :, None, None]  # [p, 4, 1, 1]
        inside = ((xs >= box[:, 0]) & (xs <= box[:, 2]) & (ys[:, None] >= box[:, 1]) & (ys[:, None] <= box[:, 3]))
        inside = inside.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets[sel], reduction="none")
        total = total + ((bce * inside).sum((1, 2)) / inside.sum((1, 2)).clamp(min=1)).sum()
    return total / positives.count
