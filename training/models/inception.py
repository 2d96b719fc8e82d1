"""Inception v1 / GoogLeNet (Szegedy et al., 2014), a small network of the paper's four-branch module.

    Inception module (output = concat of the four branches along channels):
      b1: 1x1 conv
      b2: 1x1 conv (reduce) -> 3x3 conv
      b3: 1x1 conv (reduce) -> 5x5 conv
      b4: 3x3 max pool, stride 1 -> 1x1 conv (pool projection)

    input  1x32x32
    stem   32@3x3, pad 1                 -> 32x32x32
           max 3x3, stride 2, pad 1      -> 32x16x16
    3a     inception (16, 16->24, 4->8, 8) -> 56x16x16
    3b     inception (24, 24->32, 8->16, 16) -> 88x16x16
           max 3x3, stride 2, pad 1      -> 88x8x8
    4a     inception (32, 32->48, 8->16, 16) -> 112x8x8
           global average pooling        -> 112
           dropout, linear               -> logits

Differences from the paper: fewer, narrower modules for 32x32 digits; no auxiliary classifiers and no
local response normalisation (BatchNorm after each conv is an option, on by default, as in Inception v2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.blocks import Activation, ConvBNAct, Pooling, make_pool

CARD_SUMMARY = """\
A small GoogLeNet: stem conv 32@3x3 → 3x3/2 max pool → Inception 3a → Inception 3b → 3x3/2 max pool →
Inception 4a → global average pooling → dropout → linear. Each Inception module runs four branches in
parallel and concatenates them along channels: 1x1 conv; 1x1 reduce → 3x3 conv; 1x1 reduce → 5x5 conv;
3x3 max pool (stride 1) → 1x1 projection. Differences from the paper: three modules instead of nine,
narrower, no auxiliary classifiers, BatchNorm after each conv (option `batch_norm`, as in Inception v2)
instead of local response normalisation. Module widths, pooling type, activation and dropout are options."""

# (b1, b2 reduce, b2 out, b3 reduce, b3 out, b4 pool projection) per module, as the paper's Table 1.
ModuleWidths = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class InceptionConfig:
    stem_width: int = 32
    module_3a: ModuleWidths = (16, 16, 24, 4, 8, 8)
    module_3b: ModuleWidths = (24, 24, 32, 8, 16, 16)
    module_4a: ModuleWidths = (32, 32, 48, 8, 16, 16)
    pooling: Pooling = "max"  # the downsampling pools between stages
    activation: Activation = "relu"
    batch_norm: bool = True
    dropout: float = 0.2
    in_channels: int = 1
    num_classes: int = 10


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, widths: ModuleWidths, batch_norm: bool, activation: Activation) -> None:
        super().__init__()
        b1, b2_reduce, b2, b3_reduce, b3, b4 = widths

        def conv(cin: int, cout: int, k: int) -> nn.Module:
            return ConvBNAct(cin, cout, k, 1, k // 2, batch_norm, activation)

        self.branch1 = conv(in_channels, b1, 1)
        self.branch2 = nn.Sequential(conv(in_channels, b2_reduce, 1), conv(b2_reduce, b2, 3))
        self.branch3 = nn.Sequential(conv(in_channels, b3_reduce, 1), conv(b3_reduce, b3, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(in_channels, b4, 1))
        self.out_channels = b1 + b2 + b3 + b4

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, out_channels, H, W]
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class Inception(nn.Module):
    def __init__(self, config: InceptionConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or InceptionConfig()
        self.stem = nn.Sequential(
            ConvBNAct(c.in_channels, c.stem_width, 3, 1, 1, c.batch_norm, c.activation),  # [B,32,32,32]
            make_pool(c.pooling, 3, 2, 1),  # [B,32,16,16]
        )
        m3a = InceptionModule(c.stem_width, c.module_3a, c.batch_norm, c.activation)  # [B,56,16,16]
        m3b = InceptionModule(m3a.out_channels, c.module_3b, c.batch_norm, c.activation)  # [B,88,16,16]
        m4a = InceptionModule(m3b.out_channels, c.module_4a, c.batch_norm, c.activation)  # [B,112,8,8]
        self.stages = nn.Sequential(m3a, m3b, make_pool(c.pooling, 3, 2, 1), m4a)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # global average pooling: [B,112,1,1]
            nn.Flatten(),
            nn.Dropout(c.dropout),
            nn.Linear(m4a.out_channels, c.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
