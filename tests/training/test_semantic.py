"""Semantic segmentation: class maps from COCO annotations, mIoU, service-style decoding, training, export."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from service.contract import (
    InputSpec,
    Interpolation,
    ModelMetadata,
    OutputSpec,
    ResizePolicy,
    Task,
    from_metadata_props,
)
from service.preprocess import Geometry, prepare
from training import semantic as S
from training.decoding import decode_class_ids, served_model
from training.models.segmenter import SegmenterConfig, UNet

# ---------------------------------------------------------------------------------------------- class maps

CATEGORIES = [{"id": 7, "name": "square"}, {"id": 3, "name": "dot"}]  # unsorted ids on purpose


def _coco(annotations: list[dict], images: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    coco.createIndex()
    return coco


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def test_labels_start_with_background_then_categories_by_id() -> None:
    labels, class_of = S.labels_from_categories(CATEGORIES)
    assert labels == ["background", "dot", "square"]
    assert class_of == {3: 1, 7: 2}


def test_rasterise_draws_later_annotations_over_earlier_ones() -> None:
    dot = np.zeros((6, 8), dtype=bool)
    dot[3:6, 4:8] = True  # RLE, overlaps the square's lower right corner
    images = [{"id": 1, "width": 8, "height": 6, "file_name": "a.png"}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[2, 1, 6, 1, 6, 5, 2, 5]], "iscrowd": 0,
         "area": 16.0, "bbox": [2, 1, 4, 4]},  # polygon: pycocotools fills x 2..5, y 1..4
        {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _rle(dot), "iscrowd": 0, "area": 12.0,
         "bbox": [4, 3, 4, 3]},
    ]  # fmt: skip
    _labels, class_of = S.labels_from_categories(CATEGORIES)
    got = S.rasterise(_coco(annotations, images), 1, class_of)
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[1:5, 2:6] = 2  # square
    expected[3:6, 4:8] = 1  # dot, drawn later, on top
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)

    # Reversed order in the file: now the square covers the dot where they overlap.
    got = S.rasterise(_coco(annotations[::-1], images), 1, class_of)
    expected[1:5, 2:6] = 2
    np.testing.assert_array_equal(got, expected)


def test_image_without_annotations_is_all_background() -> None:
    images = [{"id": 5, "width": 7, "height": 3, "file_name": "empty.png"}]
    _labels, class_of = S.labels_from_categories(CATEGORIES)
    got = S.rasterise(_coco([], images), 5, class_of)
    np.testing.assert_array_equal(got, np.zeros((3, 7), dtype=np.uint8))


def test_load_coco_folder_matches_the_generators_class_maps(tmp_path: Path) -> None:
    from training.data import scenes

    scenes.write_dataset(tmp_path, 6, seed=3)
    data = S.load_coco(tmp_path)
    generated = S.generated_scenes(6, seed=3)
    assert data.labels == generated.labels == ["background", "circle", "square", "triangle", "person"]
    assert len(data) == 6
    for a, b, image in zip(data.maps, generated.maps, data.images, strict=True):
        np.testing.assert_array_equal(a, b)
        assert image.size == (a.shape[1], a.shape[0])


def test_letterbox_target_follows_prepare(tmp_path: Path) -> None:
    spec = InputSpec(height=8, width=8, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0, 0, 0), std=(1, 1, 1))
    class_map = np.zeros((4, 8), dtype=np.uint8)
    class_map[:, 4:] = 3
    x, target = S.render_pair(Image.new("RGB", (8, 4)), class_map, spec)
    assert x.shape == (3, 8, 8)
    assert (target[:2] == S.IGNORE).all() and (target[6:] == S.IGNORE).all()  # padding rows
    np.testing.assert_array_equal(target[2:6], class_map)


# ---------------------------------------------------------------------------------------------- mIoU


def test_miou_perfect_disjoint_and_absent_classes() -> None:
    truth = np.zeros((4, 4), dtype=np.uint8)
    truth[:2, :2] = 1
    truth[2:, 2:] = 2
    perfect = S.confusion(truth, truth, 5)
    assert S.mean_iou(perfect) == 1.0  # classes 3 and 4 are in neither map: left out, not NaN, not 0
    assert S.iou_per_class(perfect) == [1.0, 1.0, 1.0, None, None]

    swapped = np.where(truth == 1, 2, np.where(truth == 2, 1, 0))
    disjoint = S.confusion(swapped, truth, 5)
    assert S.mean_iou(disjoint) == 0.0
    assert S.iou_per_class(disjoint)[0] == 1.0  # background right, but excluded from mIoU

    half = truth.copy()
    half[0, :2] = 0  # 2 of class 1's 4 pixels missed: IoU 2/4; class 2 perfect
    conf = S.confusion(half, truth, 5)
    assert S.iou_per_class(conf)[1] == pytest.approx(0.5)
    assert S.mean_iou(conf) == pytest.approx(0.75)
    assert not np.isnan(S.mean_iou(conf))
    metrics = S.segmentation_metrics(conf, ["background", "a", "b", "c", "d"])
    assert metrics["mIoU"] == pytest.approx(0.75)
    assert metrics["pixel_accuracy"] == pytest.approx(14 / 16)
    assert "iou_c" not in metrics and metrics["iou_a"] == pytest.approx(0.5)


def test_miou_false_positive_of_absent_class_counts_and_ignored_pixels_do_not() -> None:
    truth = np.array([[1, 1, S.IGNORE, 0]])
    pred = np.array([[1, 1, 3, 3]])  # class 3 predicted on background: IoU 0 for class 3
    conf = S.confusion(pred, truth, 5)
    assert conf.sum() == 3  # the IGNORE pixel is not scored
    assert S.iou_per_class(conf)[3] == 0.0
    assert S.mean_iou(conf) == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert S.mean_iou(S.confusion(np.zeros((2, 2)), np.zeros((2, 2)), 5)) == 1.0  # nothing to find


# ---------------------------------------------------------------------------------------------- decoding


def _step_logits(rows_or_cols: str, spans: list[tuple[int, int, int]], size: int = 8) -> np.ndarray:
    """[3, size, size] logits: +5 for `cls` on rows/cols [a, b), background (class 0) elsewhere."""
    logits = np.full((3, size, size), -5.0, dtype=np.float32)
    logits[0] = 5.0
    for cls, a, b in spans:
        index = (slice(None), slice(a, b)) if rows_or_cols == "cols" else (slice(a, b), slice(None))
        logits[cls][index] = 5.0
        logits[0][index] = -5.0
    return logits


def _served_class_ids(logits: np.ndarray, geometry: Geometry, spec: InputSpec) -> np.ndarray:
    """What training's evaluation scores: the service's own decoding of a semantic model's logits."""
    meta = ModelMetadata(task=Task.SEMANTIC_SEGMENTATION, labels=[str(c) for c in range(len(logits))], input=spec,
                         outputs=[OutputSpec(name=S.OUTPUT_NAME, layout=S.OUTPUT_LAYOUT, kind="logits")],
                         model_version="1", architecture="test", training_data="none")
    return decode_class_ids(served_model(meta), [logits], geometry)


