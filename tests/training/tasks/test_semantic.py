"""The semantic_segmentation plug-in: class maps from COCO and generated scenes, crops, loss, mIoU, and a tiny
prepare -> trainer.fit -> Checkpoint -> export -> evaluate -> card run through the framework."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from service.contract import InputSpec, ResizePolicy, Task
from training.cards import CardContext, write_card
from training.checkpoint import Checkpoint
from training.export import ExportResult, export_checkpoint, read_metadata
from training.registry import archs_for
from training.tasks import get_task
from training.tasks import semantic as S
from training.tasks.base import EvalRequest, Prepared, TrainRequest
from training.trainer import FitResult, TrainerConfig, fit

torch.set_num_threads(1)  # two long trainings share this machine

SCENE_LABELS = ["background", "circle", "square", "triangle", "person"]
CATEGORIES = [{"id": 7, "name": "square"}, {"id": 3, "name": "dot"}]  # unsorted ids on purpose
WIDE_SPEC = InputSpec(height=8, width=8, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0, 0, 0), std=(1, 1, 1))


# ---------------------------------------------------------------------------------------------- registration
def test_the_task_is_registered_with_its_config_and_arch() -> None:
    plugin = get_task(S.TASK)
    assert plugin is S.PLUGINS[S.TASK] and plugin.name == S.TASK
    assert plugin.config_cls is S.SegTrainConfig and issubclass(S.SegTrainConfig, TrainerConfig)
    assert plugin.default_arch in archs_for(S.TASK) and plugin.default_data == "scenes"
    assert plugin.parity_atol == {"logits": 1e-3}


@pytest.mark.parametrize(("name", "value"), [
    ("epochs", 30), ("batch_size", 8), ("lr", 3e-3), ("weight_decay", 1e-4), ("warmup_epochs", 0.3),
    ("dice_weight", 0.5), ("hflip", True), ("crop", 64), ("object_crop_p", 0.5), ("val_fraction", 0.05),
    ("max_minutes", 18.0), ("threads", 1),
])  # fmt: skip
def test_config_defaults_are_the_bundled_models(name: str, value: object) -> None:
    assert getattr(S.SegTrainConfig(), name) == value


def test_config_has_no_batchnorm_recalibration() -> None:
    assert "bn_images" not in asdict(S.SegTrainConfig())


# ---------------------------------------------------------------------------------------------- class maps
def _coco(annotations: list[dict], images: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    coco.createIndex()
    return coco


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.mark.parametrize(("categories", "labels", "class_of"), [
    (CATEGORIES, ["background", "dot", "square"], {3: 1, 7: 2}),
    ([], ["background"], {}),
])  # fmt: skip
def test_labels_start_with_background_then_categories_by_id(categories: list[dict], labels: list[str],
                                                            class_of: dict[int, int]) -> None:
    assert S.labels_from_categories(categories) == (labels, class_of)


SQUARE = {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[2, 1, 6, 1, 6, 5, 2, 5]], "iscrowd": 0,
          "area": 16.0, "bbox": [2, 1, 4, 4]}  # polygon: pycocotools fills x 2..5, y 1..4
DOT_MASK = np.zeros((6, 8), dtype=bool)
DOT_MASK[3:6, 4:8] = True  # overlaps the square's lower right corner
DOT = {"id": 2, "image_id": 1, "category_id": 3, "segmentation": _rle(DOT_MASK), "iscrowd": 0, "area": 12.0,
       "bbox": [4, 3, 4, 3]}


def _square_then_dot() -> np.ndarray:
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[1:5, 2:6] = 2
    expected[3:6, 4:8] = 1  # the dot, drawn later, on top
    return expected


def _dot_then_square() -> np.ndarray:
    expected = np.zeros((6, 8), dtype=np.uint8)
    expected[3:6, 4:8] = 1
    expected[1:5, 2:6] = 2  # the square, drawn later, on top
    return expected


@pytest.mark.parametrize(("annotations", "expected"), [
    ([SQUARE, DOT], _square_then_dot()),
    ([DOT, SQUARE], _dot_then_square()),
    ([], np.zeros((6, 8), dtype=np.uint8)),  # no annotation: all background
])  # fmt: skip
def test_rasterise_draws_annotations_in_order(annotations: list[dict], expected: np.ndarray) -> None:
    images = [{"id": 1, "width": 8, "height": 6, "file_name": "a.png"}]
    _labels, class_of = S.labels_from_categories(CATEGORIES)
    got = S.rasterise(_coco(annotations, images), 1, class_of)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("json_at", "given"), [
    ("instances.json", "."),
    ("annotations/instances_val.json", "."),
    ("mine.json", "mine.json"),  # the file itself
])  # fmt: skip
def test_find_annotations(tmp_path: Path, json_at: str, given: str) -> None:
    (tmp_path / json_at).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / json_at).write_text("{}")
    assert S.find_annotations(tmp_path / given) == tmp_path / json_at


def test_find_annotations_of_an_empty_folder_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"instances\.json"):
        S.find_annotations(tmp_path)


def test_load_coco_folder_matches_the_generators_class_maps(tmp_path: Path) -> None:
    from training.data import scenes

    scenes.write_dataset(tmp_path, 6, seed=3)
    data = S.load_coco(tmp_path)
    generated = S.generated_scenes(6, seed=3)
    assert data.labels == generated.labels == SCENE_LABELS
    assert len(data) == 6 and data.names[0] == "images/000000.png"
    for a, b, image in zip(data.maps, generated.maps, data.images, strict=True):
        np.testing.assert_array_equal(a, b)
        assert image.size == (a.shape[1], a.shape[0])
    assert len(S.load_coco(tmp_path, limit=2)) == 2
    assert len(data.subset([4, 1])) == 2 and data.subset([4, 1]).names == [data.names[4], data.names[1]]
    assert len(data.subset([])) == 0


def test_generated_scenes_share_their_first_scenes_across_counts() -> None:
    few, more = S.generated_scenes(2, seed=9), S.generated_scenes(3, seed=9)
    np.testing.assert_array_equal(few.maps[1], more.maps[1])
    assert len(S.generated_scenes(0, seed=9)) == 0


@pytest.mark.parametrize(("size", "image_rows", "image_cols"), [
    ((8, 4), slice(2, 6), slice(0, 8)),  # wide: padding rows above and below
    ((4, 8), slice(0, 8), slice(2, 6)),  # tall: padding columns left and right
])  # fmt: skip
def test_letterbox_target_follows_prepare(size: tuple[int, int], image_rows: slice, image_cols: slice) -> None:
    class_map = np.zeros((size[1], size[0]), dtype=np.uint8)
    class_map[:, size[0] // 2 :] = 3
    x, target = S.render_pair(Image.new("RGB", size), class_map, WIDE_SPEC)
    assert x.shape == (3, 8, 8)
    np.testing.assert_array_equal(target[image_rows, image_cols], class_map)
    outside = np.ones((8, 8), dtype=bool)
    outside[image_rows, image_cols] = False
    assert (target[outside] == S.IGNORE).all()


def test_render_pairs_flips_the_user_facing_image_and_handles_no_images() -> None:
    data = S.generated_scenes(2, seed=4)
    spec = InputSpec(height=32, width=32, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0,) * 3, std=(1,) * 3)
    x, y = S.render_pairs(data, [0, 1], spec, flips=[True, False])
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.int64
    mirrored = data.images[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mx, my = S.render_pair(mirrored, np.ascontiguousarray(data.maps[0][:, ::-1]), spec)
    np.testing.assert_array_equal(x[0].numpy(), mx)
    np.testing.assert_array_equal(y[0].numpy(), my)
    np.testing.assert_array_equal(x[1].numpy(), S.render_pair(data.images[1], data.maps[1], spec)[0])
    x, y = S.render_pairs(data, [], spec)
    assert x.shape == (0, 3, 32, 32) and y.shape == (0, 32, 32)


@pytest.mark.parametrize(("count", "fraction", "train", "val"), [
    (24, 0.25, 18, 6),
    (20, 0.05, 19, 1),
    (3, 0.05, 2, 1),  # at least one validation image when the fraction is positive
    (10, 0.0, 10, 0),
    (0, 0.05, 0, 0),
])  # fmt: skip
def test_validation_split_takes_the_last_images(count: int, fraction: float, train: int, val: int) -> None:
    got_train, got_val = S.validation_split(count, fraction)
    assert (len(got_train), len(got_val)) == (train, val)
    assert list(got_train) + list(got_val) == list(range(count))


# ---------------------------------------------------------------------------------------------- crops
def _one_object(height: int, width: int, cy: int, cx: int) -> torch.Tensor:
    y = torch.zeros(1, height, width, dtype=torch.int64)
    y[0, cy, cx] = 2
    return y


@pytest.mark.parametrize(("cy", "cx"), [(0, 0), (47, 63), (20, 30), (5, 60)])
def test_object_crops_always_contain_the_object(cy: int, cx: int) -> None:
    y = _one_object(48, 64, cy, cx)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        _x, crop = S.random_crops(y[:, None].float(), y, 16, 1.0, generator)
        assert crop.shape == (1, 16, 16) and (crop == 2).sum() == 1


def test_uniform_crops_miss_a_small_object_sometimes() -> None:
    y = _one_object(48, 64, 20, 30)
    generator = torch.Generator().manual_seed(0)
    found = [int((S.random_crops(y[:, None].float(), y, 16, 0.0, generator)[1] == 2).sum()) for _ in range(30)]
    assert 0 in found


@pytest.mark.parametrize(("height", "width", "size", "object_p", "expected"), [
    (12, 10, 8, 1.0, (8, 8)),  # no object pixel: placed uniformly
    (6, 10, 8, 0.5, (6, 6)),  # larger than the input: the input's shorter side
    (8, 8, 8, 0.0, (8, 8)),
])  # fmt: skip
def test_crops_are_aligned_and_sized(height: int, width: int, size: int, object_p: float,
                                     expected: tuple[int, int]) -> None:
    y = torch.randint(0, 255, (3, height, width), generator=torch.Generator().manual_seed(1))
    y[y > 4] = 0
    if object_p == 1.0:
        y.zero_()
    x = torch.stack([y.float(), -y.float()], 1)  # channels derived from the target: alignment is checkable
    cx, cy = S.random_crops(x, y, size, object_p, torch.Generator().manual_seed(2))
    assert cy.shape == (3, *expected) and cx.shape == (3, 2, *expected)
    torch.testing.assert_close(cx[:, 0], cy.float())
    torch.testing.assert_close(cx[:, 1], -cy.float())


def test_crops_of_an_empty_batch_and_reproducibility() -> None:
    x, y = S.random_crops(torch.zeros(0, 3, 8, 8), torch.zeros(0, 8, 8, dtype=torch.int64), 4, 0.5,
                          torch.Generator().manual_seed(0))
    assert x.shape == (0, 3, 4, 4) and y.shape == (0, 4, 4)
    y = torch.randint(0, 5, (4, 32, 32), generator=torch.Generator().manual_seed(3))
    a = S.random_crops(y[:, None].float(), y, 8, 0.5, torch.Generator().manual_seed(7))[1]
    b = S.random_crops(y[:, None].float(), y, 8, 0.5, torch.Generator().manual_seed(7))[1]
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- loss
def _logits_for(target: torch.Tensor, classes: int, confidence: float) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(target.clamp(max=classes - 1), classes).permute(0, 3, 1, 2).float()
    return (onehot * 2 - 1) * confidence


TARGET = torch.tensor([[[0, 1, 2, 2], [0, 1, S.IGNORE, 3]]])


@pytest.mark.parametrize(("predicted", "confidence", "dice_weight", "ce", "dice"), [
    (TARGET, 20.0, 0.5, 0.0, 0.0),  # confident and right: both losses ~0
    (TARGET, 0.0, 0.5, float(np.log(4)), None),  # uniform logits: cross-entropy log(classes)
    # all background, confidently: 40 on each of the 5 object pixels of 7 scored ones; Dice 1 - 1/(pixels + 1)
    (torch.zeros_like(TARGET), 20.0, 1.0, 40 * 5 / 7, (2 / 3 + 2 / 3 + 1 / 2) / 3),
    (TARGET, 20.0, 0.0, 0.0, None),  # no Dice term
])  # fmt: skip
def test_segmentation_losses(predicted: torch.Tensor, confidence: float, dice_weight: float, ce: float,
                             dice: float | None) -> None:
    logits = _logits_for(predicted, 4, confidence).requires_grad_()
    losses = S.segmentation_losses(logits, TARGET, dice_weight)
    assert float(losses["cross_entropy"].detach()) == pytest.approx(ce, abs=1e-3)
    assert ("dice" in losses) == (dice_weight > 0)
    if dice is not None:
        assert float(losses["dice"].detach()) == pytest.approx(dice, abs=1e-3)
    expected_total = losses["cross_entropy"] + dice_weight * losses.get("dice", torch.tensor(0.0))
    torch.testing.assert_close(losses["total"], expected_total)
    losses["total"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_loss_ignores_padding_and_is_zero_when_nothing_is_scored() -> None:
    logits = torch.randn(1, 4, 2, 4, requires_grad=True)
    padded = TARGET.clone()
    padded[0, 0, 0] = S.IGNORE
    other = logits.detach().clone()
    other[0, :, 0, 0] = torch.tensor([9.0, -9.0, -9.0, -9.0])  # only the ignored pixel changes
    torch.testing.assert_close(S.segmentation_losses(logits, padded, 0.5)["total"],
                               S.segmentation_losses(other, padded, 0.5)["total"])
    losses = S.segmentation_losses(logits, torch.full((1, 2, 4), S.IGNORE), 0.5)
    assert float(losses["total"].detach()) == 0.0 and set(losses) == {"total", "cross_entropy", "dice"}
    losses["total"].backward()
    assert logits.grad is not None and (logits.grad == 0).all()


# ---------------------------------------------------------------------------------------------- metrics
TRUTH = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
HALF = TRUTH.copy()
HALF[0, :2] = 0  # 2 of class 1's 4 pixels missed: IoU 2/4, class 2 perfect
SWAPPED = np.where(TRUTH == 1, 2, np.where(TRUTH == 2, 1, 0))


@pytest.mark.parametrize(("pred", "truth", "ious", "miou", "accuracy"), [
    (TRUTH, TRUTH, [1.0, 1.0, 1.0, None, None], 1.0, 1.0),  # absent classes left out, not NaN or 0
    (SWAPPED, TRUTH, [1.0, 0.0, 0.0, None, None], 0.0, 0.5),  # background right, but excluded from mIoU
    (HALF, TRUTH, [8 / 10, 0.5, 1.0, None, None], 0.75, 14 / 16),
    (np.array([[1, 1, 3, 3]]), np.array([[1, 1, S.IGNORE, 0]]), [0.0, 1.0, None, 0.0, None], 0.5, 2 / 3),
    (np.zeros((0, 0)), np.zeros((0, 0)), [None] * 5, 1.0, 0.0),  # nothing to score, nothing to get wrong
])  # fmt: skip
def test_iou_metrics(pred: np.ndarray, truth: np.ndarray, ious: list[float | None], miou: float,
                     accuracy: float) -> None:
    conf = S.confusion(pred, truth, 5)
    assert conf.sum() == (np.asarray(truth) < 5).sum()  # IGNORE pixels are not scored
    assert S.iou_per_class(conf) == pytest.approx(ious)
    assert S.mean_iou(conf) == pytest.approx(miou)
    metrics = S.segmentation_metrics(conf, ["background", "a", "b", "c", "d"])
    assert metrics["mIoU"] == pytest.approx(miou) and metrics["pixel_accuracy"] == pytest.approx(accuracy)
    present = {f"iou_{label}" for label, iou in zip("_abcd", ious, strict=True) if iou is not None and label != "_"}
    assert {k for k in metrics if k.startswith("iou_") and k != "iou_background"} == present


class ClassFromChannel(torch.nn.Module):
    """Confident logits for the class written in input channel 0 (the validation's model, made predictable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits_for(x[:, 0].long(), 4, 20.0)


@pytest.mark.parametrize(("predicted", "miou", "loss"), [
    (TARGET, 1.0, 0.0),
    (torch.zeros_like(TARGET), 0.0, 40 * 5 / 7),
    (TARGET[:0], 1.0, 0.0),  # no validation pixels: nothing to get wrong
])  # fmt: skip
def test_validation_metrics(predicted: torch.Tensor, miou: float, loss: float) -> None:
    x = predicted.clamp(max=3)[:, None].float().expand(-1, 3, -1, -1)
    metrics = S.validation_metrics(ClassFromChannel(), x, TARGET[: len(x)], 4)
    assert metrics == {"val_mIoU": pytest.approx(miou), "val_loss": pytest.approx(loss, abs=1e-3)}


# ---------------------------------------------------------------------------------------------- prepare
TINY = {"widths": [4, 8]}


def _request(**changes: object) -> TrainRequest:
    fields = {"data": "scenes", "arch": "unet", "arch_options": TINY, "image_size": 32, "count": 4, **changes}
    return TrainRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("request_", "config", "error", "match"), [
    (_request(image_size=34, arch_options={"widths": [4, 8, 8]}), S.SegTrainConfig(crop=32), ValueError,
     "input height 34"),
    (_request(), S.SegTrainConfig(crop=33), ValueError, "crop 33"),
    (_request(arch_options={**TINY, "num_classes": 3}), S.SegTrainConfig(crop=32), ValueError, "num_classes 3"),
    (_request(arch_options={"depth": 3}), S.SegTrainConfig(crop=32), ValueError, "no config option"),
    (_request(arch="dense"), S.SegTrainConfig(crop=32), ValueError, "does not serve"),
    (_request(data="/nonexistent/coco"), S.SegTrainConfig(crop=32), FileNotFoundError, r"instances\.json"),
])  # fmt: skip
def test_prepare_refuses_what_cannot_train(request_: TrainRequest, config: S.SegTrainConfig, error: type,
                                           match: str) -> None:
    with pytest.raises(error, match=match):
        S.SemanticPlugin().prepare(request_, config)


