"""A small U-Net (Ronneberger et al., 2015): a fully-convolutional encoder-decoder for semantic segmentation.

Like the fully-convolutional networks of Long et al. (2015) it has no dense layer, so every output value
is a per-pixel class score computed from a local window of the input; unlike FCN-8s it upsamples in a
symmetric decoder that concatenates the encoder's feature maps of the same resolution (skip connections),
which keeps the thin limbs of the stick figures and the corners of the shapes sharp.

    input [N, 3, H, W]
    encoder: level l = 0..L-1: (3x3 conv -> BatchNorm -> ReLU) x 2 with widths[l] channels,
             then 2x2 max pooling before the next level (H and W must be divisible by 2^(L-1))
    decoder: for l = L-2..0: bilinear 2x upsampling, concatenate with encoder level l,
             (3x3 conv -> BatchNorm -> ReLU) x 2 with widths[l] channels
    head:    1x1 conv -> [N, num_classes, H, W] logits at the full input resolution

Deviations from the paper: padded ("same") convolutions so the output has the input's size (the paper
crops), BatchNorm after every convolution, bilinear upsampling instead of learned up-convolutions, and
far fewer channels (8-128 over five levels instead of 64-1024): the scenes are small and training has to fit on two CPU
cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CARD_SUMMARY = __doc__.split("\n\n", 1)[1].strip()


@dataclass(frozen=True)
class SegmenterConfig:
    in_channels: int = 3
    num_classes: int = 5  # background + 4 object classes
    widths: tuple[int, ...] = (8, 16, 32, 64, 128)  # channels per resolution level, full resolution first

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))  # JSON gives lists
        if len(self.widths) < 2:
            raise ValueError("a U-Net needs at least two resolution levels")


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    def __init__(self, config: SegmenterConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SegmenterConfig()
        w = config.widths
        self.encoder = nn.ModuleList(
            ConvBlock(config.in_channels if i == 0 else w[i - 1], w[i]) for i in range(len(w))
        )
        self.decoder = nn.ModuleList(ConvBlock(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1))
        self.head = nn.Conv2d(w[0], config.num_classes, 1)

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.config.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.decoder))):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.decoder[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)
