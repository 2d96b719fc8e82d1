"""Loading rules: contract violations, golden drift and shape mismatches fail one model, not the service."""

from pathlib import Path

from PIL import Image

from service.config import Settings
from service.contract import InputSpec
from service.registry import ModelRegistry, ModelStatus
from tests.conftest import TINY_SPEC, golden_for, tiny_classifier_graph, tiny_metadata, write_model


def load(models_dir: Path, **settings: object) -> ModelRegistry:
    registry = ModelRegistry(Settings(models_dir=models_dir, providers=["CPUExecutionProvider"], **settings))
    registry.load_all()
    return registry


def test_good_model_loads_on_cpu(tiny_model_dir: Path) -> None:
    entry = load(tiny_model_dir).get("tiny")
    assert entry.status is ModelStatus.READY and entry.provider == "CPUExecutionProvider"
    assert entry.load_seconds is not None


def test_model_without_metadata_is_failed_with_a_reason(tmp_path: Path) -> None:
    write_model(tmp_path / "bare.onnx", tiny_classifier_graph(), None)
    entry = load(tmp_path).get("bare")
    assert entry.status is ModelStatus.FAILED
    assert "bare.yaml" in entry.reason and "python -m service inspect bare.onnx" in entry.reason


def test_golden_drift_refuses_the_model(tmp_path: Path) -> None:
    graph = tiny_classifier_graph()
    golden = golden_for(graph, TINY_SPEC, [Image.new("L", (8, 8), 200)])
    tampered = golden.model_copy(update={"samples": [golden.samples[0].model_copy(
        update={"expected": [v + 0.01 for v in golden.samples[0].expected]})]})
    write_model(tmp_path / "drift.onnx", graph, tiny_metadata(golden=tampered))
    write_model(tmp_path / "fine.onnx", graph, tiny_metadata(golden=golden))
    registry = load(tmp_path)
    drift = registry.get("drift")
    assert drift.status is ModelStatus.FAILED
    assert "golden sample 0 drifted" in (drift.reason or "") and "preprocessing" in (drift.reason or "")
    assert registry.get("fine").status is ModelStatus.READY
    assert registry.readiness() == (True, "ok")


def test_preprocessing_drift_is_caught(tmp_path: Path) -> None:
    """Golden outputs recorded with one normalisation, served with another: the check must notice."""
    graph = tiny_classifier_graph()
    recorded = TINY_SPEC.model_copy(update={"mean": (0.45,)})
    golden = golden_for(graph, recorded, [Image.new("L", (8, 8), 180)])
    write_model(tmp_path / "m.onnx", graph, tiny_metadata(golden=golden))  # metadata says mean 0.5
    entry = load(tmp_path).get("m")
    assert entry.status is ModelStatus.FAILED, "drift between recorded and served preprocessing went unseen"
    assert load(tmp_path, verify_golden=False).get("m").status is ModelStatus.READY


def test_input_shape_must_match_the_metadata(tmp_path: Path) -> None:
    graph = tiny_classifier_graph(InputSpec(height=4, width=16, channels=1, resize="stretch", mean=(0,), std=(1,)))
    write_model(tmp_path / "shape.onnx", graph, tiny_metadata())  # metadata says 8x8
    entry = load(tmp_path).get("shape")
    assert entry.status is ModelStatus.FAILED and "input axis 2" in (entry.reason or "")
