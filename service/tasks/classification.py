"""Classifier output -> top-k (class id, label, probability)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.contract import ModelMetadata


@dataclass(frozen=True, slots=True)
class ClassScore:
    class_id: int
    label: str
    score: float


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)


def top_k_classes(scores: np.ndarray, metadata: ModelMetadata, top_k: int) -> list[ClassScore]:
    """`scores` is one image's output row [num_classes]; ties keep the lower class id first."""
    row = scores.astype(np.float64).ravel()
    probabilities = softmax(row) if metadata.outputs[0].kind == "logits" else row
    k = min(top_k, probabilities.size)
    order = np.argsort(-probabilities, kind="stable")[:k]
    labels = metadata.labels
    return [
        ClassScore(int(i), labels[i] if i < len(labels) else str(i), float(probabilities[i])) for i in order
    ]
