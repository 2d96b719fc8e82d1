"""One small anchor-free dense model for detection, instance segmentation and keypoints (FCOS-style).

Backbone: five strided 3x3 conv-BN-ReLU stages (strides 2, 4, 8, 16) with a residual-free 3x3 after each.
Neck: the stride-16 map is upsampled and fused with the stride-8 map (a 2-level FPN collapsed to one
output level). Head: one candidate per stride-8 cell (16 x 16 = 256 candidates at 128 x 128), with a
classification tower (per-class sigmoid) and a regression tower that predicts the distances from the cell
centre to the box sides (softplus, in strides) and, depending on the task,
  - instance_segmentation: mask coefficients for prototypes predicted at stride 4 (YOLACT-style),
  - keypoints: per-joint offsets from the cell centre (in strides) and a visibility logit (YOLO-pose style),
    refined by a second stage that samples a stride-4 feature map at each coarse joint (grid_sample) and
    predicts a correction in pixels with a per-joint MLP.
In eval mode (what is exported) everything is decoded inside the graph: boxes are x1, y1, x2, y2 in
model-input pixels, scores and joint visibility are probabilities. In training mode `forward` returns the
undecoded head outputs the loss needs (training/tasks/dense_targets.py), so the loss goes through the
module's forward, as DistributedDataParallel requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("detection", "instance_segmentation", "keypoints")

CARD_SUMMARY = """Backbone: conv-BN-ReLU stages at strides 2, 4 (32 ch), 8 (64 ch) and 16 (128 ch); neck: the stride-16
map upsampled and concatenated with the stride-8 map, two 3x3 convs (64 ch). Head on the stride-8 map: a
classification tower (one 3x3 conv, 1x1 to per-class logits, sigmoid) and a regression tower (two 3x3 convs)
with 1x1 outputs for the four distances from the cell centre to the box sides (softplus x 8 pixels), and
per task: mask coefficients plus a prototype branch on the stride-4 map (instance segmentation, YOLACT-style,
mask = sigmoid(coefficients @ prototypes), cropped to the box), or per-joint offsets from the cell centre
(x 8 pixels, through a 2-layer joint tower) and a visibility logit (keypoints, YOLO-pose-style), followed by a
second stage that samples a stride-4 feature map (bilinear, grid_sample) at every coarse joint, adds a learnt
per-joint embedding and predicts a correction with a 2-layer 1x1 MLP (x 4 pixels).
Targets: FCOS centre sampling (cells whose centre is inside the box and within 1.5 strides of its centre;
the smallest box wins; a box no centre falls in gets its nearest cell). Losses: quality focal loss with the
predicted box's IoU as the soft class target (so scores rank boxes by localisation quality, which matters for
mAP@[.5:.95] and for NMS), GIoU + L1 on boxes, L1 on joints (labelled joints, visibility 1 or 2) + BCE on
visibility (target: visible = 2), BCE on the prototype-resolution mask inside the ground-truth box (the box
crop the service applies when decoding); the mask target is 2 x the covered fraction of each prototype pixel,
clipped to 1, so limbs thinner than a prototype pixel survive the 0.5 threshold."""


OUTPUT_NAMES: dict[str, list[str]] = {
    "detection": ["boxes", "scores"],
    "instance_segmentation": ["boxes", "scores", "mask_coefficients", "mask_prototypes"],
    "keypoints": ["boxes", "scores", "keypoints"],
}


def output_names(task: str) -> list[str]:
    """The exported outputs of a dense model of `task`, in order."""
    return list(OUTPUT_NAMES[task])


@dataclass(frozen=True)
class DenseConfig:
    task: str = "detection"
    num_classes: int = 4
    input_size: int = 128
    width: int = 32  # channels at stride 4; doubled at 8 and 16 (x2, x4)
    head_width: int = 64
    prototypes: int = 16
    joints: int = 14
    stride: int = 8
    prototype_stride: int = 4
    fuse_kernel: int = 1  # lateral conv merging stride 8 and upsampled stride 16 (1x1: a third of the FLOPs)
    proto_width: int = 32
    keypoint_tower: int = 2  # extra 3x3 conv layers for the joints on top of the regression tower
    keypoint_refine: int = 32  # channels of the stride-4 joint refinement map (0: no refinement)


def cbr(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DenseModel(nn.Module):
    def __init__(self, config: DenseConfig) -> None:
        super().__init__()
        if config.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {config.task!r}")
        self.config = config
        w, hw = config.width, config.head_width
        self.s4 = nn.Sequential(cbr(3, w // 2, 2), cbr(w // 2, w, 2), cbr(w, w))
        self.s8 = nn.Sequential(cbr(w, 2 * w, 2), cbr(2 * w, 2 * w))
        self.s16 = nn.Sequential(cbr(2 * w, 4 * w, 2), cbr(4 * w, 4 * w), cbr(4 * w, 4 * w))
        self.fuse = nn.Sequential(cbr(6 * w, hw, kernel=config.fuse_kernel), cbr(hw, hw))
        self.cls_tower = nn.Sequential(cbr(hw, hw))
        self.reg_tower = nn.Sequential(cbr(hw, hw), cbr(hw, hw))
        self.cls = nn.Conv2d(hw, config.num_classes, 1)
        self.box = nn.Conv2d(hw, 4, 1)
        nn.init.constant_(self.cls.bias, -4.6)  # prior probability 0.01
        nn.init.constant_(self.box.bias, 0.5)
        if config.task == "instance_segmentation":
            self.coef = nn.Conv2d(hw, config.prototypes, 1)
            pw = config.proto_width
            self.proto = nn.Sequential(cbr(w + hw, pw, kernel=1), cbr(pw, pw), cbr(pw, pw),
                                       nn.Conv2d(pw, config.prototypes, 1))
        if config.task == "keypoints":
            tower = [cbr(hw, hw) for _ in range(config.keypoint_tower)]
            self.kpt = nn.Sequential(*tower, nn.Conv2d(hw, config.joints * 3, 1))
            if config.keypoint_refine:
                rw = config.keypoint_refine
                self.refine_map = nn.Sequential(cbr(w + hw, rw, kernel=1), cbr(rw, rw))
                self.refine_in = nn.Conv2d(rw, 64, 1)
                self.joint_embedding = nn.Parameter(torch.zeros(1, 64, 1, config.joints))
                self.refine_out = nn.Conv2d(64, 2, 1)
                nn.init.zeros_(self.refine_out.weight)
                nn.init.zeros_(self.refine_out.bias)
        n = config.input_size // config.stride
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        centres = torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(config.stride)
        self.register_buffer("centres", centres, persistent=False)  # [N, 2] cell centres, input pixels

    @property
    def output_names(self) -> list[str]:
        return output_names(self.config.task)

    def raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Undecoded head outputs, flattened to [B, N, ...] (N candidates in row-major cell order): "cls"
        logits, "box" distances before softplus, and per task "coef" + "proto" or "kpt" (+ "kref")."""
        f4 = self.s4(x)
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        p8 = self.fuse(torch.cat([f8, F.interpolate(f16, scale_factor=2.0, mode="nearest")], 1))
        c, r = self.cls_tower(p8), self.reg_tower(p8)

        def flat(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).transpose(1, 2)

        out = {"cls": flat(self.cls(c)), "box": flat(self.box(r))}
        if self.config.task == "instance_segmentation":
            out["coef"] = flat(self.coef(r))
            up = F.interpolate(p8, scale_factor=2.0, mode="nearest")
            out["proto"] = self.proto(torch.cat([f4, up], 1))
        if self.config.task == "keypoints":
            k = flat(self.kpt(r))
            out["kpt"] = k.reshape(k.shape[0], k.shape[1], self.config.joints, 3)
            if self.config.keypoint_refine:
                fmap = self.refine_map(torch.cat([f4, F.interpolate(p8, scale_factor=2.0, mode="nearest")], 1))
                out["kref"] = self.refine(fmap, self.coarse_xy(out["kpt"]).detach())
        return out

    def coarse_xy(self, kpt_raw: torch.Tensor) -> torch.Tensor:
        return self.centres[:, None, :] + kpt_raw[..., :2] * self.config.stride

    def refine(self, fmap: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """Second stage: the stride-4 map sampled (bilinear) at each coarse joint [B, N, J, 2] plus a learnt
        per-joint embedding -> a small MLP -> a correction in input pixels [B, N, J, 2]."""
        b, n, j, _ = xy.shape
        size = torch.tensor([fmap.shape[-1], fmap.shape[-2]], dtype=xy.dtype) * self.config.prototype_stride
        grid = (xy / size * 2 - 1).reshape(b, n, j, 2)  # align_corners=False: -1 / +1 are the outer edges
        feats = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
        hidden = F.relu(self.refine_in(feats) + self.joint_embedding)  # [B, 64, N, J]
        return self.refine_out(hidden).permute(0, 2, 3, 1) * self.config.prototype_stride

    def decode_boxes(self, box_raw: torch.Tensor) -> torch.Tensor:
        ltrb = F.softplus(box_raw) * self.config.stride
        c = self.centres
        return torch.cat([c - ltrb[..., :2], c + ltrb[..., 2:]], -1)

    def decode_keypoints(self, kpt_raw: torch.Tensor, kref: torch.Tensor | None = None) -> torch.Tensor:
        xy = self.coarse_xy(kpt_raw)
        if kref is not None:
            xy = xy + kref
        return torch.cat([xy, torch.sigmoid(kpt_raw[..., 2:])], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        """Eval mode: the exported outputs, in `output_names` order. Training mode: `raw`'s head outputs plus
        the decoded "boxes" and (keypoints) the coarse joint positions "kpt_xy" [B, N, J, 2], in input pixels."""
        raw = self.raw(x)
        if self.training:
            return self.training_outputs(raw)
        return self.decoded_outputs(raw)

    def training_outputs(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {**raw, "boxes": self.decode_boxes(raw["box"])}
        if "kpt" in raw:
            out["kpt_xy"] = self.coarse_xy(raw["kpt"])
        return out

    def decoded_outputs(self, raw: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        outs = [self.decode_boxes(raw["box"]), torch.sigmoid(raw["cls"])]
        if self.config.task == "instance_segmentation":
            outs += [raw["coef"], raw["proto"]]
        if self.config.task == "keypoints":
            outs.append(self.decode_keypoints(raw["kpt"], raw.get("kref")))
        return tuple(outs)


def build(config: DenseConfig) -> DenseModel:
    return DenseModel(config)
