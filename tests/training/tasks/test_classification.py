"""The classification plug-in: its options, augmentation, input spec, data split checks, scoring through the
service's decoder, and a tiny end to end run (prepare, fit, checkpoint, export, evaluate, card)."""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from service.contract import InputSpec, ResizePolicy
from service.results import Classification
from tests.training.folder_images import CLASSES, write_dataset
from training.cards import CardContext, write_card
from training.checkpoint import Checkpoint
from training.data import ImageSet, ImageSplits, load_dataset, render_batch
from training.export import ExportError, ExportResult, export_checkpoint
from training.registry import get_arch
from training.tasks import get_task
from training.tasks.base import EvalRequest, Prepared, TrainRequest
from training.tasks.classification import (
    PLUGINS,
    ClassificationPlugin,
    ClassifyConfig,
    augment,
    augment_crop,
    background_value,
    choose_input_spec,
    class_round_robin,
    describe_evaluation,
    evaluate_images,
    input_notes,
    load_splits,
    require_parts,
    resolve_augmentation,
    score,
    score_answers,
)
from training.trainer import FitResult, TrainerConfig, fit

SPEC = get_arch("lenet5").default_input
PLUGIN = PLUGINS["classification"]
RGB_SPEC = InputSpec(height=16, width=16, channels=3, resize=ResizePolicy.STRETCH, mean=(0.4, 0.5, 0.45),
                     std=(0.25, 0.2, 0.3))
TINY_RESNET = {"widths": [8, 16]}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> None:
    torch.set_num_threads(1)  # the machine is shared with long trainings


@pytest.fixture(scope="module")
def digits() -> ImageSplits:
    return load_splits("digits", 0)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("single") / "data", per_class=20)


def checkpoint_of(prepared: Prepared, arch: str, result: FitResult | None = None,
                  config: TrainerConfig | None = None) -> Checkpoint:
    """What the CLI saves after a run (or before one: the untrained weights)."""
    state = result.best_state if result else prepared.job.model.state_dict()
    return Checkpoint(task="classification", arch=arch, arch_config=prepared.arch_config, labels=prepared.labels,
                      input_spec=prepared.input_spec, state_dict=state, data=prepared.data,
                      train_config=asdict(config) if config else {},
                      summary={"best_epoch": result.best_epoch, "epochs_run": result.epochs_run} if result else {},
                      history=result.history if result else [], extra=prepared.extra)


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(("option", "value"), [
    ("epochs", 100), ("batch_size", 64), ("optimizer", "adamw"), ("lr", 3e-3), ("weight_decay", 1e-4),
    ("warmup_epochs", 2), ("label_smoothing", 0.1), ("patience", 30), ("threads", 0), ("augment", True),
    ("max_rotation", 15.0), ("max_scale", 0.15), ("max_translate", 0.10), ("augmentation", "auto"),
    ("crop_min_area", 0.6), ("hflip", True), ("jitter", 0.2), ("seed", 0), ("schedule", "cosine"),
])
def test_config_keeps_the_classifier_defaults(option: str, value: object) -> None:
    assert getattr(ClassifyConfig(), option) == value


def test_the_plugin_is_what_get_task_returns() -> None:
    plugin = get_task("classification")
    assert plugin is PLUGIN and isinstance(plugin, ClassificationPlugin)
    assert issubclass(plugin.config_cls, TrainerConfig) and plugin.config_cls is ClassifyConfig
    assert [(o.name, o.layout, o.kind) for o in plugin.outputs(None)] == [("logits", "batch,class", "logits")]  # type: ignore[arg-type]
    assert set(plugin.parity_atol) == {"logits"}


# ----------------------------------------------------------------------------------------- augmentation
def test_affine_augmentation_fills_with_background_not_zero() -> None:
    background = background_value(SPEC)
    assert background == pytest.approx(-0.306 / 0.324)
    blank = torch.full((4, 1, 32, 32), background)
    shifted = augment(blank, ClassifyConfig(max_translate=0.25), background, torch.Generator().manual_seed(0))
    assert torch.allclose(shifted, blank, atol=1e-5)


