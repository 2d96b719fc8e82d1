"""A small face-embedding network (MobileFaceNet-flavoured) for the `embedding` task.

Three stride-2 stages (32 -> 16 -> 8 -> 4) of conv-BN-PReLU, then a global depthwise conv (MobileFaceNet's
GDC: it keeps where in the face a feature is, unlike average pooling) and a linear layer to the vector,
BatchNorm and L2 normalisation: the output is a unit vector, so a dot product is the cosine similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CARD_SUMMARY = __doc__.split("\n\n", 1)[1].strip()


@dataclass(frozen=True)
class EmbedNetConfig:
    width: int = 32  # channels of the first stage; later stages double it
    dimension: int = 128


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))


class EmbedNet(nn.Module):
    def __init__(self, config: EmbedNetConfig | None = None) -> None:
        super().__init__()
        config = config or EmbedNetConfig()
        w = config.width
        self.features = nn.Sequential(
            _conv(3, w),
            _conv(w, w, 2),
            _conv(w, w),
            _conv(w, 2 * w, 2),
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, 2),
            _conv(4 * w, 4 * w),
        )
        self.gdc = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 4, groups=4 * w, bias=False), nn.BatchNorm2d(4 * w))
        self.project = nn.Linear(4 * w, config.dimension, bias=False)
        self.bn = nn.BatchNorm1d(config.dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gdc(self.features(x)).flatten(1)
        return F.normalize(self.bn(self.project(z)), dim=1)
