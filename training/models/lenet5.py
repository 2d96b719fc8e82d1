"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, 1998), as the paper describes it, with two modern swaps.

    input  1x32x32
    C1     6@5x5 conv              -> 6x28x28
    S2     2x2 pooling             -> 6x14x14
    C3     16@5x5 conv, PARTIAL    -> 16x10x10   (each C3 map sees only the S2 maps in C3_TABLE)
    S4     2x2 pooling             -> 16x5x5
    C5     120@5x5 conv            -> 120x1x1
    F6     84 fully connected      -> 84
    output 10 logits

Swaps, both standard in reimplementations: the paper's Euclidean RBF output layer becomes a linear layer
trained with cross-entropy, and its trainable subsampling (sum x coefficient + bias, then squash) becomes
plain average (or max) pooling followed by the activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

Activation = Literal["tanh", "lecun_tanh", "relu"]
Pooling = Literal["avg", "max"]

# Table I of the paper: which of the 6 S2 maps each of the 16 C3 maps is connected to. The first six
# see three contiguous maps, the next nine four, the last one all six; breaking the symmetry makes the
# C3 maps learn different features (and cuts C3's weights from 2,400 to 1,500).
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip

CARD_SUMMARY = """\
Input 1x32x32 → C1 6@5x5 conv (28x28) → S2 2x2 pool (14x14) → C3 16@5x5 conv (10x10), optionally with
the paper's partial S2→C3 connection table → S4 2x2 pool (5x5) → C5 120@5x5 conv (1x1) → F6 84 fully
connected → one logit per class. Differences from the paper: the Euclidean RBF output layer is a linear
layer trained with cross-entropy, and the trainable subsampling layers are plain pooling followed by the
activation. The connection table is a fixed 0/1 mask on a dense C3 weight; the exporter folds it into the
weight, so the ONNX graph is a plain convolution."""


@dataclass(frozen=True)
class LeNet5Config:
    activation: Activation = "tanh"
    pooling: Pooling = "avg"
    c3_table: bool = True  # False: C3 is a dense 6->16 convolution
    in_channels: int = 1
    num_classes: int = 10


class LeCunTanh(nn.Module):
    """The paper's squashing function f(a) = 1.7159 tanh(2a/3): f(+-1) = +-1, steepest near the origin."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


def make_activation(name: Activation) -> nn.Module:
    if name == "tanh":
        return nn.Tanh()
    if name == "lecun_tanh":
        return LeCunTanh()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}")


def make_pool(name: Pooling) -> nn.Module:
    if name == "avg":
        return nn.AvgPool2d(2)
    if name == "max":
        return nn.MaxPool2d(2)
    raise ValueError(f"unknown pooling {name!r}")


def c3_connection_mask(table: tuple[tuple[int, ...], ...] = C3_TABLE, in_maps: int = 6) -> torch.Tensor:
    """[16, 6, 1, 1] with 1 where C3 map o reads S2 map i; broadcasts over the 5x5 kernel."""
    mask = torch.zeros(len(table), in_maps, 1, 1)
    for out_map, in_maps_used in enumerate(table):
        mask[out_map, list(in_maps_used)] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose weight is multiplied by a fixed 0/1 connection mask on every forward.

    Masked entries never influence the output, so their gradient is exactly zero and they stay out of
    learning; they are still stored (the tensor is dense) and are subtracted in `num_masked_weights`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask: torch.Tensor) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        if mask.shape != (out_channels, in_channels, 1, 1):
            raise ValueError(f"mask shape {tuple(mask.shape)} != {(out_channels, in_channels, 1, 1)}")
        self.register_buffer("connection_mask", mask)
        with torch.no_grad():
            self.weight.mul_(mask)  # keep the stored tensor honest: unused weights read as zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.connection_mask, self.bias)

    @property
    def num_masked_weights(self) -> int:
        kernel_area = self.weight.shape[2] * self.weight.shape[3]
        return int((self.connection_mask == 0).sum().item()) * kernel_area


class LeNet5(nn.Module):
    def __init__(self, config: LeNet5Config | None = None) -> None:
        super().__init__()
        self.config = config = config or LeNet5Config()
        c3: nn.Conv2d = MaskedConv2d(6, 16, 5, c3_connection_mask()) if config.c3_table else nn.Conv2d(6, 16, 5)
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 6, 5),  # C1: [B,1,32,32] -> [B,6,28,28]
            make_activation(config.activation),
            make_pool(config.pooling),  # S2: -> [B,6,14,14]
            c3,  # C3: -> [B,16,10,10]
            make_activation(config.activation),
            make_pool(config.pooling),  # S4: -> [B,16,5,5]
            nn.Conv2d(16, 120, 5),  # C5: -> [B,120,1,1]
            make_activation(config.activation),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # -> [B,120]
            nn.Linear(120, 84),  # F6: -> [B,84]
            make_activation(config.activation),
            nn.Linear(84, config.num_classes),  # output: -> [B,num_classes] logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def num_parameters(self) -> int:
        """Trainable parameters that can affect the output: stored ones minus the C3-masked weights."""
        stored = sum(p.numel() for p in self.parameters())
        masked = sum(m.num_masked_weights for m in self.modules() if isinstance(m, MaskedConv2d))
        return stored - masked
