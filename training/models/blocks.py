"""Building blocks shared by the classic CNN zoo: the knobs the texts discuss, each one configurable.

- activation: ReLU, LeakyReLU, tanh or sigmoid (`make_activation`);
- pooling: max or average, any kernel/stride/padding (`make_pool`; AlexNet's overlapping 3x3/2 is one);
- convolution with explicit padding/stride, optional BatchNorm, then the activation (`ConvBNAct`);
- dropout is plain `nn.Dropout(p)` where the architectures use it.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

Activation = Literal["relu", "leaky_relu", "tanh", "sigmoid"]
Pooling = Literal["max", "avg"]


def make_activation(name: Activation) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}")


def make_pool(name: Pooling, kernel_size: int, stride: int | None = None, padding: int = 0) -> nn.Module:
    if name == "max":
        return nn.MaxPool2d(kernel_size, stride, padding)
    if name == "avg":
        # count_include_pad=False: padded border cells do not dilute the average.
        return nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=False)
    raise ValueError(f"unknown pooling {name!r}")


class ConvBNAct(nn.Sequential):
    """Conv2d(kernel, stride, padding) -> [BatchNorm2d] -> activation. With BatchNorm the conv has no
    bias (BN's shift replaces it)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        batch_norm: bool = False,
        activation: Activation | None = "relu",
    ) -> None:
        padding = kernel_size // 2 if padding is None else padding  # "same" for odd kernels at stride 1
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not batch_norm)
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)
