"""The committed dense models, evaluated through ONNX Runtime on fresh generated scenes with pycocotools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from service.contract import Task, from_metadata_props
from training.dense.export import EVAL_COUNT, EVAL_SEED, evaluate_model

MODELS = Path(__file__).resolve().parents[2] / "models"

FLOORS = {
    "detector": {"box_map50": 0.95, "box_map": 0.70},
    "instance_seg": {"mask_map50": 0.90},
    "keypoints": {"oks_ap50": 0.85},
}
TASKS = {"detector": Task.DETECTION, "instance_seg": Task.INSTANCE_SEGMENTATION, "keypoints": Task.KEYPOINTS}


def _meta(path: Path):
    model = onnx.load(str(path))
    return model, from_metadata_props({p.key: p.value for p in model.metadata_props})


@pytest.fixture(scope="module", params=sorted(FLOORS))
def measured(request):
    path = MODELS / f"{request.param}.onnx"
    if not path.exists():
        pytest.fail(f"{path} is missing; run `make models`")
    return request.param, path, evaluate_model(path, EVAL_SEED, EVAL_COUNT)


def test_meets_floors(measured):
    name, _path, metrics = measured
    for key, floor in FLOORS[name].items():
        assert metrics[key] >= floor, f"{name}: {key} {metrics[key]:.4f} < {floor}"


def test_metadata_metrics_are_the_measured_ones(measured):
    name, path, metrics = measured
    _model, meta = _meta(path)
    assert meta.task is TASKS[name]
    assert meta.metrics["eval_seed"] == EVAL_SEED and meta.metrics["eval_count"] == EVAL_COUNT
    assert set(meta.metrics) == set(metrics)
    for key, value in metrics.items():
        assert meta.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_contract_sections_and_size(measured):
    name, path, _metrics = measured
    model, meta = _meta(path)
    assert path.stat().st_size < 5_000_000
    onnx.checker.check_model(model)
    kinds = [o.kind for o in meta.outputs]
    assert kinds[:2] == ["boxes", "scores"]
    assert meta.detection.strides == [8] and meta.detection.candidates == 256
    assert meta.input.resize.value == "letterbox" and meta.golden and len(meta.golden.samples) == 3
    assert len(meta.golden.samples[0].expected) == 256 * 4
    if name == "instance_seg":
        assert meta.masks.prototype_stride == 4 and meta.masks.threshold == 0.5
    if name == "keypoints":
        assert meta.labels == ["person"] and len(meta.keypoints.names) == 14
        assert all(0 <= a < 14 and 0 <= b < 14 for a, b in meta.keypoints.skeleton)
    assert np.isfinite(list(meta.metrics.values())).all()
