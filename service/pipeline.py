"""The per-request work, run in a worker thread: bytes -> image -> tensor -> ONNX Runtime -> task output."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.imaging import DecodedImage, decode_image
from service.metrics import Metrics
from service.payload import ImageSource
from service.preprocess import Geometry, prepare
from service.registry import ModelEntry
from service.tasks.classification import ClassScore, top_k_classes


@dataclass(frozen=True, slots=True)
class Inference:
    image: DecodedImage
    geometry: Geometry
    outputs: list[np.ndarray]  # each with the batch axis removed


def infer(entry: ModelEntry, source: ImageSource, *, max_pixels: int, metrics: Metrics) -> Inference:
    assert entry.session is not None and entry.metadata is not None
    spec = entry.metadata.input
    decoded = decode_image(source.load(), mode=spec.color_mode, max_pixels=max_pixels)
    metrics.images_decoded.labels(decoded.format).inc()
    tensor, geometry = prepare(decoded.image, spec)
    started = time.perf_counter()
    outputs = entry.session.run(tensor[np.newaxis])
    metrics.inference_latency.labels(entry.name).observe(time.perf_counter() - started)
    return Inference(decoded, geometry, [output[0] for output in outputs])


def classify(entry: ModelEntry, source: ImageSource, *, top_k: int, max_pixels: int,
             metrics: Metrics) -> tuple[DecodedImage, list[ClassScore]]:
    result = infer(entry, source, max_pixels=max_pixels, metrics=metrics)
    assert entry.metadata is not None
    return result.image, top_k_classes(result.outputs[0], entry.metadata, top_k)
