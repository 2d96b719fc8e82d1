"""The per-image work: bytes -> image -> tensor -> (batched) ONNX Runtime -> task output.

Decoding and preprocessing run in the worker pool, inference in the model's batcher thread, task
decoding back in the worker pool; the event loop only awaits. Each stage is timed for the
`Server-Timing` header and the per-stage histograms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from service.contract import InputSpec, ResizePolicy
from service.imaging import DecodedImage, decode_image
from service.payload import ImageSource
from service.preprocess import Geometry

if TYPE_CHECKING:
    from service.families import ServedModel

T = TypeVar("T")

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess", "serialize")


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, stage: str):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def merge(self, other: StageTimes) -> None:
        for stage, seconds in other.seconds.items():
            self.add(stage, seconds)

    def server_timing(self) -> str:
        """The `Server-Timing` header value, durations in milliseconds."""
        return ", ".join(f"{s};dur={self.seconds[s] * 1000:.3f}" for s in STAGES if s in self.seconds)


@dataclass(frozen=True, slots=True)
class Prepared:
    image: DecodedImage
    tensor: np.ndarray  # [C, H, W]
    geometry: Geometry


def draft_min_side(spec: InputSpec) -> int:
    """Smallest image side worth decoding for this input: twice the input, so resizing still antialiases."""
    side = 2 * max(spec.width, spec.height)
    if spec.resize is ResizePolicy.CENTER_CROP:
        side = math.ceil(side / spec.crop_fraction)
    return side


def decode_and_prepare(source: ImageSource, model: ServedModel, *, max_pixels: int, jpeg_draft: bool,
                       times: StageTimes) -> Prepared:
    spec = model.metadata.input
    draft = jpeg_draft and model.allows_jpeg_draft
    with times.measure("decode"):
        decoded = decode_image(source.load(), mode=spec.color_mode, max_pixels=max_pixels,
                               min_side=draft_min_side(spec) if draft else None)
    with times.measure("preprocess"):
        tensor, geometry = model.prepare(decoded)
    return Prepared(decoded, tensor, geometry)


def postprocess(fn: Callable[[], T], times: StageTimes) -> T:
    with times.measure("postprocess"):
        return fn()
