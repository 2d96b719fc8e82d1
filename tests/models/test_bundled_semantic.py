"""The committed models/segmenter.onnx, measured now through ONNX Runtime on freshly generated held-out
scenes (the seed and count recorded in its metadata and card)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.contract import ModelMetadata, ResizePolicy, Task, from_metadata_props
from service.preprocess import prepare
from service.tasks.semantic import class_map as service_class_map
from training import semantic as S

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = MODELS / "segmenter.onnx"
CARD = MODELS / "segmenter"
MIOU_TARGET = 0.85


def test_bundled_model_and_card_exist() -> None:
    # Not a skip: a missing bundled model is a broken checkout (`make models` rebuilds it).
    assert MODEL.is_file(), "models/segmenter.onnx is missing; run `make models`"
    for name in ("README.md", "metrics.json", "training_curves.png", "example_predictions.png"):
        assert (CARD / name).is_file(), f"models/segmenter/{name} is missing; run `make models`"
    assert MODEL.stat().st_size < 5_000_000


@pytest.fixture(scope="module")
def meta() -> ModelMetadata:
    return from_metadata_props(S.open_session(MODEL).get_modelmeta().custom_metadata_map)


@pytest.fixture(scope="module")
def heldout(meta: ModelMetadata) -> S.SegmentationSet:
    return S.heldout_scenes(int(meta.metrics["heldout_seed"]), int(meta.metrics["heldout_images"]))


@pytest.fixture(scope="module")
def measured(heldout: S.SegmentationSet, meta: ModelMetadata) -> S.SegReport:
    return S.evaluate_onnx(MODEL, heldout, int(meta.metrics["heldout_seed"]))


def test_contract(meta: ModelMetadata) -> None:
    assert meta.task is Task.SEMANTIC_SEGMENTATION
    assert meta.labels == ["background", "circle", "square", "triangle", "person"]
    assert [(o.name, o.layout, o.kind) for o in meta.outputs] == [("logits", "batch,class,height,width", "logits")]
    spec = meta.input
    assert (spec.height, spec.width, spec.channels) == (128, 128, 3)
    assert spec.resize is ResizePolicy.LETTERBOX and spec.pad_value == 0 and spec.dynamic_batch
    onnx.checker.check_model(str(MODEL), full_check=True)


def test_heldout_seed_is_not_a_training_seed(meta: ModelMetadata) -> None:
    assert int(meta.metrics["heldout_seed"]) == S.HELDOUT_SEED != S.TRAIN_SEED
    assert int(meta.metrics["heldout_images"]) >= 100


def test_miou_meets_the_target_and_matches_the_metadata(measured: S.SegReport, meta: ModelMetadata) -> None:
    assert measured.metrics["mIoU"] >= MIOU_TARGET, measured.metrics
    # Same file, same scenes, same decoding: the same number (a tolerance of a few pixels for argmax ties
    # that another CPU's floating-point rounding could flip; one pixel moves an IoU by ~1e-5).
    for key in ("mIoU", "pixel_accuracy", "iou_circle", "iou_square", "iou_triangle", "iou_person"):
        assert measured.metrics[key] == pytest.approx(meta.metrics[key], abs=1e-4), key
    card = json.loads((CARD / "metrics.json").read_text())
    assert card["metadata_metrics"]["mIoU"] == meta.metrics["mIoU"]
    assert f"{meta.metrics['mIoU']:.4f}" in (CARD / "README.md").read_text()


def test_every_object_class_is_segmented(measured: S.SegReport) -> None:
    for label in ("circle", "square", "triangle", "person"):
        assert measured.metrics[f"iou_{label}"] >= 0.7, (label, measured.metrics)


def test_evaluation_scores_the_service_decoders_class_maps(heldout: S.SegmentationSet, meta: ModelMetadata) -> None:
    """The maps the metrics are computed on are, pixel for pixel, what the service's decoder answers."""
    session = S.open_session(MODEL)
    images = heldout.images[:5]
    maps = list(S.predict_maps(lambda x: session.run(None, {"images": x}), images, meta))
    for image, scored in zip(images, maps, strict=True):
        x, geometry = prepare(image, meta.input)
        logits = session.run(None, {"images": x[None]})[0][0]
        np.testing.assert_array_equal(service_class_map(logits, geometry).ids, scored)


def test_dynamic_batch_and_golden_samples(heldout: S.SegmentationSet, meta: ModelMetadata) -> None:
    session = S.open_session(MODEL)
    x = np.stack([prepare(image, meta.input)[0] for image in heldout.images[:3]])
    three = session.run(None, {"images": x})[0]
    assert three.shape == (3, 5, 128, 128)
    one = session.run(None, {"images": x[:1]})[0]
    np.testing.assert_allclose(one[0], three[0], atol=1e-4)
    assert meta.golden is not None and len(meta.golden.samples) >= 1
    # verify_saved replays the golden samples through PNG decoding + prepare + ORT, as the service does.
    from training.export import verify_saved

    verify_saved(MODEL, meta)
