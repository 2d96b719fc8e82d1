"""The committed models/lenet5.onnx, measured now through ONNX Runtime on its recorded held-out split."""

import json
from pathlib import Path

import numpy as np
import pytest

from training.data import load_dataset
from training.evaluate import EvalReport, evaluate_onnx, read_metadata

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = MODELS / "lenet5.onnx"
CARD = MODELS / "lenet5"


def test_bundled_model_and_card_exist() -> None:
    # Not a skip: a missing bundled model is a broken checkout (`make models` rebuilds it).
    assert MODEL.is_file(), "models/lenet5.onnx is missing; run `make models`"
    for name in ("README.md", "split.json", "metrics.json", "training_curves.png", "confusion_matrix.png"):
        assert (CARD / name).is_file(), f"models/lenet5/{name} is missing; run `make models`"


@pytest.fixture(scope="module")
def recorded_split() -> dict:
    return json.loads((CARD / "split.json").read_text())


@pytest.fixture(scope="module")
def measured(recorded_split: dict) -> EvalReport:
    splits = load_dataset(recorded_split["dataset"], recorded_split["split_seed"])
    # The split the code computes today must be the one the model was built with and documented.
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(splits, part).source_indices, recorded_split[part]), part
    return evaluate_onnx(MODEL, splits.test.images, splits.test.targets)


def test_recorded_split_is_disjoint_and_complete(recorded_split: dict) -> None:
    parts = [set(recorded_split[p]) for p in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 1_797


def test_held_out_accuracy_is_at_least_98_percent(measured: EvalReport) -> None:
    assert measured.samples == 270
    assert measured.accuracy >= 0.98, f"{measured.errors} errors"


def test_metadata_metrics_match_the_measurement(measured: EvalReport) -> None:
    metrics = read_metadata(MODEL).metrics
    # Allow one sample of slack for a different CPU's floating-point rounding flipping an argmax.
    assert abs(metrics["test_accuracy"] - measured.accuracy) <= max(1e-9, 1 / measured.samples + 1e-12)
    assert metrics["test_samples"] == measured.samples


def test_model_card_reports_the_measured_accuracy(measured: EvalReport) -> None:
    recorded = json.loads((CARD / "metrics.json").read_text())
    assert abs(recorded["test"]["accuracy"] - measured.accuracy) <= max(1e-9, 1 / measured.samples + 1e-12)
    card = (CARD / "README.md").read_text()
    assert f"**{recorded['test']['accuracy']:.4f}**" in card
    for figure in ("training_curves.png", "confusion_matrix.png"):
        assert (CARD / figure).stat().st_size > 1_000
