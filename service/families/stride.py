"""Stride's own contract: the outputs its `training/` exports name by kind (see docs/model-contract.md).

A described file (any ONNX with a description beside it) states the same contract, so it is decoded
here too: the family is the output layout, not who trained the model.
"""

from __future__ import annotations

import numpy as np

from service.contract import Task
from service.families.base import ClassifyQuery, Query, ServedModel, classification_from
from service.preprocess import Geometry
from service.results import Detections, Embeddings, TaskResult
from service.tasks.detection import DetectionQuery, select_detections
from service.tasks.keypoints import joints_to_original
from service.tasks.masks import instance_masks
from service.tasks.semantic import class_map


class StrideModel(ServedModel):
    family = "stride"

    def decode(self, outputs: list[np.ndarray], geometry: Geometry, query: Query) -> TaskResult:
        meta = self.metadata
        if meta.task is Task.CLASSIFICATION:
            assert isinstance(query, ClassifyQuery)
            index = next(i for i, o in enumerate(meta.outputs) if o.kind in ("logits", "probabilities"))
            return classification_from(outputs[index], meta.outputs[index].kind, query)
        if meta.task is Task.SEMANTIC_SEGMENTATION:
            return class_map(outputs[meta.output("logits")], geometry)
        if meta.task is Task.EMBEDDING:
            vector = outputs[meta.output("embedding")].astype(np.float32).reshape(1, -1)
            return Embeddings(vector, normalized=meta.embedding is not None and meta.embedding.normalized)
        assert isinstance(query, DetectionQuery)
        return self._detections(outputs, geometry, query)

    def _detections(self, outputs: list[np.ndarray], geometry: Geometry, query: DetectionQuery) -> Detections:
        meta = self.metadata
        found = select_detections(outputs[meta.output("boxes")], outputs[meta.output("scores")], geometry, query)
        masks = keypoints = None
        if meta.task is Task.INSTANCE_SEGMENTATION:
            assert meta.masks is not None
            masks = instance_masks(outputs[meta.output("mask_coefficients")][found.indices],
                                   outputs[meta.output("mask_prototypes")], found.boxes, geometry, meta.masks)
        if meta.task is Task.KEYPOINTS:
            keypoints = joints_to_original(outputs[meta.output("keypoints")][found.indices], geometry)
        return Detections(boxes=found.boxes, scores=found.scores, class_ids=found.class_ids, masks=masks,
                          keypoints=keypoints)
