"""ONNX outputs -> the service's own answers, so the metrics training reports are the served answers'.

Every evaluation, card picture and held-out metric in `training/` decodes through `service.families.
StrideModel.decode`, the code an HTTP request runs (score threshold, class-aware NMS, cap, letterbox undone,
masks, joints, class maps), with the query a request without parameters gets (`service.engine.
detection_query`: the model's own defaults). No copy of that code lives here: only the shapes scoring needs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from service.config import Settings
from service.contract import ModelMetadata
from service.engine import detection_query
from service.families import SemanticQuery, ServedModel, StrideModel, recognise
from service.preprocess import Geometry
from service.results import ClassMap, Detections
from service.runtime import open_session
from service.tasks.masks import LocalMask


def served_model(metadata: ModelMetadata) -> StrideModel:
    """The model as the service understands an exported Stride file (metadata embedded in it)."""
    return StrideModel(metadata, "embedded")


def served_model_of_file(model: Path | bytes) -> ServedModel:
    """How the service understands a file (service.families.recognise): Stride's embedded metadata, an
    Ultralytics export's own, or a description beside it; so a baseline decodes through the same code."""
    if isinstance(model, bytes):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(model)
            return served_model_of_file(path)
    return recognise(Path(model), open_session(Path(model), Settings(providers=["CPUExecutionProvider"])))


def decode_detections(model: ServedModel, outputs: list[np.ndarray], geometry: Geometry) -> Detections:
    """One image's outputs (batch axis removed, in the session's output order) -> its served detections."""
    query = detection_query(model.metadata, confidence=None, iou=None, max_detections=None, classes=None,
                            agnostic=False)
    result = model.decode(outputs, geometry, query)
    assert isinstance(result, Detections)
    return result


def decode_class_ids(model: ServedModel, outputs: list[np.ndarray], geometry: Geometry) -> np.ndarray:
    """One image's outputs (its logits [classes, h, w]) -> [H, W] class id of every original pixel, as served."""
    result = model.decode(outputs, geometry, SemanticQuery())
    assert isinstance(result, ClassMap)
    return result.ids


def full_mask(mask: LocalMask, height: int, width: int) -> np.ndarray:
    """A served instance mask (its box only) -> [height, width] bool over the whole image, for scoring."""
    canvas = np.zeros((height, width), dtype=bool)
    pixels = mask.full_size()
    if pixels.size:
        canvas[mask.y0 : mask.y0 + pixels.shape[0], mask.x0 : mask.x0 + pixels.shape[1]] = pixels
    return canvas