def test_decode_crops_letterbox_and_resizes_to_the_original_size() -> None:
    spec = InputSpec(height=8, width=8, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0, 0, 0), std=(1, 1, 1))
    # 16x8 (W x H) image -> 8x4 letterboxed at top=2: input rows 2-3 = original rows 0-3, rows 4-5 = 4-7.
    _x, geometry = prepare(Image.new("RGB", (16, 8)), spec)
    assert (geometry.offset_x, geometry.offset_y, geometry.scale_y) == (0.0, 2.0, 0.5)
    logits = _step_logits("rows", [(1, 2, 4), (2, 4, 6)])  # padding rows 0-1, 6-7 say background
    got = _served_class_ids(logits, geometry, spec)
    expected = np.zeros((8, 16), dtype=np.uint8)
    expected[:4], expected[4:] = 1, 2
    np.testing.assert_array_equal(got, expected)  # no background: the padding was cropped

    # A tall 4x8 image: padding left and right, input columns 2-3 and 4-5 hold the image.
    _x, geometry = prepare(Image.new("RGB", (4, 8)), spec)
    assert (geometry.offset_x, geometry.offset_y) == (2.0, 0.0)
    got = _served_class_ids(_step_logits("cols", [(1, 2, 4), (2, 4, 6)]), geometry, spec)
    expected = np.zeros((8, 4), dtype=np.uint8)
    expected[:, :2], expected[:, 2:] = 1, 2
    np.testing.assert_array_equal(got, expected)

    # Without cropping (plain resize of the whole input) the padding's background leaks in: the decode
    # above is not trivially right.
    whole = np.stack([np.asarray(Image.fromarray(c, "F").resize((16, 8), Image.Resampling.BILINEAR))
                      for c in _step_logits("rows", [(1, 2, 4), (2, 4, 6)])]).argmax(0)  # fmt: skip
    assert (whole == 0).any()


