"""The one export module: a self-contained file, a dynamic batch, parity per output, metadata the service
parses, golden samples it replays, metrics of the saved file, and the int8 / fp16 variants. LeNet-5 with
untrained weights is the example (export checks do not need a trained model); every architecture goes
through the same code in tests/training/test_registry.py."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.contract import from_metadata_props
from service.preprocess import prepare
from tests.conftest import png_bytes, wait_until_loaded
from training.checkpoint import Checkpoint
from training.data import ImageSplits, load_dataset
from training.export import (
    INT8_GOLDEN_ATOL,
    ExportError,
    ExportResult,
    VariantResult,
    check_parity,
    export_checkpoint,
    export_fp16,
    export_int8,
    read_metadata,
    trace_to_onnx,
    write_metadata,
)
from training.registry import get_arch
from training.tasks import get_task
from training.tasks.base import EvalRequest


@pytest.fixture(scope="module")
def splits() -> ImageSplits:
    return load_dataset("digits")


def untrained(arch_name: str, seed: int, labels: list[str]) -> Checkpoint:
    torch.manual_seed(seed)
    arch = get_arch(arch_name)
    config = arch.make_config({"num_classes": len(labels)})
    return Checkpoint(task="classification", arch=arch_name, arch_config=arch.config_to_dict(config), labels=labels,
                      input_spec=arch.default_input, state_dict=arch.build(config).state_dict(),
                      data={"name": "digits", "split_seed": 0, "description": "digits"})


@pytest.fixture(scope="module")
def checkpoint(splits: ImageSplits) -> Checkpoint:
    return untrained("lenet5", 0, list(splits.labels))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoint: Checkpoint) -> ExportResult:
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "lenet5.onnx")


@pytest.fixture(scope="module")
def session(exported: ExportResult) -> ort.InferenceSession:
    return ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


def test_file_is_self_contained_and_checker_clean(exported: ExportResult) -> None:
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not any(node.metadata_props for node in model.graph.node)  # no source paths of the build machine


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_dynamic_batch(session: ort.InferenceSession, batch: int) -> None:
    x = np.zeros((batch, 1, 32, 32), dtype=np.float32)
    assert session.run(None, {"images": x})[0].shape == (batch, 10)


def test_parity_is_measured_per_output_and_refused_above_tolerance(checkpoint: Checkpoint) -> None:
    model = checkpoint.build_model()
    x = np.random.default_rng(0).normal(size=(6, 1, 32, 32)).astype(np.float32)
    proto, _exporter = trace_to_onnx(model, torch.from_numpy(x[:2]), "images", ["logits"])
    assert check_parity(proto, model, x, {"logits": 1e-4})["logits"] < 1e-4
    other = untrained("lenet5", 1, checkpoint.labels).build_model()  # different weights: parity must fail
    with pytest.raises(ExportError, match="logits max abs diff"):
        check_parity(proto, other, x, {"logits": 1e-4})


def test_metadata_round_trips_through_the_contract(exported: ExportResult, session: ort.InferenceSession) -> None:
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    assert meta == exported.metadata and meta.task.value == "classification"
    assert [o.name for o in meta.outputs] == ["logits"] and meta.input.name == "images"
    assert "lenet5" in meta.architecture and meta.training_data


def test_golden_samples_replay_like_the_service(session: ort.InferenceSession) -> None:
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    assert meta.golden is not None and len(meta.golden.samples) >= 4
    for sample in meta.golden.samples:
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert("L")
        x, _ = prepare(image, meta.input)
        got = session.run(None, {"images": x[None]})[0].ravel()
        assert np.abs(got - np.asarray(sample.expected)).max() <= meta.golden.atol


def test_metrics_are_those_of_the_saved_file(exported: ExportResult, checkpoint: Checkpoint) -> None:
    task = get_task("classification")
    again = task.evaluate(exported.path, exported.metadata, task.eval_request_for(checkpoint))
    assert exported.metadata.metrics == again.metrics == exported.evaluation.metrics
    assert again.metrics["test_samples"] > 0


def test_another_held_out_request_is_honoured(checkpoint: Checkpoint, tmp_path: Path) -> None:
    result = export_checkpoint(checkpoint, tmp_path / "m.onnx", evaluation=EvalRequest(data="digits", seed=1))
    default = get_task("classification").evaluate(result.path, result.metadata, EvalRequest(data="digits", seed=0))
    assert result.metadata.metrics != default.metrics  # another split seed: another test split


BUNDLED = Path(__file__).resolve().parents[2] / "models" / "lenet5.onnx"


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, splits: ImageSplits) -> dict[str, VariantResult]:
    """Variants of the bundled (trained) LeNet-5: drift and accuracy checks need a model that has learnt."""
    fp32 = Path(shutil.copy(BUNDLED, tmp_path_factory.mktemp("variants") / "lenet5.onnx"))
    task = get_task("classification")

    def evaluate(path: Path, metadata: object) -> object:
        return task.evaluate(path, metadata, EvalRequest(data="digits", seed=0))  # type: ignore[arg-type]

    return {"int8": export_int8(fp32, splits.train.images, evaluate),  # type: ignore[arg-type]
            "fp16": export_fp16(fp32, evaluate)}  # type: ignore[arg-type]


def test_int8_is_quantised_keeps_accuracy_and_has_its_own_golden(variants: dict[str, VariantResult]) -> None:
    int8 = variants["int8"]
    assert int8.path.name == "lenet5-int8.onnx" and int8.evaluation is not None
    fp32 = read_metadata(BUNDLED).metrics["test_accuracy"]
    assert fp32 - int8.evaluation.metrics["test_accuracy"] <= 0.01
    meta = read_metadata(int8.path)
    assert meta.precision == "int8" and meta.metrics == int8.evaluation.metrics
    assert meta.golden is not None and meta.golden.atol == INT8_GOLDEN_ATOL
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8.path)).graph.node}


def test_fp16_weights_with_float32_io(variants: dict[str, VariantResult]) -> None:
    model = onnx.load(str(variants["fp16"].path))
    weights = [t for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    meta = read_metadata(variants["fp16"].path)
    assert meta.precision == "fp16" and meta.golden is not None and meta.golden.atol > 1e-3


def test_service_serves_int8_and_lists_fp16_unavailable(variants: dict[str, VariantResult],
                                                         splits: ImageSplits) -> None:
    app = create_app(Settings(models_dir=variants["int8"].path.parent, providers=["CPUExecutionProvider"]))
    with TestClient(app) as client:
        wait_until_loaded(client)
        entries = app.state.registry.entries
        assert entries["lenet5-int8"].status == "ready", entries["lenet5-int8"].reason
        assert entries["lenet5-fp16"].status == "unavailable"  # fp16 on a CPU-only host
        response = client.post("/v1/classify?model=lenet5-int8&top_k=1", content=png_bytes(splits.test.images[0]),
                               headers={"content-type": "image/png"})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] in splits.labels


def test_golden_samples_catch_preprocessing_drift(variants: dict[str, VariantResult], tmp_path: Path) -> None:
    model = onnx.load(str(variants["int8"].path))
    meta = read_metadata(variants["int8"].path)
    drifted = meta.input.model_copy(update={"mean": (0.2,)})  # a preprocessing change the weights never saw
    write_metadata(model, meta.model_copy(update={"input": drifted}))
    onnx.save(model, str(tmp_path / "drifted-int8.onnx"))
    app = create_app(Settings(models_dir=tmp_path, providers=["CPUExecutionProvider"]))
    with TestClient(app) as client:
        wait_until_loaded(client)
        entry = app.state.registry.entries["drifted-int8"]
        assert entry.status == "failed" and "golden" in (entry.reason or "").lower()
