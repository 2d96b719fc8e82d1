"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012), the same shape of network scaled to small inputs.

    input  1x32x32 (digits upscaled; 3 channels for RGB data)
    conv1  32@5x5, stride 2, pad 2  -> 32x16x16   large first kernel with stride (paper: 96@11x11/4 on 224)
    pool1  max 3x3, stride 2        -> 32x7x7     overlapping pooling (window 3 > stride 2), as the paper
    conv2  64@5x5, pad 2            -> 64x7x7
    pool2  max 3x3, stride 2        -> 64x3x3
    conv3  96@3x3, pad 1            -> 96x3x3
    conv4  96@3x3, pad 1            -> 96x3x3
    conv5  64@3x3, pad 1            -> 64x3x3
    pool5  max 3x3, stride 2        -> 64x1x1
    fc6    dropout, 256, ReLU
    fc7    dropout, 256, ReLU
    fc8    one logit per class

Differences from the paper: channel widths are divided by ~4-6 and the fully connected layers by 16
(4,096 -> 256) for 32x32 digits; no local response normalisation (later work found it adds nothing;
`batch_norm=True` is the modern substitute) and no two-GPU channel split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.blocks import Activation, ConvBNAct, Pooling, make_activation, make_pool

CARD_SUMMARY = """\
AlexNet's five-convolution, three-fully-connected shape, scaled to 32x32 inputs: conv1 32@5x5 stride 2
(the large strided first kernel) → overlapping 3x3/2 max pool → conv2 64@5x5 → 3x3/2 max pool → conv3
96@3x3 → conv4 96@3x3 → conv5 64@3x3 → 3x3/2 max pool → dropout → fc 256 → dropout → fc 256 → logits,
ReLU after every conv and hidden fc. Differences from the paper: widths scaled down for 32x32 digits, no
local response normalisation (optional BatchNorm instead), no two-GPU split. Padding, stride, pooling
type, activation, dropout and BatchNorm are options."""


@dataclass(frozen=True)
class AlexNetConfig:
    widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 64)
    fc_width: int = 256
    first_kernel: int = 5
    first_stride: int = 2
    pooling: Pooling = "max"
    pool_kernel: int = 3  # 3 with stride 2: overlapping pooling
    pool_stride: int = 2
    activation: Activation = "relu"
    dropout: float = 0.5
    batch_norm: bool = False
    in_channels: int = 1
    num_classes: int = 10


class AlexNet(nn.Module):
    def __init__(self, config: AlexNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or AlexNetConfig()
        w1, w2, w3, w4, w5 = c.widths

        def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Module:
            return ConvBNAct(cin, cout, k, stride, k // 2, c.batch_norm, c.activation)

        def pool() -> nn.Module:
            return make_pool(c.pooling, c.pool_kernel, c.pool_stride)

        self.features = nn.Sequential(
            conv(c.in_channels, w1, c.first_kernel, c.first_stride),  # [B,32,16,16]
            pool(),  # [B,32,7,7]
            conv(w1, w2, 5),  # [B,64,7,7]
            pool(),  # [B,64,3,3]
            conv(w2, w3, 3),  # [B,96,3,3]
            conv(w3, w4, 3),  # [B,96,3,3]
            conv(w4, w5, 3),  # [B,64,3,3]
            pool(),  # [B,64,1,1]
        )
        # Size of the flattened features for a 32x32 input; other sizes are averaged to 1x1 first so the
        # classifier does not depend on the input size.
        self.reduce = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # [B,64]
            nn.Dropout(c.dropout),
            nn.Linear(w5, c.fc_width),  # fc6
            make_activation(c.activation),
            nn.Dropout(c.dropout),
            nn.Linear(c.fc_width, c.fc_width),  # fc7
            make_activation(c.activation),
            nn.Linear(c.fc_width, c.num_classes),  # fc8: logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.reduce(self.features(x)))
