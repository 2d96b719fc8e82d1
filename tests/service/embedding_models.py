"""Hand-built embedding and detection models whose answers are known exactly, for the embed and collections
tests. The embedder's vector is the mean of each normalised channel (pixel / 127.5 - 1): a pure red image
gives [1, -1, -1], so cosine similarities between solid colours are known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from service.contract import DetectionSpec, EmbeddingSpec, InputSpec, ModelMetadata, OutputSpec, ResizePolicy, Task
from tests.conftest import constant_outputs_graph, golden_for, write_model

COLOUR_SPEC = InputSpec(height=8, width=8, channels=3, resize=ResizePolicy.STRETCH, mean=(0.5, 0.5, 0.5),
                        std=(0.5, 0.5, 0.5))
THRESHOLD = 0.9
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def colour_embedder_graph() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["embedding"], axes=[2, 3], keepdims=0)],
        "colour_embedder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def colour_embedder_metadata(threshold: float | None = THRESHOLD) -> ModelMetadata:
    graph = colour_embedder_graph()
    return ModelMetadata(
        task=Task.EMBEDDING, input=COLOUR_SPEC,
        outputs=[OutputSpec(name="embedding", layout="batch,dimension", kind="embedding")],
        model_version="test", architecture="channel means", training_data="none: no weights",
        golden=golden_for(graph, COLOUR_SPEC, [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]),
        embedding=EmbeddingSpec(normalized=False, threshold=threshold))


def write_colour_embedder(path: Path, threshold: float | None = THRESHOLD) -> Path:
    return write_model(path, colour_embedder_graph(), colour_embedder_metadata(threshold))


def write_fixed_box_detector(path: Path, box: tuple[float, float, float, float], score: float = 0.9) -> Path:
    """A detector (8 x 8 stretched input) that finds one 'thing' at `box` (input pixels) in every image."""
    graph = constant_outputs_graph(COLOUR_SPEC, {"boxes": np.array([[box]], np.float32),
                                                 "scores": np.array([[[score]]], np.float32)})
    meta = ModelMetadata(
        task=Task.DETECTION, labels=["thing"], input=COLOUR_SPEC,
        outputs=[OutputSpec(name="boxes", layout="batch,candidate,xyxy", kind="boxes"),
                 OutputSpec(name="scores", layout="batch,candidate,class", kind="scores")],
        model_version="test", architecture="constant", training_data="none", detection=DetectionSpec())
    return write_model(path, graph, meta)


def expected_vector(colour: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(colour, dtype=np.float64) / 127.5 - 1


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.new("RGB", size, colour)