@pytest.mark.parametrize(("ranges", "moves"), [
    ({"max_rotation": 0.0, "max_scale": 0.0, "max_translate": 0.0}, False),
    ({}, True),
])
def test_affine_augmentation_moves_only_within_its_ranges(digits: ImageSplits, ranges: dict, moves: bool) -> None:
    x = torch.from_numpy(render_batch(digits.train.images[:4], SPEC))
    out = augment(x, ClassifyConfig(**ranges), background_value(SPEC), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-2) is not moves


def test_augmentation_of_an_empty_batch_is_empty() -> None:
    empty = torch.zeros(0, 1, 32, 32)
    assert augment(empty, ClassifyConfig(), background_value(SPEC), torch.Generator()).shape == empty.shape
    empty_rgb = torch.zeros(0, 3, 16, 16)
    assert augment_crop(empty_rgb, ClassifyConfig(), RGB_SPEC, torch.Generator()).shape == empty_rgb.shape


def test_crop_flip_jitter_keep_shapes_and_ranges() -> None:
    mean, std = torch.tensor(RGB_SPEC.mean).view(1, 3, 1, 1), torch.tensor(RGB_SPEC.std).view(1, 3, 1, 1)
    pixels = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x = (pixels - mean) / std
    out = augment_crop(x, ClassifyConfig(), RGB_SPEC, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    back = out * std + mean
    assert bool((back >= -1e-5).all() and (back <= 1 + 1e-5).all())  # still valid pixel values
    assert not torch.allclose(out, x, atol=1e-2)


@pytest.mark.parametrize(("hflip", "mirrored_range"), [(True, (10, 54)), (False, (0, 0))])
def test_flip_mirrors_about_half_the_images_when_on(hflip: bool, mirrored_range: tuple[int, int]) -> None:
    mean, std = torch.tensor(RGB_SPEC.mean).view(1, 3, 1, 1), torch.tensor(RGB_SPEC.std).view(1, 3, 1, 1)
    pixels = torch.zeros(64, 3, 16, 16)
    pixels[..., :8] = 1.0  # bright left half, dark right half
    config = ClassifyConfig(crop_min_area=1.0, jitter=0.0, hflip=hflip)
    out = augment_crop((pixels - mean) / std, config, RGB_SPEC, torch.Generator().manual_seed(0)) * std + mean
    left, right = out[..., :8].mean((1, 2, 3)), out[..., 8:].mean((1, 2, 3))
    assert bool(((left - right).abs() > 0.5).all())  # still a clean half/half image: crop area ~1
    low, high = mirrored_range
    assert low <= int((right > left).sum()) <= high


@pytest.mark.parametrize(("options", "folder", "expected"), [
    ({}, False, "affine"),
    ({}, True, "crop"),
    ({"augmentation": "crop"}, False, "crop"),
    ({"augmentation": "affine"}, True, "affine"),
    ({"augment": False}, True, "none"),
])
def test_augmentation_kind(options: dict, folder: bool, expected: str) -> None:
    assert resolve_augmentation(ClassifyConfig(**options), folder) == expected


# ------------------------------------------------------------------------------------------------ input
def gray_folder(root: Path) -> Path:
    for label in ("dark", "light"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            value = 40 + i if label == "dark" else 200 + i
            Image.new("L", (12, 10), value).save(root / label / f"{i}.png")
            Image.new("RGB", (12, 10), (value,) * 3).save(root / label / f"{i}.jpg")
    return root


def test_registered_data_keeps_the_architecture_spec(digits: ImageSplits) -> None:
    assert choose_input_spec("lenet5", digits) == SPEC
    resized = choose_input_spec("lenet5", digits, image_size=24)
    assert (resized.height, resized.width) == (24, 24) and resized.mean == SPEC.mean


def test_grayscale_folders_give_a_one_channel_measured_spec(tmp_path: Path) -> None:
    splits = load_dataset(str(gray_folder(tmp_path / "gray")))
    spec = choose_input_spec("resnet", splits)
    assert spec.channels == 1 and splits.extra["color_mode"] == "L"
    assert (spec.height, spec.width) == (16, 16)
    assert 0.3 < spec.mean[0] < 0.7 and spec.std[0] > 0.2  # measured on the training images


def test_colour_folders_are_measured_per_channel(single: Path) -> None:
    spec = choose_input_spec("alexnet", load_dataset(str(single)), image_size=24)
    assert (spec.channels, spec.height, spec.width) == (3, 24, 24)
    assert len(set(spec.mean)) == 3  # red, green and blue differ in these images


@pytest.mark.parametrize(("arch", "image_size", "expected"), [
    ("lenet5", 0, "input 32x32 (the architecture's default)"),
    ("lenet5", 64, "input 64x64 (--image-size 64; the architecture's default is 32x32)"),
    ("resnet", 8, "input 8x8 (--image-size 8; the architecture's default is 16x16)"),
])
def test_the_first_note_says_the_size_used_and_the_default(digits: ImageSplits, arch: str, image_size: int,
                                                          expected: str) -> None:
    notes = input_notes(arch, choose_input_spec(arch, digits, image_size), image_size, digits)
    assert notes == [expected]


# ------------------------------------------------------------------------------------------------- data
@pytest.mark.parametrize(("targets", "expected"), [
    ([], []),
    ([0, 0, 0], [0, 1, 2]),
    ([1, 0, 1, 0, 2], [1, 0, 4, 3, 2]),  # first of 0, 1, 2; then second of 0, 1
    ([2, 2, 1], [2, 0, 1]),
])
def test_class_round_robin(targets: list[int], expected: list[int]) -> None:
    assert class_round_robin(np.asarray(targets, dtype=np.int64)) == expected


def test_an_empty_part_is_refused(digits: ImageSplits) -> None:
    nothing = ImageSet([], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="val split"):
        require_parts(replace(digits, val=nothing))
    require_parts(digits)


def test_prepare_folder_data_records_the_split_and_the_size(single: Path) -> None:
    config = ClassifyConfig(epochs=1, threads=1)
    prepared = PLUGIN.prepare(TrainRequest(data=str(single), arch="resnet", arch_options=TINY_RESNET,
                                           image_size=8), config)
    assert prepared.labels == list(CLASSES)
    assert prepared.notes[0] == "input 8x8 (--image-size 8; the architecture's default is 16x16)"
    assert "augmentation: crop" in prepared.notes and prepared.extra == {"augmentation": "crop"}
    assert (prepared.input_spec.channels, prepared.input_spec.height) == (3, 8)
    assert prepared.arch_config["num_classes"] == 3 and prepared.arch_config["in_channels"] == 3
    split = prepared.data["split"]
    assert sorted(split) == ["test", "train", "val"] and len(split["train"]) == prepared.job.train_size == 42
    assert set(prepared.data) >= {"name", "split_seed", "description"}
    x, y = prepared.job.batch(torch.arange(5), torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 8, 8) and y.tolist() == [0] * 5
    losses = prepared.job.loss(prepared.job.model, (x, y))
    assert set(losses) == {"total"} and losses["total"].requires_grad
    assert prepared.job.validate is not None and prepared.job.monitor == "val_accuracy"
    assert set(prepared.job.validate(prepared.job.model.eval())) == {"val_accuracy", "val_loss"}


def test_fixed_size_architectures_get_the_size_in_their_config(single: Path) -> None:
    prepared = PLUGIN.prepare(TrainRequest(data=str(single), arch="gcn", image_size=8), ClassifyConfig())
    assert (prepared.arch_config["height"], prepared.arch_config["width"]) == (8, 8)


@pytest.mark.parametrize(("request_", "config", "error"), [
    (TrainRequest(data="digits", arch="lenet5"), TrainerConfig(), TypeError),
    (TrainRequest(data="digits", arch="unet"), ClassifyConfig(), ValueError),
    (TrainRequest(data="no/such/data", arch="lenet5"), ClassifyConfig(), ValueError),
])
def test_prepare_refuses(request_: TrainRequest, config: TrainerConfig, error: type[Exception]) -> None:
    with pytest.raises(error):
        PLUGIN.prepare(request_, config)


def test_export_refuses_a_folder_that_changed_since_training(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", per_class=10)
    prepared = PLUGIN.prepare(TrainRequest(data=str(root), arch="resnet", arch_options=TINY_RESNET, image_size=8),
                              ClassifyConfig())
    checkpoint = checkpoint_of(prepared, "resnet")
    assert len(PLUGIN.sample_images(checkpoint, 3, seed=0)) == 3  # unchanged: fine
    (root / prepared.data["split"]["test"][0]).unlink()
    with pytest.raises(ExportError, match="differ from those recorded"):
        PLUGIN.sample_images(checkpoint, 3, seed=0)


@pytest.mark.parametrize(("layout", "optimistic"), [("single", False), ("train/val", True)])
def test_the_description_warns_when_val_is_also_the_test_set(tmp_path: Path, layout: str, optimistic: bool) -> None:
    splits = load_dataset(str(write_dataset(tmp_path / "data", per_class=8, layout=layout)))
    text = describe_evaluation(splits, 0, len(splits.test))
    assert text.startswith(f"All {len(splits.test)} held-out test images")
    assert ("slightly optimistic" in text) is optimistic


# ------------------------------------------------------------------------------------------------ score
def answers(rows: list[list[float]]) -> list[Classification]:
    """Served answers as the decoder gives them: every class, best first."""
    out = []
    for row in rows:
        order = np.argsort(-np.asarray(row), kind="stable")
        out.append(Classification(class_ids=order, scores=np.asarray(row)[order]))
    return out


@pytest.mark.parametrize(("probabilities", "targets", "accuracy", "macro_f1", "confusion"), [
    ([[1.0, 0.0], [0.0, 1.0]], [0, 1], 1.0, 1.0, [[1, 0], [0, 1]]),
    ([[0.25, 0.75], [0.75, 0.25]], [0, 1], 0.0, 0.0, [[0, 1], [1, 0]]),
    ([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.4, 0.6]], [0, 0, 1, 1], 0.75, (2 / 3 + 0.8) / 2, [[1, 1], [0, 2]]),
])
def test_scores_of_served_answers(probabilities: list[list[float]], targets: list[int], accuracy: float,
                                  macro_f1: float, confusion: list[list[int]]) -> None:
    t = np.asarray(targets, dtype=np.int64)
    scores = score_answers(answers(probabilities), t, ["a", "b"])
    true_p = [row[k] for row, k in zip(probabilities, targets, strict=True)]
    assert scores.accuracy == pytest.approx(accuracy) and scores.macro_f1 == pytest.approx(macro_f1)
    assert scores.confusion == confusion and scores.samples == len(targets)
    assert scores.errors == round(len(targets) * (1 - accuracy))
    assert scores.cross_entropy == pytest.approx(-np.mean(np.log(np.maximum(true_p, np.finfo(float).tiny))))
    metrics = scores.metrics()
    assert list(metrics) == ["test_accuracy", "test_macro_f1", "test_cross_entropy", "test_samples", "test_errors"]
    assert sum(m["support"] for m in scores.details()["per_class"].values()) == len(targets)


def test_a_zero_probability_gives_a_finite_cross_entropy() -> None:
    scores = score(np.array([1]), np.array([0.0]), np.array([0]), ["a", "b"])
    assert math.isfinite(scores.cross_entropy) and scores.cross_entropy > 700


def test_nothing_to_score_is_an_error() -> None:
    empty = np.zeros(0, dtype=np.int64)
    with pytest.raises(ValueError, match="nothing to score"):
        score(empty, np.zeros(0), empty, ["a", "b"])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_images(b"", [], empty)


# ------------------------------------------------------------------------------------------- end to end
def train_digits(seed: int) -> tuple[Prepared, FitResult, ClassifyConfig]:
    config = ClassifyConfig(epochs=2, seed=seed, threads=1)
    prepared = PLUGIN.prepare(TrainRequest(data="digits", arch="lenet5"), config)
    return prepared, fit(prepared.job, config, progress=False), config


@pytest.fixture(scope="module")
def trained() -> tuple[Prepared, FitResult, ClassifyConfig]:
    return train_digits(0)


@pytest.fixture(scope="module")
def checkpoint(trained: tuple[Prepared, FitResult, ClassifyConfig]) -> Checkpoint:
    prepared, result, config = trained
    return checkpoint_of(prepared, "lenet5", result, config)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoint: Checkpoint) -> ExportResult:
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("export") / "lenet5.onnx")


