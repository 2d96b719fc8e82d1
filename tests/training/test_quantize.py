"""int8 and fp16 variants of an exported classifier (the bundled LeNet-5, the smallest arch): the service
accepts them under the contract, int8 keeps accuracy within 1 point, and each variant's own golden
samples still catch preprocessing drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto

from service.app import create_app
from service.config import Settings
from tests.conftest import png_bytes, wait_until_loaded
from training.data import ImageSplits, load_dataset
from training.evaluate import evaluate_onnx, read_metadata
from training.export import write_metadata
from training.quantize import INT8_GOLDEN_ATOL, VariantResult, export_fp16, export_int8, read_file_metadata

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "lenet5.onnx"


@pytest.fixture(scope="module")
def splits() -> ImageSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory, splits: ImageSplits) -> dict[str, VariantResult]:
    models = tmp_path_factory.mktemp("models")
    fp32 = Path(shutil.copy(BUNDLED, models / "lenet5.onnx"))
    return {"int8": export_int8(None, fp32, splits), "fp16": export_fp16(None, fp32, splits)}


def test_int8_keeps_accuracy_within_one_point(variants: dict[str, VariantResult], splits: ImageSplits) -> None:
    int8 = variants["int8"]
    assert int8.path.name == "lenet5-int8.onnx"
    fp32 = evaluate_onnx(int8.path.with_name("lenet5.onnx"), splits.test.images, splits.test.targets)
    assert int8.test is not None and fp32.accuracy - int8.test.accuracy <= 0.01
    meta = read_metadata(int8.path)  # the service's own parser: contract-valid
    assert meta.precision == "int8" and meta.metrics["test_accuracy"] == int8.test.accuracy
    assert meta.golden is not None and meta.golden.atol == INT8_GOLDEN_ATOL
    ops = {node.op_type for node in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert int8.file_bytes < 0.5 * BUNDLED.stat().st_size


def test_fp16_weights_with_float32_io(variants: dict[str, VariantResult]) -> None:
    model = onnx.load(str(variants["fp16"].path))
    weights = [t for t in model.graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    meta = read_file_metadata(variants["fp16"].path)
    assert meta.precision == "fp16" and meta.golden is not None and meta.golden.atol > 1e-3


def test_service_serves_int8_and_lists_fp16_unavailable(
    variants: dict[str, VariantResult], splits: ImageSplits
) -> None:
    app = create_app(Settings(models_dir=variants["int8"].path.parent, providers=["CPUExecutionProvider"]))
    with TestClient(app) as client:
        wait_until_loaded(client)
        entries = app.state.registry.entries
        assert entries["lenet5-int8"].status == "ready", entries["lenet5-int8"].reason
        assert entries["lenet5-fp16"].status == "unavailable"  # fp16 on a CPU-only host
        assert client.get("/health/ready").status_code == 200
        image, label = splits.test.images[0], splits.labels[splits.test.targets[0]]
        response = client.post("/v1/classify?model=lenet5-int8&top_k=1", content=png_bytes(image),
                               headers={"content-type": "image/png"})  # fmt: skip
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == label


def test_int8_golden_samples_catch_preprocessing_drift(variants: dict[str, VariantResult], tmp_path: Path) -> None:
    model = onnx.load(str(variants["int8"].path))
    meta = read_file_metadata(variants["int8"].path)
    drifted = meta.input.model_copy(update={"mean": (0.2,)})  # a preprocessing change the weights never saw
    write_metadata(model, meta.model_copy(update={"input": drifted}))
    onnx.save(model, str(tmp_path / "drifted-int8.onnx"))
    app = create_app(Settings(models_dir=tmp_path, providers=["CPUExecutionProvider"]))
    with TestClient(app):
        wait_until_loaded(TestClient(app))
        entry = app.state.registry.entries["drifted-int8"]
        assert entry.status == "failed" and "golden" in (entry.reason or "").lower()
    assert np.isfinite(meta.golden.samples[0].expected).all()  # type: ignore[union-attr]
