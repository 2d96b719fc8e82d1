"""The dense plug-ins (detection, instance_segmentation, keypoints): target assignment, losses, samples and
flips, COCO scoring of served answers, and a tiny prepare -> trainer.fit -> Checkpoint -> export -> evaluate
(-> card) run per task through the framework. Decoding is the service's own (tests/service/tasks)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.contract import InputSpec, Task
from service.preprocess import Geometry
from service.results import Detections
from training.cards import CardContext, write_card
from training.checkpoint import Checkpoint
from training.data import scenes
from training.export import export_checkpoint
from training.models.detector import DenseConfig, DenseModel, output_names
from training.registry import get_arch
from training.tasks import dense as D
from training.tasks import get_task
from training.tasks.base import EvalRequest, TrainRequest
from training.tasks.dense_targets import HeadGeometry, assign, box_iou_pairs, dense_loss
from training.trainer import TrainerConfig, fit

TASKS = ("detection", "instance_segmentation", "keypoints")
# small enough for a CPU shared with long trainings; every branch of the model is still there
TINY = {"width": 8, "head_width": 16, "prototypes": 4, "proto_width": 8, "keypoint_refine": 8, "keypoint_tower": 1}
SPEC = get_arch("dense").default_input  # letterbox 128 x 128


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: torch's intra-op threads only add synchronisation, which on a busy machine costs 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(task: str = "detection", classes: int = 4, joints: int = 14) -> DenseModel:
    torch.manual_seed(0)
    return DenseModel(DenseConfig(task=task, num_classes=classes, joints=joints, **TINY)).eval()


def geometry_of(model: DenseModel) -> HeadGeometry:
    return HeadGeometry(model.centres, model.config.stride, model.config.prototype_stride)


def recipe(task: str, joints: int = 14) -> D.SampleRecipe:
    return D.SampleRecipe(task, SPEC, {c["id"]: i for i, c in enumerate(scenes.CATEGORIES)}, joints, 4)


def scene_samples(task: str, count: int = 4, seed: int = 1) -> list[D.Sample]:
    return [D.to_sample(item, recipe(task)) for item in D.scenes_source(count, seed).images]


# ---------------------------------------------------------------------------------------------- registration
def test_plugins_are_one_class_with_the_task_as_parameter() -> None:
    for task in TASKS:
        plugin = get_task(task)
        assert isinstance(plugin, D.DensePlugin) and plugin.name == task and D.PLUGINS[task] is plugin
        assert plugin.config_cls is D.DenseTrainConfig and issubclass(D.DenseTrainConfig, TrainerConfig)
        assert plugin.default_arch == "dense" and plugin.default_data == "scenes"
    defaults = D.DenseTrainConfig()
    assert (defaults.epochs, defaults.batch_size, defaults.lr, defaults.weight_decay, defaults.flip,
            defaults.kpt_weight, defaults.grad_clip, defaults.warmup_epochs, defaults.max_minutes,
            defaults.threads) == (12, 32, 3e-3, 5e-4, True, 4.0, 10.0, 1.0, 18.0, 1)


def test_seeds_are_distinct_from_every_other_use() -> None:
    from training.export import GOLDEN_SEED

    assert len({D.TRAIN_SCENES_SEED, D.EVAL_SEED, GOLDEN_SEED, GOLDEN_SEED + 1, 3000}) == 5


# ---------------------------------------------------------------------------------------------- model
def test_centres_are_cell_centres_row_major() -> None:
    c = tiny().centres
    assert c.shape == (256, 2)
    assert c[0].tolist() == [4.0, 4.0] and c[1].tolist() == [12.0, 4.0] and c[16].tolist() == [4.0, 12.0]


@pytest.mark.parametrize("task", TASKS)
def test_forward_is_raw_heads_in_training_and_the_exported_outputs_in_eval(task: str) -> None:
    model = tiny(task, joints=5)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        exported = model.eval()(x)
        heads = model.train()(x)
    assert isinstance(exported, tuple) and len(exported) == len(output_names(task)) == len(model.output_names)
    assert isinstance(heads, dict) and {"cls", "box", "boxes"} <= set(heads)
    assert torch.allclose(heads["boxes"], model.decode_boxes(heads["box"]))
    assert ({"coef", "proto"} <= set(heads)) == (task == "instance_segmentation")
    assert ({"kpt", "kpt_xy", "kref"} <= set(heads)) == (task == "keypoints")


def test_decode_boxes_and_keypoints() -> None:
    m = tiny("keypoints", joints=5)
    raw = torch.zeros(1, 256, 4)
    raw[0, 17] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    sp = torch.nn.functional.softplus(torch.tensor([0.0, 1.0, 2.0, 3.0])) * 8
    cx, cy = 12.0, 12.0  # cell 17 = row 1, column 1
    assert torch.allclose(m.decode_boxes(raw)[0, 17], torch.tensor([cx - sp[0], cy - sp[1], cx + sp[2], cy + sp[3]]))
    kraw = torch.zeros(1, 256, 5, 3)
    kraw[0, 17, 2] = torch.tensor([1.5, -2.0, 0.0])
    assert m.decode_keypoints(kraw)[0, 17, 2].tolist() == [cx + 12.0, cy - 16.0, 0.5]


# ---------------------------------------------------------------------------------------------- targets
CENTRES = DenseModel(DenseConfig(width=8, head_width=16)).centres
ASSIGN_CASES = {
    "no objects": ([], []),
    # cells closer than 12 px (1.5 strides) to the box centre (32, 32), per axis, and inside it
    "one box": ([[0, 0, 64, 64]], [{(28, 28), (36, 28), (28, 36), (36, 36)}]),
    "smaller box wins shared cells": (
        [[0, 0, 64, 64], [30, 30, 46, 46]],
        [{(28, 28), (36, 28), (28, 36)}, {(36, 36), (44, 36), (36, 44), (44, 44)}]),
    "sliver gets its nearest cell": ([[100, 100, 103, 103]], [{(100, 100)}]),
    "box with every cell taken takes its nearest one back": (
        [[0, 0, 64, 64], [26, 26, 38, 38]], [{(28, 28)}, {(36, 28), (28, 36), (36, 36)}]),
}


@pytest.mark.parametrize("boxes, expected", ASSIGN_CASES.values(), ids=ASSIGN_CASES.keys())
def test_assign(boxes: list[list[float]], expected: list[set[tuple[float, float]]]) -> None:
    idx = assign(CENTRES, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), stride=8)
    cells = [{tuple(CENTRES[i].tolist()) for i in torch.nonzero(idx == k).flatten()} for k in range(len(boxes))]
    assert cells == expected
    assert int((idx >= 0).sum()) == sum(len(e) for e in expected)


@pytest.mark.parametrize("a, b, iou, giou", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0, 1.0),
    ([0, 0, 10, 10], [20, 0, 30, 10], 0.0, -(300 - 200) / 300),
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150, 50 / 150),
    ([0, 0, 0, 0], [0, 0, 0, 0], 0.0, 0.0),  # degenerate: finite, no division by zero
])
def test_box_iou_pairs(a: list[float], b: list[float], iou: float, giou: float) -> None:
    got_iou, got_giou = box_iou_pairs(torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32))
    assert float(got_iou[0]) == pytest.approx(iou, abs=1e-6) and float(got_giou[0]) == pytest.approx(giou, abs=1e-6)


LOSS_PARTS = {
    "detection": {"cls", "box", "l1", "total"},
    "instance_segmentation": {"cls", "box", "l1", "mask", "total"},
    "keypoints": {"cls", "box", "l1", "kpt", "kpt_coarse", "vis", "total"},
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("empty", [False, True], ids=["objects", "no objects"])
def test_loss_parts_are_finite_and_reach_every_head(task: str, empty: bool) -> None:
    samples = scene_samples(task, 2)
    if empty:  # images without objects: only the class loss (all background) remains
        samples = [D.to_sample(D.LabelledImage(1, Image.new("RGB", (160, 120)), []), recipe(task))] * 2
    batch = D.collate(samples)
    model = tiny(task).train()
    losses = dense_loss(model(batch["x"]), batch, geometry_of(model))
    values = {k: float(v.detach()) for k, v in losses.items()}
    assert set(values) == LOSS_PARTS[task]
    assert all(math.isfinite(v) for v in values.values()) and values["cls"] > 0
    if empty:
        assert all(v == 0 for k, v in values.items() if k not in ("cls", "total"))
    else:
        assert all(v > 0 for v in values.values())
    losses["total"].backward()
    assert model.cls.bias.grad is not None and model.box.bias.grad is not None


def test_loss_weights_come_from_the_config() -> None:
    assert D.loss_weights(D.DenseTrainConfig(kpt_weight=8.0)) == {"kpt": 8.0, "kpt_coarse": 4.0}


def test_loss_decreases_on_one_batch() -> None:
    batch = D.collate(scene_samples("detection"), torch.tensor([True, False, True, False]))
    model = tiny().train()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = last = None
    for _ in range(6):
        loss = dense_loss(model(batch["x"]), batch, geometry_of(model))["total"]
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert last < first


# ---------------------------------------------------------------------------------------------- samples
def test_input_mask_is_letterboxed() -> None:
    g = Geometry(160, 120, 128, 128, 0.8, 0.8, 0.0, 16.0)
    mask = np.zeros((120, 160), bool)
    mask[:, :80] = True  # left half of the image
    m = D.input_mask(mask, g, 4)
    assert m.shape == (32, 32)
    assert m[:4].max() == 0 and m[-4:].max() == 0  # letterbox bands
    assert m[10, :15].min() > 0.99 and m[10, 17:].max() < 0.01


@pytest.mark.parametrize("task, keypoints, masks", [
    ("detection", None, None),
    ("instance_segmentation", None, (0, 32, 32)),
    ("keypoints", (0, 14, 3), None),
])
def test_an_image_without_objects_gives_empty_targets(task: str, keypoints: tuple | None, masks: tuple | None) -> None:
    s = D.to_sample(D.LabelledImage(1, Image.new("RGB", (160, 120)), []), recipe(task))
    assert s.x.shape == (3, 128, 128) and s.boxes.shape == (0, 4) and s.labels.shape == (0,)
    assert (None if s.keypoints is None else s.keypoints.shape) == keypoints
    assert (None if s.masks is None else s.masks.shape) == masks
    batch = D.collate([s, s], torch.tensor([True, False]), scenes.FLIP_PAIRS)
    assert (batch["labels"] == -1).all() and batch["boxes"].abs().sum() == 0


def test_flip_mirrors_boxes_masks_and_swaps_joints() -> None:
    ann = {"category_id": 4, "bbox": [10, 20, 30, 40], "iscrowd": 0, "keypoints": [20, 30, 2, 25, 35, 2, 0, 0, 0],
           "segmentation": scenes.mask_to_rle(np.pad(np.ones((40, 30), bool), ((20, 60), (10, 120))))}
    item = D.LabelledImage(1, Image.new("RGB", (160, 120)), [ann])
    r = D.SampleRecipe("keypoints", SPEC, {4: 0}, 3, 4)
    b = D.collate([D.to_sample(item, r)], torch.tensor([True]), [(1, 2)])
    assert torch.allclose(b["boxes"][0, 0], torch.tensor([128 - 32.0, 32.0, 128 - 8.0, 64.0]))
    k = b["keypoints"][0, 0]
    assert k[0].tolist() == [128 - 16.0, 40.0, 2.0]
    assert k[2].tolist() == [128 - 20.0, 44.0, 2.0] and k[1].tolist() == [0.0, 0.0, 0.0]  # swapped; unlabelled stays
    masks = D.collate([D.to_sample(item, D.SampleRecipe("instance_segmentation", SPEC, {4: 0}, 3, 4))],
                      torch.tensor([True]))["masks"][0, 0]
    unflipped = D.collate([D.to_sample(item, D.SampleRecipe("instance_segmentation", SPEC, {4: 0}, 3, 4))])
    assert torch.equal(masks, unflipped["masks"][0, 0].flip(-1)) and masks.sum() > 0


@pytest.mark.parametrize("names, pairs", [
    ([], []),
    (scenes.KEYPOINT_NAMES, scenes.FLIP_PAIRS),
    (["nose", "left_eye", "right_eye", "left_ear"], [(1, 2)]),  # an unpaired left joint is not swapped
])
def test_flip_pairs_of(names: list[str], pairs: list[tuple[int, int]]) -> None:
    assert D.flip_pairs_of(names) == pairs


# ---------------------------------------------------------------------------------------------- scoring
def oracle(items: list[D.LabelledImage]) -> list[Detections]:
    """The ground truth as served answers (score 1, class = category id - 1)."""
    answers = []
    for item in items:
        anns = item.annotations
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        joints = [np.array(a.get("keypoints", [0.0] * 42), np.float64).reshape(14, 3) for a in anns]
        answers.append(Detections(boxes=boxes, scores=np.ones(len(anns)), class_ids=np.array(
            [a["category_id"] - 1 for a in anns], int), keypoints=np.stack(joints) if joints else np.zeros((0, 14, 3))))
    return answers


@pytest.mark.parametrize("kind, iou_type, answers, expected", [
    ("bbox", "bbox", "oracle", 1.0),
    ("keypoints", "keypoints", "oracle", 1.0),
    ("bbox", "bbox", "none", 0.0),
])
def test_coco_score_of_served_answers(kind: str, iou_type: str, answers: str, expected: float) -> None:
    items = list(D.scenes_source(6, 7).images)
    category_ids = [c["id"] for c in scenes.CATEGORIES]
    results: list[dict] = []
    if answers == "oracle":
        for item, det in zip(items, oracle(items), strict=True):
            results += D.coco_results(det, item.image_id, category_ids, 120, 160)[kind]
    gt = D.coco_from_dict(D.ground_truth(scenes.CATEGORIES, [D.ScoredImage(i.image_id, 160, 120, i.annotations)
                                                             for i in items]))
    ids = [scenes.PERSON_ID] if kind == "keypoints" else category_ids
    score = D.coco_score(gt, results, iou_type, ids)
    assert score.ap50 == pytest.approx(expected) and score.ap == pytest.approx(expected)
    assert score.per_category_ap50 and all(v == pytest.approx(expected) for v in score.per_category_ap50.values())


def test_labels_missing_from_the_held_out_data_are_an_error() -> None:
    assert D.model_category_ids(["person"], scenes.CATEGORIES) == [scenes.PERSON_ID]
    with pytest.raises(ValueError, match="no categories"):
        D.model_category_ids(["car"], scenes.CATEGORIES)


# ---------------------------------------------------------------------------------------------- prepare
@pytest.mark.parametrize("request_options, message", [
    ({"arch_options": {"num_classes": 2}}, "set by the task"),
    ({"image_size": 120}, "multiple of 16"),
    ({"arch": "lenet5"}, "does not serve"),
])
def test_prepare_refuses(request_options: dict, message: str) -> None:
    request = TrainRequest(**{"data": "scenes", "arch": "dense", "count": 1, **request_options})
    with pytest.raises(ValueError, match=message):
        get_task("detection").prepare(request, D.DenseTrainConfig())


def test_the_job_loss_calls_the_module_it_is_given() -> None:
    """The trainer hands the loss a DistributedDataParallel wrapper under torchrun: only its forward syncs."""
    prepared = get_task("keypoints").prepare(TrainRequest(data="scenes", arch="dense", arch_options=TINY, count=2),
                                             D.DenseTrainConfig())

    class Counting(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x: torch.Tensor) -> object:
            self.calls += 1
            return self.inner(x)

    net = Counting(prepared.job.model).train()
    batch = prepared.job.batch(torch.arange(2), torch.Generator().manual_seed(0))
    losses = prepared.job.loss(net, batch)
    assert net.calls == 1 and set(losses) == LOSS_PARTS["keypoints"]
    assert prepared.extra["keypoint_names"] == scenes.KEYPOINT_NAMES
    assert prepared.extra["skeleton"] == [list(e) for e in scenes.SKELETON] and prepared.extra["category_ids"] == [4]


@pytest.mark.parametrize("data, text", [
    ({"name": "scenes", "description": "24 generated scenes"}, "24 generated scenes"),
    ({"name": "scenes-train", "images": 5000, "info": {"generator": "training.data.scenes", "seed": 0}},
     "5000 generated scenes (training.data.scenes, seed 0)"),  # upgraded from the old dense trainer
    ({"name": "/data/coco", "images": 9, "info": {}}, "COCO dataset /data/coco"),
])
def test_training_data_text(data: dict, text: str) -> None:
    checkpoint = Checkpoint(task="detection", arch="dense", arch_config={}, labels=[], input_spec=SPEC,
                            state_dict={}, data=data)
    assert get_task("detection").training_data_text(checkpoint) == text


# ---------------------------------------------------------------------------------------------- end to end
def train_tiny(task: str, data: str, count: int = 24, init: str = "") -> tuple[Checkpoint, list[str]]:
    config = D.DenseTrainConfig(epochs=1, batch_size=8, max_minutes=0.0)
    request = TrainRequest(data=data, arch="dense", arch_options=TINY, count=count, init=init)
    prepared = get_task(task).prepare(request, config)
    result = fit(prepared.job, config, None, progress=False)
    checkpoint = Checkpoint(task=task, arch="dense", arch_config=prepared.arch_config, labels=prepared.labels,
                            input_spec=prepared.input_spec, state_dict=result.best_state, data=prepared.data,
                            train_config=asdict(config), summary={"best_epoch": 1, "epochs_run": 1},
                            history=result.history, extra=prepared.extra)
    return checkpoint, prepared.notes


def confident(checkpoint: Checkpoint) -> Checkpoint:
    """Every candidate scores ~0.95, so the served answers are full (decoding, NMS and scoring all run)."""
    state = {k: torch.full_like(v, 3.0) if k == "cls.bias" else v for k, v in checkpoint.state_dict.items()}
    return Checkpoint(**{**vars(checkpoint), "state_dict": state})


METRIC_KEYS = {
    "detection": {"eval_seed", "eval_count", "box_map50", "box_map"},
    "instance_segmentation": {"eval_count", "box_map50", "box_map", "mask_map50", "mask_map"},  # COCO folder
    "keypoints": {"eval_seed", "eval_count", "box_map50", "box_map", "oks_ap50", "oks_ap"},
}


@pytest.mark.parametrize("task", TASKS)
def test_train_export_evaluate(task: str, tmp_path: Path) -> None:
    if task == "instance_segmentation":  # the COCO-folder path, for training and for held-out data
        scenes.write_dataset(tmp_path / "train", 24, seed=0)
        scenes.write_dataset(tmp_path / "heldout", 8, seed=5)
        data, evaluation = str(tmp_path / "train"), EvalRequest(data=str(tmp_path / "heldout"))
    else:
        data, evaluation = "scenes", EvalRequest(seed=5, count=8)
    checkpoint, notes = train_tiny(task, data)
    assert checkpoint.data["description"] and "128x128" in notes[0]
    if data == "scenes":
        assert checkpoint.data["seed"] == D.TRAIN_SCENES_SEED and checkpoint.data["count"] == 24
    else:
        assert checkpoint.data["name"] == data and checkpoint.data["images"] == 24
    result = export_checkpoint(confident(checkpoint), tmp_path / f"{task}.onnx", evaluation=evaluation)
    meta = result.metadata
    assert meta.task is Task(task) and [o.name for o in meta.outputs] == output_names(task)
    assert meta.detection is not None and meta.detection.strides == [8] and meta.detection.candidates == 256
    assert (meta.masks is not None) == (task == "instance_segmentation")
    assert (meta.keypoints is not None) == (task == "keypoints")
    assert set(meta.metrics) == METRIC_KEYS[task] and meta.metrics["eval_count"] == 8
    assert all(0.0 <= meta.metrics[k] <= 1.0 for k in METRIC_KEYS[task] if not k.startswith("eval_"))
    assert result.evaluation.details["detections"] > 0 and result.evaluation.description
    if task == "keypoints":
        assert meta.labels == ["person"] and meta.keypoints.names == scenes.KEYPOINT_NAMES
        assert meta.keypoints.skeleton == scenes.SKELETON
        card_and_second_stage(checkpoint, result, tmp_path)


def card_and_second_stage(checkpoint: Checkpoint, result, tmp_path: Path) -> None:
    readme = write_card(tmp_path / "card", checkpoint, result, CardContext(name="keypoints", command="python -m x"))
    text = readme.read_text()
    assert "## Example predictions" in text and "## Per-class AP@0.5" in text
    assert Image.open(tmp_path / "card" / D.EXAMPLE_FILE).size == (2 * 480, 2 * 360)
    first = checkpoint.save(tmp_path / "stage1.pt")
    second, notes = train_tiny("keypoints", "scenes", count=4, init=str(first))
    assert second.extra["init"]["checkpoint"] == str(first) and any("started from" in n for n in notes)
    with pytest.raises(ValueError, match="not detection"):
        train_tiny("detection", "scenes", count=1, init=str(first))


def test_sample_images_are_generated_scenes_of_that_seed() -> None:
    images = get_task("detection").sample_images(None, 2, seed=11)  # type: ignore[arg-type]
    expected = [image for _i, image, _a, _s in scenes.generate(2, 11)]
    assert [np.asarray(i).tolist() for i in images] == [np.asarray(i).tolist() for i in expected]


def test_input_spec_is_the_registry_data_config_at_the_requested_size() -> None:
    assert D.input_spec_for("dense", 0) == SPEC
    assert D.input_spec_for("dense", 64) == InputSpec(**{**SPEC.model_dump(), "height": 64, "width": 64})