def test_training_is_deterministic_for_a_seed(trained: tuple[Prepared, FitResult, ClassifyConfig]) -> None:
    prepared, first, _ = trained
    _, again, _ = train_digits(0)
    assert all(torch.equal(first.best_state[k], again.best_state[k]) for k in first.best_state)
    assert first.history == [{**row, "seconds": r["seconds"]} for row, r in zip(again.history, first.history,
                                                                                 strict=True)]
    assert prepared.notes[0] == "input 32x32 (the architecture's default)"
    assert prepared.data == {"name": "digits", "split_seed": 0, "description": prepared.data["description"],
                             "sizes": {"train": 1257, "val": 270, "test": 270}}
    assert set(first.best_metrics) == {"val_accuracy", "val_loss"} and first.best_metrics["val_accuracy"] > 0.5


def test_export_measures_the_saved_file_on_the_test_split(exported: ExportResult, digits: ImageSplits) -> None:
    metrics = exported.metadata.metrics
    assert metrics == exported.evaluation.metrics and metrics["test_samples"] == 270
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": render_batch(digits.test.images, SPEC)})[0]
    assert metrics["test_accuracy"] == float(np.mean(logits.argmax(1) == digits.test.targets))
    assert metrics["test_errors"] == pytest.approx(270 * (1 - metrics["test_accuracy"]))
    assert "split seed 0" in exported.evaluation.description


