"""Shared fixtures: small hand-built ONNX classifiers with Stride metadata, and app clients."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.contract import (
    Golden,
    GoldenSample,
    InputSpec,
    ModelMetadata,
    OutputSpec,
    ResizePolicy,
    Task,
    to_metadata_props,
)
from service.preprocess import prepare

# Apps and servers the tests start leave the gRPC port (STRIDE_GRPC_PORT, default 8001) off unless a test
# asks for one: tests run side by side, and a fixed port would collide. Subprocesses inherit this.
os.environ.setdefault("STRIDE_GRPC_PORT", "0")
# ... and run one server process (STRIDE_WORKERS defaults to one per core): tests/service/test_workers.py
# starts several.
os.environ.setdefault("STRIDE_WORKERS", "1")

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = REPO / "models"

TINY_SPEC = InputSpec(height=8, width=8, channels=1, resize=ResizePolicy.STRETCH, mean=(0.5,), std=(0.5,))
TINY_LABELS = ["dark", "mid", "bright"]


def png_bytes(image: Image.Image, fmt: str = "PNG", **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def tiny_classifier_graph(spec: InputSpec = TINY_SPEC) -> onnx.ModelProto:
    """logits = mean(pixels) * [-4, 0, 4] + [0, 1, 0]: 'dark', 'mid' or 'bright' by mean brightness."""
    size = spec.channels * spec.height * spec.width
    weight = np.zeros((size, 3), dtype=np.float32)
    weight[:, 0], weight[:, 2] = -4.0 / size, 4.0 / size
    bias = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["images"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", spec.channels, spec.height, spec.width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def golden_for(model: onnx.ModelProto, spec: InputSpec, images: list[Image.Image]) -> Golden:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    samples = []
    for image in images:
        tensor, _ = prepare(image, spec)
        expected = session.run(None, {"images": tensor[np.newaxis]})[0][0]
        samples.append(GoldenSample(image_png_base64=base64.b64encode(png_bytes(image)).decode(),
                                    expected=[float(v) for v in expected]))
    return Golden(atol=1e-4, samples=samples)


def tiny_metadata(**overrides: object) -> ModelMetadata:
    fields: dict[str, object] = dict(
        task=Task.CLASSIFICATION,
        labels=TINY_LABELS,
        input=TINY_SPEC,
        outputs=[OutputSpec(name="logits", layout="batch,class", kind="logits")],
        model_version="test",
        architecture="linear",
        training_data="none: hand-set weights",
        metrics={},
    )
    fields.update(overrides)
    return ModelMetadata(**fields)


def write_model(path: Path, model: onnx.ModelProto, metadata: ModelMetadata | None) -> Path:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if metadata is not None:
        for key, value in to_metadata_props(metadata).items():
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A models directory holding one good tiny classifier, `tiny`, with golden samples."""
    graph = tiny_classifier_graph()
    goldens = [Image.new("L", (8, 8), v) for v in (0, 128, 255)]
    write_model(tmp_path / "tiny.onnx", graph, tiny_metadata(golden=golden_for(graph, TINY_SPEC, goldens)))
    return tmp_path


def wait_until_loaded(client: TestClient, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while client.app.state.registry.loading:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError("models did not load")
        time.sleep(0.01)


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """make_client(models_dir, **settings) -> a started TestClient whose models have finished loading."""
    clients: list[TestClient] = []

    def factory(models_dir: Path, **settings: object) -> TestClient:
        app = create_app(Settings(models_dir=models_dir, providers=["CPUExecutionProvider"], **settings))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_until_loaded(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient], tiny_model_dir: Path) -> TestClient:
    return make_client(tiny_model_dir)


def constant_outputs_graph(spec: InputSpec, outputs: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A graph whose outputs are fixed arrays ([1, ...], broadcast over the batch), whatever the image:
    decoders can then be tested against exactly known model outputs."""
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    initializers = [numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")]
    value_infos = []
    for name, value in outputs.items():
        shape = np.array([-1] + [1] * (value.ndim - 1), dtype=np.int64)
        initializers += [numpy_helper.from_array(value.astype(np.float32), f"{name}_value"),
                         numpy_helper.from_array(shape, f"{name}_shape")]
        nodes += [helper.make_node("Reshape", ["nothing", f"{name}_shape"], [f"{name}_zero"]),
                  helper.make_node("Add", [f"{name}_zero", f"{name}_value"], [name])]
        value_infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *value.shape[1:]]))
    graph = helper.make_graph(
        nodes, "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", spec.channels, spec.height, spec.width])],
        value_infos, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
