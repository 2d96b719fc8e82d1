"""The committed zoo (models/{alexnet,inception,resnet,gcn}.onnx and their int8 variants), measured now
through ONNX Runtime on each model's recorded held-out split, against the accuracy floors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data import ImageSplits, load_dataset
from training.evaluate import evaluate_onnx, read_metadata

MODELS = Path(__file__).resolve().parents[2] / "models"
FLOORS = {"alexnet": 0.97, "inception": 0.97, "resnet": 0.985, "gcn": 0.90}
CARD_FILES = ("README.md", "split.json", "metrics.json", "training_curves.png", "confusion_matrix.png")


@pytest.fixture(scope="module")
def digits() -> ImageSplits:
    return load_dataset("digits")


def held_out(name: str, digits: ImageSplits) -> ImageSplits:
    recorded = json.loads((MODELS / name / "split.json").read_text())
    assert recorded["dataset"] == "digits" and recorded["split_seed"] == digits.split_seed
    for part in ("train", "val", "test"):  # today's split is the one the model was built and documented with
        assert np.array_equal(getattr(digits, part).source_indices, recorded[part]), f"{name} {part}"
    return digits


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_model_and_card_are_committed(name: str) -> None:
    assert (MODELS / f"{name}.onnx").is_file(), f"models/{name}.onnx is missing; run `make models`"
    for file in CARD_FILES:
        assert (MODELS / name / file).is_file(), f"models/{name}/{file} is missing; run `make models`"


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_held_out_accuracy_meets_the_floor(name: str, digits: ImageSplits) -> None:
    splits = held_out(name, digits)
    report = evaluate_onnx(MODELS / f"{name}.onnx", splits.test.images, splits.test.targets)
    assert report.samples == 270
    assert report.accuracy >= FLOORS[name], f"{name}: {report.accuracy:.4f} ({report.errors} errors)"
    metadata = read_metadata(MODELS / f"{name}.onnx")
    assert metadata.precision == "fp32"
    # One sample of slack for another CPU's rounding flipping an argmax.
    assert abs(metadata.metrics["test_accuracy"] - report.accuracy) <= 1 / 270 + 1e-12
    card = (MODELS / name / "README.md").read_text()
    recorded = json.loads((MODELS / name / "metrics.json").read_text())
    assert f"**{recorded['test']['accuracy']:.4f}**" in card and f"{recorded['flops_per_image']:,}" in card


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_int8_variant_keeps_accuracy(name: str, digits: ImageSplits) -> None:
    path = MODELS / f"{name}-int8.onnx"
    assert path.exists(), f"the bundle ships an int8 variant of every zoo model; {path.name} is missing"
    splits = held_out(name, digits)
    int8 = evaluate_onnx(path, splits.test.images, splits.test.targets)
    fp32 = evaluate_onnx(MODELS / f"{name}.onnx", splits.test.images, splits.test.targets)
    assert read_metadata(path).precision == "int8"
    assert fp32.accuracy - int8.accuracy <= 0.01 and int8.accuracy >= FLOORS[name]


def test_bundled_models_stay_small() -> None:
    ours = [MODELS / f"{n}{suffix}.onnx" for n in FLOORS for suffix in ("", "-int8")]
    total = sum(p.stat().st_size for p in ours if p.exists())
    assert total < 15_000_000, f"{total:,} bytes: every models/*.onnx is loaded at service start-up"
