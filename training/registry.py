"""Every architecture the training package can build, with the input it expects (timm-style).

An entry names its tasks, its config dataclass and builder, and its data config: the `InputSpec` (size,
channels, resize policy, normalisation) that travels with the model into its checkpoint and from there
into the exported ONNX metadata, so the service preprocesses exactly as training did. `--image-size`
changes the spec's size for a run; everything else comes from here.

Adding an architecture: write the module under training/models/ with a frozen config dataclass and a
module built from it, then `register(ArchSpec(...))` below; tests/training/test_registry.py builds,
trains, exports and checks parity for every entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from service.contract import InputSpec, Interpolation, ResizePolicy
from training.models import alexnet, detector, embednet, gcn, inception, lenet5, resnet, segmenter


@dataclass(frozen=True)
class ArchSpec:
    name: str
    title: str  # human name with reference, for model cards and metadata
    tasks: tuple[str, ...]  # the training.tasks it serves
    config_cls: type  # frozen dataclass
    build: Callable[[Any], nn.Module]  # config instance -> fresh, randomly initialised module
    default_input: InputSpec  # the data config
    default_data: str  # the data it is bundled with (a source name for the task)
    card_summary: str = ""  # markdown for model cards: layers, deviations from the reference
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
        """Plain JSON-able values (tuples as lists), as checkpoints store them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}

    def input_for(self, image_size: int = 0) -> InputSpec:
        """The data config, at image_size x image_size when given (0: the architecture's own size)."""
        if not image_size:
            return self.default_input
        return self.default_input.model_copy(update={"height": image_size, "width": image_size})


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


def archs_for(task: str) -> list[str]:
    return sorted(name for name, spec in ARCHS.items() if task in spec.tasks)


def count_parameters(model: nn.Module) -> int:
    """Parameters that can affect the output. Models with fixed connection masks (LeNet-5's C3) define
    `num_parameters()` to leave the masked-out weights out; otherwise every stored parameter counts."""
    custom = getattr(model, "num_parameters", None)
    if callable(custom):
        return int(custom())
    return sum(p.numel() for p in model.parameters())


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


def scenes_input(size: int = 128, mean: float = 0.0, std: float = 1.0) -> InputSpec:
    """The generated 160x120 scenes letterboxed into size x size (128: 128x96 with 16 rows of padding
    above and below), pad 114 as Ultralytics pads, pixels / 255 then (x - mean) / std."""
    return InputSpec(
        name="images",
        height=size,
        width=size,
        channels=3,
        resize=ResizePolicy.LETTERBOX,
        interpolation=Interpolation.BILINEAR,
        pad_value=114,
        scale=1.0 / 255.0,
        mean=(mean,) * 3,
        std=(std,) * 3,
        dynamic_batch=True,
    )


CLASSIFICATION = ("classification",)
DIGITS = "digits"

# The paper's 32x32 input; small images are upscaled to it. mean/std were measured on the digits training
# split after that upscale (0.306 / 0.324 of full scale), so inputs are ~zero-mean, unit-variance as the
# paper recommends for tanh units.
register(
    ArchSpec(
        "lenet5",
        "LeNet-5 (LeCun et al., 1998)",
        CLASSIFICATION,
        lenet5.LeNet5Config,
        lenet5.LeNet5,
        digits_input(32),
        DIGITS,
        card_summary=lenet5.CARD_SUMMARY,
    )
)
register(
    ArchSpec(
        "alexnet",
        "AlexNet-style CNN (Krizhevsky et al., 2012), scaled to 32x32",
        CLASSIFICATION,
        alexnet.AlexNetConfig,
        alexnet.AlexNet,
        digits_input(32),
        DIGITS,
        card_summary=alexnet.CARD_SUMMARY,
    )
)
register(
    ArchSpec(
        "inception",
        "Inception v1 / GoogLeNet-style (Szegedy et al., 2014), small",
        CLASSIFICATION,
        inception.InceptionConfig,
        inception.Inception,
        digits_input(32),
        DIGITS,
        card_summary=inception.CARD_SUMMARY,
    )
)
register(
    ArchSpec(
        "resnet",
        "Small ResNet with BatchNorm and residual blocks (He et al., 2015)",
        CLASSIFICATION,
        resnet.ResNetConfig,
        resnet.ResNet,
        digits_input(16),
        DIGITS,
        card_summary=resnet.CARD_SUMMARY,
    )
)
register(
    ArchSpec(
        "gcn",
        "Graph convolutional network on the pixel-grid graph (Kipf & Welling, 2017)",
        CLASSIFICATION,
        gcn.GCNConfig,
        gcn.GCN,
        digits_input(16),
        DIGITS,
        card_summary=gcn.CARD_SUMMARY,
        fixed_size=True,
    )
)
register(
    ArchSpec(
        "dense",
        "FCOS-style anchor-free single-stage dense model (boxes; YOLACT-style masks; YOLO-pose-style joints)",
        detector.TASKS,
        detector.DenseConfig,
        detector.DenseModel,
        scenes_input(),
        "scenes",
        card_summary=detector.CARD_SUMMARY,
    )
)
# mean/std 0.5/0.25 put the 8-bit range at [-2, 2].
register(
    ArchSpec(
        "unet",
        "U-Net (Ronneberger et al., 2015), small",
        ("semantic_segmentation",),
        segmenter.SegmenterConfig,
        segmenter.UNet,
        scenes_input(mean=0.5, std=0.25).model_copy(update={"pad_value": 0}),
        "scenes",
        card_summary=segmenter.CARD_SUMMARY,
    )
)
register(
    ArchSpec(
        "embednet",
        "MobileFaceNet-style embedding network with a CosFace loss (Wang et al., 2018)",
        ("embedding",),
        embednet.EmbedNetConfig,
        embednet.EmbedNet,
        InputSpec(
            height=32, width=32, channels=3, resize=ResizePolicy.STRETCH, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
        ),
        "identities",
        card_summary=embednet.CARD_SUMMARY,
    )
)