def test_prepare_refuses_a_dataset_without_images(tmp_path: Path) -> None:
    (tmp_path / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    with pytest.raises(ValueError, match="no images"):
        S.SemanticPlugin().prepare(_request(data=str(tmp_path)), S.SegTrainConfig(crop=32))


def test_prepare_flushes_denormals() -> None:
    torch.set_flush_denormal(False)
    S.SemanticPlugin().prepare(_request(), S.SegTrainConfig(crop=32))
    assert torch.tensor(1e-40, dtype=torch.float32).item() == 0.0  # a denormal, flushed to zero
    torch.set_flush_denormal(False)


def test_batches_are_crops_of_flipped_training_images() -> None:
    prepared = S.SemanticPlugin().prepare(_request(image_size=64, count=5),
                                          S.SegTrainConfig(crop=32, val_fraction=0.2))
    job = prepared.job
    assert job.train_size == 4 and job.monitor == "val_mIoU"
    x, y = job.batch(torch.tensor([3, 0]), torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and y.shape == (2, 32, 32)
    losses = job.loss(job.model, (x, y))
    assert set(losses) == {"total", "cross_entropy", "dice"}
    job.model.eval()
    with torch.no_grad():
        assert set(job.validate(job.model)) == {"val_mIoU", "val_loss"}  # type: ignore[misc]
    no_val = S.SemanticPlugin().prepare(_request(), S.SegTrainConfig(crop=32, val_fraction=0.0)).job
    assert no_val.validate is None and no_val.monitor == "" and no_val.train_size == 4


# ---------------------------------------------------------------------------------------------- end to end
CONFIG = S.SegTrainConfig(epochs=1, batch_size=8, crop=32, val_fraction=0.25, max_minutes=0.0, threads=1)
REQUEST = TrainRequest(data="scenes", arch="unet", arch_options=TINY, image_size=32, count=24)


def _checkpoint(request: TrainRequest, prepared: Prepared, result: FitResult) -> Checkpoint:
    """What the CLI saves after trainer.fit."""
    return Checkpoint(task=S.TASK, arch=request.arch, arch_config=prepared.arch_config, labels=prepared.labels,
                      input_spec=prepared.input_spec, state_dict=result.best_state, data=prepared.data,
                      train_config=asdict(CONFIG),
                      summary={"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "steps": result.steps,
                               "stopped_by": result.stopped_by, "train_seconds": result.seconds, "threads": 1,
                               **result.best_metrics, "command": "test", "notes": prepared.notes},
                      history=result.history, extra=prepared.extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Prepared, FitResult, Path]:
    folder = tmp_path_factory.mktemp("semantic")
    prepared = S.SemanticPlugin().prepare(REQUEST, CONFIG)
    result = fit(prepared.job, CONFIG, folder / "run", progress=False)
    path = _checkpoint(REQUEST, prepared, result).save(folder / "run" / "checkpoint.pt")
    return prepared, result, path


@pytest.fixture(scope="module")
def exported(trained: tuple[Prepared, FitResult, Path]) -> ExportResult:
    path = trained[2]
    return export_checkpoint(Checkpoint.load(path), path.parent.parent / "seg.onnx",
                             evaluation=EvalRequest(seed=5, count=8))


def test_prepare_records_the_data_and_the_size_used(trained: tuple[Prepared, FitResult, Path]) -> None:
    prepared, result, _path = trained
    assert prepared.labels == SCENE_LABELS
    assert prepared.arch_config["widths"] == [4, 8] and prepared.arch_config["num_classes"] == 5
    assert (prepared.input_spec.height, prepared.input_spec.width, prepared.input_spec.pad_value) == (32, 32, 0)
    description = prepared.data["description"]
    assert description.startswith("24 generated scenes") and f"seed {S.TRAIN_SCENES_SEED}" in description
    assert {k: v for k, v in prepared.data.items() if k != "description"} == {
        "name": "scenes", "seed": S.TRAIN_SCENES_SEED, "count": 24, "images": 24, "train_images": 18, "val_images": 6}
    assert len(prepared.notes) == 1 and "32x32" in prepared.notes[0] and "128x128" in prepared.notes[0]
    row = result.history[0]
    assert {"loss", "loss_cross_entropy", "loss_dice", "val_mIoU", "val_loss"} <= set(row)
    assert 0.0 <= row["val_mIoU"] <= 1.0 and np.isfinite(row["loss"])
    assert result.best_metrics.keys() == {"val_mIoU", "val_loss"} and result.steps == 3


def test_init_starts_from_the_checkpoints_weights_arch_and_input(trained: tuple[Prepared, FitResult, Path]) -> None:
    path = trained[2]
    prepared = S.SemanticPlugin().prepare(TrainRequest(data="scenes", arch="unet", count=4, init=str(path)),
                                          S.SegTrainConfig(crop=32))
    saved = Checkpoint.load(path)
    assert prepared.arch_config == saved.arch_config and prepared.input_spec == saved.input_spec
    for key, value in prepared.job.model.state_dict().items():
        torch.testing.assert_close(value, saved.state_dict[key])
    assert prepared.data["init"] == str(path)


def test_export_contract_and_metrics_keys(exported: ExportResult) -> None:
    meta = read_metadata(exported.path)
    assert meta == exported.metadata
    assert meta.task is Task.SEMANTIC_SEGMENTATION and meta.labels == SCENE_LABELS
    assert [(o.name, o.layout, o.kind) for o in meta.outputs] == [("logits", "batch,class,height,width", "logits")]
    assert meta.input.resize is ResizePolicy.LETTERBOX and meta.input.height == 32
    assert {"mIoU", "mIoU_with_background", "pixel_accuracy", "eval_seed", "eval_count"} <= set(meta.metrics)
    assert (meta.metrics["eval_seed"], meta.metrics["eval_count"]) == (5, 8)
    assert {k for k in meta.metrics if k.startswith("iou_")} <= {f"iou_{label}" for label in SCENE_LABELS}
    assert exported.parity["logits"] <= 1e-3
    assert exported.evaluation.details["confusion"] and exported.evaluation.details["seed"] == 5


def test_metrics_are_measured_again_the_same(exported: ExportResult) -> None:
    again = S.SemanticPlugin().evaluate(exported.path, exported.metadata, EvalRequest(seed=5, count=8))
    assert again.metrics == exported.metadata.metrics


class GreyLevelSession:
    """Stands in for an ONNX Runtime session: every pixel's logits say class round(grey / 50) of the image's
    centre pixel, so each image's answer is known and a mix-up between images of a batch shows."""

    def __init__(self, spec: InputSpec, classes: int) -> None:
        self.spec, self.classes = spec, classes

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=self.spec.name)]

    def run(self, _names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[self.spec.name]
        centre = x[:, 0, x.shape[2] // 2, x.shape[3] // 2] * self.spec.std[0] + self.spec.mean[0]
        classes = np.rint(centre / self.spec.scale / 50).astype(np.int64)
        logits = np.zeros((len(x), self.classes, *x.shape[2:]), dtype=np.float32)
        logits[np.arange(len(x)), classes] = 1.0
        return [logits]


def test_batched_evaluation_scores_each_images_own_outputs(exported: ExportResult) -> None:
    meta = exported.metadata
    classes = [k % 5 for k in range(S.EVAL_BATCH + 3)]  # two batches, the second one short
    images = [Image.new("RGB", (40 + k, 30), (50 * c,) * 3) for k, c in enumerate(classes)]
    session = GreyLevelSession(meta.input, len(meta.labels))
    maps = list(S.predicted_class_maps(session, images, meta))  # type: ignore[arg-type]
    assert [m.shape for m in maps] == [(30, 40 + k) for k in range(len(images))]  # each at its original size
    assert [np.unique(m).tolist() for m in maps] == [[c] for c in classes]
    assert list(S.predicted_class_maps(session, [], meta)) == []  # type: ignore[arg-type]


def test_evaluate_a_coco_folder_of_the_same_scenes(exported: ExportResult, tmp_path: Path) -> None:
    from training.data import scenes

    scenes.write_dataset(tmp_path / "coco", 6, seed=5)
    coco = S.SemanticPlugin().evaluate(exported.path, exported.metadata, EvalRequest(data=str(tmp_path / "coco")))
    generated = S.SemanticPlugin().evaluate(exported.path, exported.metadata, EvalRequest(seed=5, count=6))
    assert coco.metrics["eval_count"] == 6 and "eval_seed" not in coco.metrics
    assert {k: v for k, v in generated.metrics.items() if k != "eval_seed"} == coco.metrics
    assert "COCO dataset" in coco.description and "seed 5" in generated.description


@pytest.mark.parametrize(("change", "match"), [
    (lambda meta: meta.model_copy(update={"labels": ["background", "a", "b", "c", "d"]}), "held-out labels"),
    (lambda meta: meta, "no held-out images"),
])  # fmt: skip
def test_evaluate_refuses_data_it_cannot_score(exported: ExportResult, change: Callable, match: str) -> None:
    count = 0 if match == "no held-out images" else 2
    with pytest.raises(ValueError, match=match):
        S.SemanticPlugin().evaluate(exported.path, change(exported.metadata), EvalRequest(seed=5, count=count))


def test_card_has_the_tasks_sections(exported: ExportResult, trained: tuple[Prepared, FitResult, Path],
                                     tmp_path: Path) -> None:
    checkpoint = Checkpoint.load(trained[2])
    readme = write_card(tmp_path / "seg", checkpoint, exported, CardContext(name="seg", command="test"))
    text = readme.read_text()
    for title in ("## Per-class IoU (held-out)", "## Example predictions", "## Data, augmentation and loss"):
        assert title in text
    assert "| background |" in text and "| person |" in text
    sheet = Image.open(tmp_path / "seg" / S.EXAMPLES_FILE)
    assert sheet.size == (2 * (3 * 160 + 8), 2 * (4 * 120 + 12))  # 4 rows of input | truth | prediction
    assert json.loads((tmp_path / "seg" / "metrics.json").read_text())["heldout"] == exported.metadata.metrics