def test_decode_bilinear_boundary() -> None:
    spec = InputSpec(height=4, width=4, channels=3, resize=ResizePolicy.STRETCH, mean=(0, 0, 0), std=(1, 1, 1))
    _x, geometry = prepare(Image.new("RGB", (8, 8)), spec)  # 2x upscale, no padding
    logits = np.zeros((2, 4, 4), dtype=np.float32)
    logits[1, :, 2:] = 1.0  # class 1 ahead on the right half
    logits[1, :, :2] = -1.0
    got = _served_class_ids(logits, geometry, spec)
    np.testing.assert_array_equal(got[:, :4], 0)
    np.testing.assert_array_equal(got[:, 4:], 1)


# ---------------------------------------------------------------------------------------------- train, export

TINY_SPEC = InputSpec(
    height=32, width=32, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0.5,) * 3, std=(0.25,) * 3
)
TINY_ARCH = SegmenterConfig(widths=(4, 8))


def test_unet_output_has_the_input_resolution() -> None:
    model = UNet(SegmenterConfig(widths=(4, 8, 8))).eval()
    assert model(torch.zeros(2, 3, 32, 48)).shape == (2, 5, 32, 48)


@pytest.fixture(scope="module")
def scenes_small() -> S.SegmentationSet:
    return S.generated_scenes(20, seed=11)


def test_training_runs_and_checkpoint_round_trips(tmp_path: Path, scenes_small: S.SegmentationSet) -> None:
    config = S.SegTrainConfig(epochs=2, batch_size=8, val_fraction=0.1, threads=1)
    checkpoint = S.train_segmenter(scenes_small, config, TINY_ARCH, TINY_SPEC, log_path=tmp_path / "m.jsonl",
                                   progress=False)  # fmt: skip
    assert [r["epoch"] for r in checkpoint.history] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_mIoU"] <= 1 for r in checkpoint.history)
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
    assert checkpoint.data["val_images"] == 2 and checkpoint.data["train_images"] == 18
    path = checkpoint.save(tmp_path / "ck.pt")
    assert S.is_semantic_checkpoint(path)
    loaded = S.SegCheckpoint.load(path)
    assert loaded.labels == scenes_small.labels and loaded.input_spec == TINY_SPEC
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.build_model()(x), checkpoint.build_model()(x))


def _tiny_model() -> UNet:
    """Untrained, seeded, with non-trivial BatchNorm statistics so the exported normalisation matters."""
    torch.manual_seed(0)
    model = UNet(TINY_ARCH)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, scenes_small: S.SegmentationSet) -> S.SegExportResult:
    model = _tiny_model()
    checkpoint = S.SegCheckpoint(
        arch_config={"in_channels": 3, "num_classes": 5, "widths": [4, 8]},
        labels=list(scenes_small.labels),
        input_spec=TINY_SPEC,
        state_dict=model.state_dict(),
        data={"description": "untrained test model"},
    )
    heldout = scenes_small.subset(range(6))
    return S.export_segmenter(checkpoint, tmp_path_factory.mktemp("seg") / "tiny.onnx", heldout, heldout_seed=11)