def test_golden_samples_are_the_first_test_image_of_each_class(exported: ExportResult, digits: ImageSplits) -> None:
    golden = exported.metadata.golden
    assert golden is not None and golden.atol == PLUGIN.golden_atol
    for cls, sample in enumerate(golden.samples):
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64)))
        first = digits.test.images[int(np.flatnonzero(digits.test.targets == cls)[0])]
        assert image.size == (8, 8) and image.tobytes() == first.tobytes()


@pytest.mark.parametrize(("count", "samples"), [(30, 30), (None, 270), (10_000, 270)])
def test_evaluate_counts_and_defaults(exported: ExportResult, count: int | None, samples: int) -> None:
    evaluation = PLUGIN.evaluate(exported.path, exported.metadata, EvalRequest(count=count))
    assert evaluation.metrics["test_samples"] == samples
    if samples == 270:
        assert evaluation.metrics == exported.metadata.metrics


def test_evaluate_refuses_data_with_other_labels(exported: ExportResult, single: Path) -> None:
    with pytest.raises(ValueError, match="do not match"):
        PLUGIN.evaluate(exported.path, exported.metadata, EvalRequest(data=str(single)))


def test_eval_request_and_calibration_use_the_checkpoint_split(checkpoint: Checkpoint, digits: ImageSplits) -> None:
    assert PLUGIN.eval_request_for(checkpoint) == EvalRequest(data="digits", seed=0)
    calibration = PLUGIN.calibration_images(checkpoint, 32)
    train_ids, held_out = {id(i) for i in digits.train.images}, {id(i) for i in digits.test.images + digits.val.images}
    assert len(calibration) == 32 and all(id(i) in train_ids and id(i) not in held_out for i in calibration)
    assert PLUGIN.calibration_images(checkpoint, 0) == []


