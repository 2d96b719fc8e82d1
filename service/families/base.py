"""What every model family gives the engine: its contract, how an image becomes its input tensor, and how
its raw outputs become the task's result type. A route never sees any of this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from service.contract import ModelMetadata, Task
from service.imaging import DecodedImage
from service.preprocess import Geometry, prepare
from service.results import Classification, TaskResult
from service.tasks.classification import softmax
from service.tasks.detection import DetectionQuery


@dataclass(frozen=True, slots=True)
class ClassifyQuery:
    top_k: int = 5


@dataclass(frozen=True, slots=True)
class SemanticQuery:
    """Semantic segmentation takes no decoding parameters; its output format is chosen when encoding."""


@dataclass(frozen=True, slots=True)
class EmbedQuery:
    """Embedding takes no decoding parameters: the vector is the answer."""


Query = ClassifyQuery | DetectionQuery | SemanticQuery | EmbedQuery


class ServedModel(ABC):
    """A model file understood by one family. The Stride contract is the common language: every family
    states its model in a `ModelMetadata` (shown by /v1/models and `inspect`), and decodes outputs
    into `service.results` types."""

    family: ClassVar[str] = "stride"
    # JPEG DCT-domain draft decoding changes the pixels a model sees; families whose reference tooling
    # decodes at full size turn it off so answers stay equal to that tooling's.
    allows_jpeg_draft: ClassVar[bool] = True

    def __init__(self, metadata: ModelMetadata, source: str) -> None:
        self.metadata = metadata
        self.source = source  # where the metadata came from, e.g. "embedded" or "sidecar resnet50.yaml"

    @property
    def task(self) -> Task:
        return self.metadata.task

    def prepare(self, decoded: DecodedImage) -> tuple[np.ndarray, Geometry]:
        """Upright decoded image -> ([C, H, W] float32 tensor, geometry mapping input pixels back)."""
        return prepare(decoded.image, self.metadata.input, original_size=(decoded.width, decoded.height))

    @abstractmethod
    def decode(self, outputs: list[np.ndarray], geometry: Geometry, query: Query) -> TaskResult:
        """One image's outputs (batch axis removed) -> its result."""


def top_k(probabilities: np.ndarray, k: int) -> Classification:
    """[classes] probabilities -> the k best, ties keeping the lower class id first."""
    row = probabilities.astype(np.float64).ravel()
    order = np.argsort(-row, kind="stable")[: min(k, row.size)]
    return Classification(class_ids=order.astype(np.int64), scores=row[order])


def classification_from(output: np.ndarray, kind: str, query: ClassifyQuery) -> Classification:
    row = output.astype(np.float64).ravel()
    return top_k(softmax(row) if kind == "logits" else row, query.top_k)