def test_export_contract_and_parity_with_dynamic_batch(exported: S.SegExportResult) -> None:
    onnx.checker.check_model(str(exported.path), full_check=True)
    assert list(exported.path.parent.iterdir()) == [exported.path]
    assert exported.parity_max_abs_diff <= S.PARITY_ATOL
    meta = exported.metadata
    assert meta.task is Task.SEMANTIC_SEGMENTATION
    assert meta.labels == ["background", "circle", "square", "triangle", "person"]
    assert [(o.name, o.layout, o.kind) for o in meta.outputs] == [("logits", "batch,class,height,width", "logits")]
    assert meta.input.resize is ResizePolicy.LETTERBOX and meta.input.pad_value == 0
    for key in ("mIoU", "pixel_accuracy", "heldout_seed", "heldout_images"):
        assert key in meta.metrics

    session = S.open_session(exported.path)
    assert session.get_outputs()[0].name == "logits"
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch axis
    model = _tiny_model()
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    for batch in (x[:1], x):
        got = session.run(None, {"images": batch})[0]
        assert got.shape == (len(batch), 5, 32, 32)
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        assert np.abs(got - expected).max() <= 1e-3


def test_metrics_in_metadata_are_what_ort_measures(exported: S.SegExportResult) -> None:
    report = S.evaluate_onnx(exported.path, exported.heldout, seed=11)
    meta = from_metadata_props(S.open_session(exported.path).get_modelmeta().custom_metadata_map)
    assert report.metrics["mIoU"] == meta.metrics["mIoU"]
    assert meta.metrics["heldout_seed"] == 11 and meta.metrics["heldout_images"] == 6


def test_golden_samples_pass_and_catch_a_preprocessing_change(exported: S.SegExportResult) -> None:
    golden = exported.metadata.golden
    assert golden is not None and len(golden.samples) == S.GOLDEN_COUNT
    session = S.open_session(exported.path)
    spec = exported.metadata.input

    def worst(spec: InputSpec) -> float:
        diff = 0.0
        for sample in golden.samples:
            image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert("RGB")
            assert image.size == (160, 120)  # the scene as a user would send it, not the model input
            x, _ = prepare(image, spec)
            got = session.run(None, {"images": x[None]})[0].ravel()
            assert got.size == len(sample.expected) == 5 * 32 * 32
            diff = max(diff, float(np.abs(got - np.asarray(sample.expected)).max()))
        return diff

    assert worst(spec) <= golden.atol
    assert worst(spec.model_copy(update={"interpolation": Interpolation.NEAREST})) > golden.atol
    assert worst(spec.model_copy(update={"pad_value": 114})) > golden.atol


def test_metadata_is_json_and_small(exported: S.SegExportResult) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert json.loads(props["task"]) == "semantic_segmentation"
    assert exported.file_bytes < 5_000_000


def test_cli_trains_exports_and_evaluates_from_a_coco_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from training.cli import main
    from training.data import scenes

    scenes.write_dataset(tmp_path / "coco", 20, seed=4)
    run = tmp_path / "run"
    assert S.wants_semantic(["train", "--task", "semantic_segmentation", "--data", "x", "--out", "y"])
    assert not S.wants_semantic(["train", "--task", "detection", "--data", "x", "--out", "y"])
    main(["train", "--task", "semantic_segmentation", "--data", str(tmp_path / "coco"), "--out", str(run),
          "--input-size", "32", "--arch-option", "widths=[4,8]", "--epochs", "1", "--batch-size", "8",
          "--no-progress"])  # fmt: skip
    checkpoint = S.SegCheckpoint.load(run / "checkpoint.pt")
    assert checkpoint.arch_config["widths"] == [4, 8] and checkpoint.input_spec.width == 32
    assert "--task semantic_segmentation" in checkpoint.summary["command"]
    model = tmp_path / "seg.onnx"
    main(["export", str(run / "checkpoint.pt"), "--out", str(model), "--heldout-data", str(tmp_path / "coco")])
    capsys.readouterr()
    main(["evaluate", str(model), "--data", str(tmp_path / "coco"), "--json"])
    report = json.loads(capsys.readouterr().out)
    meta = from_metadata_props(S.open_session(model).get_modelmeta().custom_metadata_map)
    assert report["images"] == 20 and report["metrics"]["mIoU"] == meta.metrics["mIoU"]
    assert "heldout_seed" not in meta.metrics  # measured on a given COCO folder, not generated scenes