def test_init_starts_from_a_checkpoint(checkpoint: Checkpoint, tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path / "start.pt")
    prepared = PLUGIN.prepare(TrainRequest(data="digits", arch="lenet5", init=str(path)), ClassifyConfig(seed=5))
    state = prepared.job.model.state_dict()
    assert all(torch.equal(state[k], checkpoint.state_dict[k]) for k in state)
    with pytest.raises(ValueError, match="not alexnet"):
        PLUGIN.prepare(TrainRequest(data="digits", arch="alexnet", init=str(path)), ClassifyConfig())


def test_card_has_the_confusion_matrix_split_and_flops(exported: ExportResult, checkpoint: Checkpoint,
                                                       tmp_path: Path) -> None:
    readme = write_card(tmp_path / "card", checkpoint, exported, CardContext(name="lenet5", command="train"))
    folder = readme.parent
    assert {"confusion_matrix.png", "split.json", "metrics.json", "training_curves.png"} <= {
        p.name for p in folder.iterdir()}
    split = json.loads((folder / "split.json").read_text())
    assert len(split["test"]) == 270 and split["split_seed"] == 0
    text = readme.read_text()
    assert "FLOPs per image" in text and "![confusion matrix](confusion_matrix.png)" in text
    assert "random rotation ±15.0°" in text  # the augmentation the run used
