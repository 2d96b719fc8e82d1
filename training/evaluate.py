"""Evaluate an exported ONNX classifier with ONNX Runtime, preprocessing exactly as the service does.

The input spec and labels come from the model's own metadata unless given, so this measures the file a
user will deploy, not the PyTorch model it came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from service.contract import InputSpec, ModelMetadata, from_metadata_props
from training.data import DEFAULT_SPLIT_SEED, load_dataset, render_batch


@dataclass
class EvalReport:
    labels: list[str]
    samples: int
    errors: int
    accuracy: float
    macro_f1: float
    cross_entropy: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: list[list[int]]  # [true class][predicted class]

    def headline_metrics(self, prefix: str = "test_") -> dict[str, float]:
        """The few numbers that go into the model metadata's `metrics`."""
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}cross_entropy": self.cross_entropy,
            f"{prefix}samples": float(self.samples),
            f"{prefix}errors": float(self.errors),
        }

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def open_session(model: str | Path | bytes) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def read_metadata(model_path: str | Path) -> ModelMetadata:
    """The Stride metadata as the service reads it (through ONNX Runtime's custom metadata map)."""
    return from_metadata_props(open_session(model_path).get_modelmeta().custom_metadata_map)


def run_logits(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """x: [N, C, H, W] float32 -> first output [N, classes], in batches (the batch axis is dynamic)."""
    input_name = session.get_inputs()[0].name
    chunks = [session.run(None, {input_name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(chunks)


def score(logits: np.ndarray, targets: np.ndarray, labels: list[str]) -> EvalReport:
    """Classification metrics from logits [N, classes] and integer targets [N]."""
    predicted = logits.argmax(1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0
    )
    # Cross-entropy in float64 via a stable log-softmax.
    z = logits.astype(np.float64) - logits.max(1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
    correct = int((predicted == targets).sum())
    return EvalReport(
        labels=list(labels),
        samples=len(targets),
        errors=len(targets) - correct,
        accuracy=correct / len(targets),
        macro_f1=float(np.mean(f1)),
        cross_entropy=float(-log_probs[np.arange(len(targets)), targets].mean()),
        per_class={
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        confusion=confusion_matrix(targets, predicted, labels=classes).tolist(),
    )


def score_checkpoint(checkpoint: Any, images: list[Image.Image], targets: np.ndarray) -> EvalReport:
    """Metrics of a training checkpoint's PyTorch model (before export), e.g. on the validation split."""
    import torch

    x = torch.from_numpy(render_batch(images, checkpoint.input_spec))
    with torch.no_grad():
        logits = checkpoint.build_model()(x).numpy()
    return score(logits, targets, checkpoint.labels)


def evaluate_onnx(
    model: str | Path | bytes,
    images: list[Image.Image],
    targets: np.ndarray,
    spec: InputSpec | None = None,
    labels: list[str] | None = None,
) -> EvalReport:
    """Render `images` with the model's input spec, run them through ORT, score against `targets`."""
    session = open_session(model)
    if spec is None or labels is None:
        props = (
            {p.key: p.value for p in onnx.load_model_from_string(model).metadata_props}
            if isinstance(model, bytes)
            else session.get_modelmeta().custom_metadata_map
        )
        meta = from_metadata_props(props)
        spec, labels = spec or meta.input, labels or meta.labels
    x = render_batch([image.convert(spec.color_mode) for image in images], spec)  # [N, C, H, W]
    return score(run_logits(session, x), targets, labels)


def evaluate_test_split(
    model_path: str | Path, data: str = "digits", split_seed: int = DEFAULT_SPLIT_SEED
) -> EvalReport:
    """Held-out test metrics of an exported model on a registered data source's test split."""
    labels = read_metadata(model_path).labels
    splits = load_dataset(data, split_seed)
    if labels != splits.labels:
        raise ValueError(f"model labels {labels} do not match the {data} labels {splits.labels}")
    return evaluate_onnx(model_path, splits.test.images, splits.test.targets)
