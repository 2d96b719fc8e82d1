"""Architecture registry (timm-style): name -> how to build it, its config dataclass, and the input it
expects. The InputSpec travels with the model into its checkpoint and then into the exported ONNX
metadata, so the service preprocesses exactly as training did.

Adding an architecture: write the module with a frozen config dataclass and a `build(config)`, then
`register(ArchSpec(...))` below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from service.contract import InputSpec, Interpolation, ResizePolicy
from training.models import alexnet, gcn, inception, resnet
from training.models.alexnet import AlexNet, AlexNetConfig
from training.models.gcn import GCN, GCNConfig
from training.models.inception import Inception, InceptionConfig
from training.models.lenet5 import CARD_SUMMARY as LENET5_CARD_SUMMARY
from training.models.lenet5 import LeNet5, LeNet5Config
from training.models.resnet import ResNet, ResNetConfig


@dataclass(frozen=True)
class ArchSpec:
    name: str
    title: str  # human name with reference, for model cards and metadata
    config_cls: type  # frozen dataclass; must accept in_channels and num_classes
    build: Callable[[Any], nn.Module]  # config instance -> fresh, randomly initialised module
    default_input: InputSpec
    card_summary: str = ""  # markdown paragraph for model cards: layers, deviations from the reference
    # True: the input size is baked into the architecture (GCN's graph); the config gets height/width.
    fixed_size: bool = False

    def make_config(self, overrides: Mapping[str, Any] | None = None) -> Any:
        """The default config with `overrides` applied; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = set(overrides or {}) - known
        if unknown:
            raise ValueError(f"{self.name} has no config option(s) {sorted(unknown)}; known: {sorted(known)}")
        return self.config_cls(**dict(overrides or {}))

    def config_to_dict(self, config: Any) -> dict[str, Any]:
        return dataclasses.asdict(config)


ARCHS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in ARCHS:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    ARCHS[spec.name] = spec
    return spec


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}") from None


def count_parameters(model: nn.Module) -> int:
    """Parameters that can affect the output. Models with fixed connection masks (LeNet-5's C3) define
    `num_parameters()` to leave the masked-out weights out; otherwise every stored parameter counts."""
    custom = getattr(model, "num_parameters", None)
    if callable(custom):
        return int(custom())
    return sum(p.numel() for p in model.parameters())


register(
    ArchSpec(
        name="lenet5",
        title="LeNet-5 (LeCun et al., 1998)",
        card_summary=LENET5_CARD_SUMMARY,
        config_cls=LeNet5Config,
        build=LeNet5,
        # The paper's 32x32 input; small images are upscaled to it. mean/std were measured on the digits
        # training split after that upscale (0.306 / 0.324 of full scale), so inputs are ~zero-mean,
        # unit-variance as the paper recommends for tanh units.
        default_input=InputSpec(
            name="images",
            height=32,
            width=32,
            channels=1,
            resize=ResizePolicy.STRETCH,
            interpolation=Interpolation.BILINEAR,
            mean=(0.306,),
            std=(0.324,),
        ),
    )
)


def digits_input(size: int) -> InputSpec:
    """Digits upscaled to size x size; mean/std measured on the digits training split at that size
    (0.306 / 0.319 at 16x16, 0.306 / 0.324 at 32x32)."""
    return InputSpec(
        name="images",
        height=size,
        width=size,
        channels=1,
        resize=ResizePolicy.STRETCH,
        interpolation=Interpolation.BILINEAR,
        mean=(0.306,),
        std=(0.319 if size == 16 else 0.324,),
    )


register(
    ArchSpec(
        name="alexnet",
        title="AlexNet-style CNN (Krizhevsky et al., 2012), scaled to 32x32",
        card_summary=alexnet.CARD_SUMMARY,
        config_cls=AlexNetConfig,
        build=AlexNet,
        default_input=digits_input(32),
    )
)
register(
    ArchSpec(
        name="inception",
        title="Inception v1 / GoogLeNet-style (Szegedy et al., 2014), small",
        card_summary=inception.CARD_SUMMARY,
        config_cls=InceptionConfig,
        build=Inception,
        default_input=digits_input(32),
    )
)
register(
    ArchSpec(
        name="resnet",
        title="Small ResNet with BatchNorm and residual blocks (He et al., 2015)",
        card_summary=resnet.CARD_SUMMARY,
        config_cls=ResNetConfig,
        build=ResNet,
        default_input=digits_input(16),
    )
)
register(
    ArchSpec(
        name="gcn",
        title="Graph convolutional network on the pixel-grid graph (Kipf & Welling, 2017)",
        card_summary=gcn.CARD_SUMMARY,
        config_cls=GCNConfig,
        build=GCN,
        default_input=digits_input(16),
        fixed_size=True,
    )
)

__all__ = [
    "ARCHS",
    "GCN",
    "AlexNet",
    "AlexNetConfig",
    "ArchSpec",
    "GCNConfig",
    "Inception",
    "InceptionConfig",
    "LeNet5",
    "LeNet5Config",
    "ResNet",
    "ResNetConfig",
    "count_parameters",
    "digits_input",
    "get_arch",
    "register",
]
