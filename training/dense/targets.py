"""Target assignment and losses for the FCOS-style dense head (one candidate per stride-8 cell)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def assign(centres: torch.Tensor, boxes: torch.Tensor, stride: int, radius: float = 1.5) -> torch.Tensor:
    """centres [N, 2], boxes [M, 4] (x1, y1, x2, y2) -> [N] index of the assigned box, -1 for background.

    A cell is positive for a box when its centre lies inside the box and within `radius` strides of the box
    centre (per axis; FCOS centre sampling); a cell claimed by several boxes goes to the smallest. A box that
    no cell is left for (a sliver, or one whose cells all went to smaller boxes) gets the cell nearest its
    centre, so every object is learnt.
    """
    valid = torch.ones(1, boxes.shape[0], dtype=torch.bool)
    return assign_batch(centres, boxes[None], valid, stride, radius)[0]


def assign_batch(centres: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, stride: int,
                 radius: float = 1.5) -> torch.Tensor:
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
    counts = torch.zeros(b, m + 1, dtype=torch.long).scatter_add_(1, idx + 1, torch.ones_like(idx))[:, 1:]
    missing = torch.nonzero((counts == 0) & valid)
    if len(missing):
        bc = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, M, 2]
        for bi, k in missing.tolist():
            d = ((centres - bc[bi, k]) ** 2).sum(1)
            idx[bi, int(d.argmin())] = k
    return idx


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise IoU and GIoU of boxes a [K, 4] and b [K, 4]."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    elt, erb = torch.min(a[:, :2], b[:, :2]), torch.max(a[:, 2:], b[:, 2:])
    enclose = (erb - elt).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (enclose - union) / enclose


# Mask targets are the fraction of each prototype pixel the object covers, times this gain and clipped to 1:
# a prototype pixel counts as inside once a quarter of it is covered. With plain coverage, the thin limbs of
# stick figures (2-4 input pixels wide, narrower than a stride-4 prototype pixel) stay below 0.5 and vanish;
# an oracle with perfect stride-4 prototypes scores mask mAP@0.5 0.84 with plain coverage and 1.0 with this.
MASK_TARGET_GAIN = 2.0

WEIGHTS = {"box": 2.0, "l1": 0.5, "kpt": 4.0, "kpt_coarse": 2.0, "vis": 0.5, "mask": 2.0}


def dense_loss(model, raw: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
               weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Quality focal loss on classes (target = IoU of the predicted box for positives), GIoU + L1 on boxes,
    L1 + visibility BCE on joints, per-pixel BCE inside the box on masks. Returns the parts and `total`,
    each normalised by the number of positive cells."""
    cfg = model.config
    stride = cfg.stride
    boxes_pred = model.decode_boxes(raw["box"])  # [B, N, 4]
    labels = batch["labels"]
    idx = assign_batch(model.centres, batch["boxes"], labels >= 0, stride)  # [B, N]
    pos = idx >= 0
    g = idx.clamp(min=0)
    bsel = torch.arange(idx.shape[0])[:, None].expand_as(idx)
    num_pos = max(1, int(pos.sum()))
    out: dict[str, torch.Tensor] = {}
    tb = batch["boxes"][bsel, g][pos]  # [P, 4]
    pb = boxes_pred[pos]
    iou, giou = box_iou_pairs(pb, tb)
    cls_target = torch.zeros_like(raw["cls"])
    pos_b, pos_n = torch.nonzero(pos, as_tuple=True)
    cls_target[pos_b, pos_n, labels[bsel, g][pos]] = iou.detach().clamp(min=0.01)
    p = torch.sigmoid(raw["cls"])
    qfl = F.binary_cross_entropy_with_logits(raw["cls"], cls_target, reduction="none") * (p - cls_target).abs() ** 2
    out["cls"] = qfl.sum() / num_pos
    out["box"] = (1 - giou).sum() / num_pos
    out["l1"] = ((pb - tb).abs() / stride).sum() / num_pos
    weights = {**WEIGHTS, **(weights or {})}
    if "kpt" in raw:
        kt = batch["keypoints"][bsel, g][pos]  # [P, J, 3]
        kr = raw["kpt"][pos]
        xy = model.centres[pos_n][:, None, :] + kr[..., :2] * stride
        has = (kt[..., 2] > 0).float()
        joints = kt.shape[1]
        coarse = (((xy - kt[..., :2]).abs().sum(-1) / stride) * has).sum() / joints / num_pos
        if "kref" in raw:  # refined joints carry the loss; the coarse ones keep half of it as a guide
            fine = xy.detach() + raw["kref"][pos]
            out["kpt"] = (((fine - kt[..., :2]).abs().sum(-1) / stride) * has).sum() / joints / num_pos
            out["kpt_coarse"] = coarse
        else:
            out["kpt"] = coarse
        out["vis"] = F.binary_cross_entropy_with_logits(
            kr[..., 2], (kt[..., 2] == 2).float(), reduction="sum") / joints / num_pos
    if "proto" in raw:
        ph, pw = raw["proto"].shape[-2:]
        ps = cfg.prototype_stride
        ys = (torch.arange(ph, dtype=torch.float32) + 0.5) * ps
        xs = (torch.arange(pw, dtype=torch.float32) + 0.5) * ps
        total = raw["cls"].new_zeros(())
        coef = raw["coef"][pos]  # [P, K]
        target_all = (batch["masks"][bsel, g][pos] * MASK_TARGET_GAIN).clamp(max=1.0)  # [P, h, w]
        for i in range(idx.shape[0]):
            sel = pos_b == i
            if not sel.any():
                continue
            logits = torch.einsum("kp,phw->khw", coef[sel], raw["proto"][i])
            box = tb[sel]
            inb = ((xs[None, None, :] >= box[:, None, None, 0]) & (xs[None, None, :] <= box[:, None, None, 2])
                   & (ys[None, :, None] >= box[:, None, None, 1]) & (ys[None, :, None] <= box[:, None, None, 3]))
            inb = inb.float()
            bce = F.binary_cross_entropy_with_logits(logits, target_all[sel], reduction="none")
            total = total + ((bce * inb).sum((1, 2)) / inb.sum((1, 2)).clamp(min=1)).sum()
        out["mask"] = total / num_pos
    out["total"] = out["cls"] + sum(weights[k] * v for k, v in out.items() if k != "cls")
    return out
