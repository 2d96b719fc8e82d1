"""A small ResNet (He et al., 2015): BatchNorm and residual connections, the strong baseline.

    input  1x16x16 (digits are 8x8; 16x16 keeps every pixel and leaves room for two downsamplings)
    stem   24@3x3, BN, ReLU               -> 24x16x16
    stage1 BasicBlock(24)                 -> 24x16x16
    stage2 BasicBlock(48, stride 2)       -> 48x8x8
    stage3 BasicBlock(96, stride 2)       -> 96x4x4
    head   global average pooling, linear -> logits

BasicBlock: conv3x3(stride) -> BN -> act -> conv3x3 -> BN, plus the shortcut (identity, or a 1x1
stride-s conv + BN where the shape changes), then act. `blocks_per_stage` stacks more blocks per stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.blocks import Activation, ConvBNAct, make_activation

CARD_SUMMARY = """\
A ResNet-style network for small inputs: stem 24@3x3 conv + BatchNorm + ReLU → three stages of basic
residual blocks (24, 48, 96 channels; the second and third halve the resolution with a stride-2 conv and
a 1x1 projection shortcut) → global average pooling → linear. Each block is conv3x3 → BN → ReLU → conv3x3
→ BN, added to the shortcut, then ReLU. Widths, blocks per stage, activation and dropout are options."""


@dataclass(frozen=True)
class ResNetConfig:
    widths: tuple[int, ...] = (24, 48, 96)
    blocks_per_stage: int = 1
    activation: Activation = "relu"
    dropout: float = 0.0
    in_channels: int = 1
    num_classes: int = 10


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: Activation) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNAct(in_channels, out_channels, 3, stride, 1, batch_norm=True, activation=activation),
            ConvBNAct(out_channels, out_channels, 3, 1, 1, batch_norm=True, activation=None),
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else ConvBNAct(in_channels, out_channels, 1, stride, 0, batch_norm=True, activation=None)
        )
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ResNetConfig()
        self.stem = ConvBNAct(c.in_channels, c.widths[0], 3, 1, 1, batch_norm=True, activation=c.activation)
        blocks: list[nn.Module] = []
        channels = c.widths[0]
        for stage, width in enumerate(c.widths):
            for i in range(c.blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, c.activation))
                channels = width
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(c.dropout), nn.Linear(channels, c.num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual body: every block starts as the identity (Goyal et al.).
        for block in blocks:
            assert isinstance(block, BasicBlock)
            nn.init.zeros_(block.body[1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
