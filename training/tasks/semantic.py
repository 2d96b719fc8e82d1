"""The `semantic_segmentation` task: a class per pixel (background included), from generated scenes or any
COCO dataset with masks.

    python -m training train --task semantic_segmentation --data scenes --out runs/segmenter
    python -m training train --task semantic_segmentation --data COCO_DIR --out runs/mine [--image-size 96]
    python -m training export runs/segmenter/checkpoint.pt --out models/segmenter.onnx --card
    python -m training evaluate models/segmenter.onnx [--data COCO_DIR] [--seed S] [--count N]

Data: `scenes` generates training.data.scenes in memory (seed TRAIN_SCENES_SEED, `--count` scenes); any
other value is a COCO folder holding `instances.json` (or `annotations/instances*.json`), or the json file
itself, with the images it names. Each image's class map is rasterised from its annotations with
pycocotools `annToMask` (polygons or RLE), in annotation order so later annotations are drawn over earlier
ones; pixels no annotation covers are background, class 0. Labels are "background" followed by the
category names in category-id order.

Every image goes through `service.preprocess.prepare` (a letterbox, 128x128 by default), exactly as the
service sends it to the model; its class map gets the same letterbox with nearest-neighbour resizing, and
the padding is ignored by the loss. Training steps see square crops of the prepared input, centred on an
object pixel with probability `object_crop_p`; the network is fully convolutional, so it runs on the whole
input in validation and in production. The model outputs logits at the full input resolution.

Held-out evaluation decodes the exported file's logits with the service's own decoder
(training.decoding.decode_class_ids: letterbox padding cropped, logits resized bilinearly to the original
image size, argmax there) and scores that class map against the original-resolution ground truth, so the
metrics are those of the served answers.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from service.contract import InputSpec, ModelMetadata, OutputSpec
from service.preprocess import Geometry, prepare
from training.checkpoint import Checkpoint
from training.decoding import decode_class_ids, served_model
from training.export import open_session, read_metadata, run_outputs
from training.registry import get_arch
from training.tasks.base import (
    CardSection,
    EvalRequest,
    Evaluation,
    Prepared,
    TaskPlugin,
    TrainRequest,
)
from training.trainer import Job, Losses, TrainerConfig, seed_everything

TASK = "semantic_segmentation"
BACKGROUND = "background"
IGNORE = 255  # target value of letterbox padding: not scored by the loss or the metrics
OUTPUT_NAME = "logits"
OUTPUT_LAYOUT = "batch,class,height,width"
SCENES = "scenes"  # the --data value that generates scenes instead of reading a COCO dataset
TRAIN_SCENES_SEED = 0  # the same generated training scenes as the dense tasks
TRAIN_SCENES_COUNT = 2000
EVAL_SEED = 20261204  # the held-out scenes: a seed no training, calibration or golden set uses
EVAL_COUNT = 1000
EXAMPLE_COUNT = 4  # held-out images in the card's example predictions
VALIDATION_BATCH = 32
EVAL_BATCH = 16


@dataclass(frozen=True)
class SegTrainConfig(TrainerConfig):
    """The trainer's options with this task's defaults (they reproduce the bundled segmenter), plus its own."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.3
    max_minutes: float = 18.0
    threads: int = 1  # with two threads a step was 11x slower on the shared machine (they wait for each other)
    dice_weight: float = 0.5  # + soft Dice loss over the object classes (helps thin, rare classes)
    hflip: bool = True  # mirror image and class map (before prepare) with probability 0.5
    # Training crops of the prepared input (0 = the whole input): far cheaper per step than whole inputs,
    # and centred on an object pixel with probability object_crop_p, so less compute goes to easy background.
    crop: int = 64
    object_crop_p: float = 0.5
    val_fraction: float = 0.05  # the LAST images of the data: picks the epoch to keep (0: keep the last)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class SegmentationSet:
    """Images as a user would send them and their class maps ([H, W] uint8, class index, 0 = background)."""

    labels: list[str]
    images: list[Image.Image]
    maps: list[np.ndarray]
    names: list[str] = field(default_factory=list)  # file names, for the record
    description: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int]) -> SegmentationSet:
        return SegmentationSet(
            self.labels,
            [self.images[i] for i in indices],
            [self.maps[i] for i in indices],
            [self.names[i] for i in indices] if self.names else [],
            self.description,
        )


def labels_from_categories(categories: Sequence[dict]) -> tuple[list[str], dict[int, int]]:
    """COCO categories -> (labels with "background" at 0, {category id: class index}), by category id."""
    ordered = sorted(categories, key=lambda c: c["id"])
    labels = [BACKGROUND, *(str(c["name"]) for c in ordered)]
    return labels, {int(c["id"]): index for index, c in enumerate(ordered, start=1)}


def rasterise(coco: Any, image_id: int, class_of: dict[int, int]) -> np.ndarray:
    """Class map [H, W] uint8 of one image of a pycocotools COCO: its annotations drawn in order (later
    over earlier) with `annToMask`; 0 where none is."""
    info = coco.imgs[image_id]
    class_map = np.zeros((info["height"], info["width"]), dtype=np.uint8)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None)):
        class_map[coco.annToMask(ann) > 0] = class_of[int(ann["category_id"])]
    return class_map


def find_annotations(data: str | Path) -> Path:
    """A COCO json file, or the one in a dataset folder (instances.json or annotations/instances*.json)."""
    data = Path(data)
    if data.is_file():
        return data
    candidates = [data / "instances.json", *sorted((data / "annotations").glob("instances*.json"))]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{data}: no instances.json or annotations/instances*.json (or use --data {SCENES})")


def load_coco(data: str | Path, limit: int | None = None) -> SegmentationSet:
    """The first `limit` images (all: None) of a COCO dataset by image id, with their rasterised class maps;
    file names are relative to the json's folder, or to its parent when the json lies in annotations/."""
    from pycocotools.coco import COCO  # imported here: only training and evaluation need it

    ann_path = find_annotations(data)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(ann_path))
    root = ann_path.parent.parent if ann_path.parent.name == "annotations" else ann_path.parent
    labels, class_of = labels_from_categories(coco.loadCats(coco.getCatIds()))
    images, maps, names = [], [], []
    for image_id in sorted(coco.imgs)[:limit]:
        info = coco.imgs[image_id]
        with Image.open(root / info["file_name"]) as im:
            images.append(im.convert("RGB"))
        maps.append(rasterise(coco, image_id, class_of))
        names.append(info["file_name"])
    description = (
        f"COCO dataset {ann_path} ({len(images)} images, {len(coco.anns)} annotations); class maps "
        f"rasterised from the annotation masks"
    )
    return SegmentationSet(labels, images, maps, names, description)


def generated_scenes(count: int, seed: int) -> SegmentationSet:
    """Scenes of training.data.scenes with their semantic maps, in memory. Every scene has its own
    generator, so the first k scenes of a seed are the same whatever the count."""
    from training.data import scenes

    labels, class_of = labels_from_categories(scenes.CATEGORIES)
    class_index = np.zeros(max(class_of) + 1, dtype=np.uint8)  # category id -> class index
    for cat_id, index in class_of.items():
        class_index[cat_id] = index
    images, maps = [], []
    for _i, image, _anns, semantic in scenes.generate(count, seed):
        images.append(image)
        maps.append(class_index[semantic])
    description = f"{count} generated scenes (training.data.scenes, seed {seed}, {scenes.WIDTH}x{scenes.HEIGHT})"
    return SegmentationSet(labels, images, maps, [], description)


def load_training_data(request: TrainRequest) -> tuple[SegmentationSet, dict[str, Any]]:
    """The data a TrainRequest names, and how to find it again (the checkpoint's `data` record)."""
    if request.data == SCENES:
        count = request.count or TRAIN_SCENES_COUNT
        data = generated_scenes(count, TRAIN_SCENES_SEED)
        return data, {"name": SCENES, "description": data.description, "seed": TRAIN_SCENES_SEED, "count": count}
    data = load_coco(request.data, limit=request.count or None)
    return data, {"name": request.data, "description": data.description,
                  "annotations": str(find_annotations(request.data))}


def letterbox_target(class_map: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The class map placed as prepare() placed its image: nearest-neighbour resize, IGNORE padding."""
    h, w = class_map.shape
    new_w, new_h = round(w * geometry.scale_x), round(h * geometry.scale_y)
    left, top = int(geometry.offset_x), int(geometry.offset_y)
    canvas = np.full((geometry.input_height, geometry.input_width), IGNORE, dtype=np.uint8)
    resized = Image.fromarray(class_map).resize((new_w, new_h), Image.Resampling.NEAREST)
    canvas[top : top + new_h, left : left + new_w] = np.asarray(resized)
    return canvas


def render_pair(image: Image.Image, class_map: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """(model input [C, H, W] float32 from prepare(), target [H, W] uint8 at the input resolution)."""
    x, geometry = prepare(image.convert(spec.color_mode), spec)
    return x, letterbox_target(class_map, geometry)


def render_pairs(data: SegmentationSet, indices: Sequence[int], spec: InputSpec,
                 flips: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [N, C, H, W] float32 and targets [N, H, W] int64 of data[indices]; flipped ones are mirrored
    as user-facing images, then prepared as usual (the letterbox of a mirrored image is not always the
    mirror of the letterbox: an odd padding puts the extra pixel on the same side)."""
    xs, ys = [], []
    for k, i in enumerate(indices):
        image, class_map = data.images[i], data.maps[i]
        if flips is not None and flips[k]:
            image, class_map = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), class_map[:, ::-1]
        x, y = render_pair(image, np.ascontiguousarray(class_map), spec)
        xs.append(x)
        ys.append(y)
    if not xs:
        return torch.zeros(0, spec.channels, spec.height, spec.width), torch.zeros(0, spec.height, spec.width,
                                                                                  dtype=torch.int64)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


# ---------------------------------------------------------------------------------------------- crops
def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def crop_origin(target: torch.Tensor, size: int, object_p: float, generator: torch.Generator) -> tuple[int, int]:
    """(top, left) of a size x size crop of one [H, W] target: with probability object_p (when it has an
    object pixel) centred on a random object pixel, jittered by up to size/4 and kept inside; else uniform."""
    height, width = target.shape
    objects = ((target > 0) & (target != IGNORE)).nonzero()
    if len(objects) and float(torch.rand((), generator=generator)) < object_p:
        cy, cx = objects[_randint(0, len(objects) - 1, generator)].tolist()
        jitter = size // 4
        top = cy - size // 2 + _randint(-jitter, jitter, generator)
        left = cx - size // 2 + _randint(-jitter, jitter, generator)
        return min(max(top, 0), height - size), min(max(left, 0), width - size)
    return _randint(0, height - size, generator), _randint(0, width - size, generator)


def random_crops(x: torch.Tensor, y: torch.Tensor, size: int, object_p: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """size x size crops (at most the input's size) of a batch: [B, C, H, W] inputs, [B, H, W] targets."""
    size = min(size, *y.shape[1:])
    if not len(y):
        return x[..., :size, :size], y[..., :size, :size]
    xs, ys = [], []
    for image, target in zip(x, y, strict=True):
        top, left = crop_origin(target, size, object_p, generator)
        xs.append(image[:, top : top + size, left : left + size])
        ys.append(target[top : top + size, left : left + size])
    return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------------------------------------- loss
def segmentation_losses(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0) -> Losses:
    """Per-pixel cross-entropy (IGNORE pixels skipped) + dice_weight * soft Dice loss averaged over the object
    classes (class 0, background, left out). A batch with no scored pixel has loss 0 (cross_entropy alone
    would give NaN), still connected to the graph so backward() works."""
    valid = target != IGNORE
    if not valid.any():
        zero = logits.sum() * 0.0
        return {"total": zero, "cross_entropy": zero, **({"dice": zero} if dice_weight > 0 else {})}
    cross_entropy = F.cross_entropy(logits, target, ignore_index=IGNORE)
    if dice_weight <= 0:
        return {"total": cross_entropy, "cross_entropy": cross_entropy}
    dice = soft_dice_loss(logits, target, valid)
    return {"total": cross_entropy + dice_weight * dice, "cross_entropy": cross_entropy, "dice": dice}


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per object class over the whole batch (+1 smoothing: a class absent from targets and
    predictions scores ~0 loss), averaged over the object classes."""
    mask = valid.unsqueeze(1)  # [B, 1, H, W]
    probs = logits.softmax(1) * mask
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2) * mask
    inter = (probs * onehot).sum((0, 2, 3))[1:]
    total = (probs + onehot).sum((0, 2, 3))[1:]
    return (1 - (2 * inter + 1) / (total + 1)).mean()


# ---------------------------------------------------------------------------------------------- metrics
def confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """[true class][predicted class] pixel counts; truth pixels >= num_classes (IGNORE) are skipped."""
    truth, pred = np.asarray(truth).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    keep = truth < num_classes
    counts = np.bincount(truth[keep] * num_classes + pred[keep], minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> list[float | None]:
    """IoU of each class from a confusion matrix; None for a class absent from both truth and prediction."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    return [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]


def mean_iou(conf: np.ndarray, skip_background: bool = True) -> float:
    """Mean IoU over the object classes (class 0 excluded unless skip_background is False), classes absent
    from both truth and prediction left out; 1.0 if no class is present at all (nothing to get wrong)."""
    ious = iou_per_class(conf)[1 if skip_background else 0 :]
    present = [v for v in ious if v is not None]
    return float(np.mean(present)) if present else 1.0


def segmentation_metrics(conf: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Flat metrics for the model metadata: mIoU, pixel accuracy, iou_<label> per present class."""
    metrics = {
        "mIoU": mean_iou(conf),
        "mIoU_with_background": mean_iou(conf, skip_background=False),
        "pixel_accuracy": float(np.trace(conf) / max(1, conf.sum())),
    }
    for label, value in zip(labels, iou_per_class(conf), strict=True):
        if value is not None:
            metrics[f"iou_{label}"] = value
    return metrics


# ---------------------------------------------------------------------------------------------- training job
def validation_split(count: int, val_fraction: float) -> tuple[range, range]:
    """(train, validation) indices: the last round(count * val_fraction) images (at least 1 when the
    fraction is positive) validate, so the split is reproducible and needs no seed."""
    n_val = max(1, round(count * val_fraction)) if val_fraction > 0 and count else 0
    return range(count - n_val), range(count - n_val, count)


@torch.no_grad()
def validation_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """mIoU (argmax at the input resolution; the exported file is scored through the service's decoder
    instead) and cross-entropy per scored pixel, on whole prepared inputs."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum = 0.0
    for start in range(0, len(x), VALIDATION_BATCH):
        logits = model(x[start : start + VALIDATION_BATCH])
        target = y[start : start + VALIDATION_BATCH]
        loss_sum += float(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"))
        conf += confusion(logits.argmax(1).numpy(), target.numpy(), num_classes)
    pixels = max(1, int((y != IGNORE).sum()))
    return {"val_mIoU": mean_iou(conf), "val_loss": loss_sum / pixels}


def make_job(model: nn.Module, data: SegmentationSet, spec: InputSpec, config: SegTrainConfig) -> Job:
    train, val = validation_split(len(data), config.val_fraction)
    val_x, val_y = render_pairs(data, val, spec)  # rendered once: validation sees whole, unflipped inputs

    def batch(indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = [train[i] for i in indices.tolist()]
        flips = (torch.rand(len(chosen), generator=generator) < 0.5).tolist() if config.hflip else None
        x, y = render_pairs(data, chosen, spec, flips)
        if config.crop:
            x, y = random_crops(x, y, config.crop, config.object_crop_p, generator)
        return x, y

    def loss(net: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> Losses:
        x, y = xy
        return segmentation_losses(net(x), y, config.dice_weight)

    def validate(net: nn.Module) -> dict[str, float]:
        return validation_metrics(net, val_x, val_y, len(data.labels))

    return Job(model=model, train_size=len(train), batch=batch, loss=loss,
               validate=validate if len(val) else None, monitor="val_mIoU" if len(val) else "")


def check_sizes(stride: int, spec: InputSpec, crop: int) -> None:
    """The U-Net pools (widths - 1) times and concatenates the upsampled maps with the encoder's: every
    side it sees must be a multiple of its stride."""
    for what, side in (("input height", spec.height), ("input width", spec.width), ("crop", crop)):
        if side % stride:
            raise ValueError(f"{what} {side} is not a multiple of the U-Net stride {stride} (2^(levels-1))")


def load_init(path: str, labels: list[str]) -> Checkpoint:
    init = Checkpoint.load(path)
    if init.task != TASK:
        raise ValueError(f"--init {path}: a {init.task} checkpoint, not {TASK}")
    if init.labels != labels:
        raise ValueError(f"--init {path}: labels {init.labels} differ from the data's {labels}")
    return init


def choose_input_spec(default: InputSpec, init: Checkpoint | None, image_size: int) -> InputSpec:
    """The architecture's data config, or the --init checkpoint's (fine-tuning keeps its input), at
    image_size x image_size when given."""
    spec = init.input_spec if init else default
    return spec.model_copy(update={"height": image_size, "width": image_size}) if image_size else spec


def size_note(spec: InputSpec, default: InputSpec, request: TrainRequest) -> str:
    given = f"--image-size {request.image_size}" if request.image_size else "no --image-size"
    return (f"input {spec.width}x{spec.height} {spec.resize.value} ({given}; the {request.arch} default is "
            f"{default.width}x{default.height})")


# ---------------------------------------------------------------------------------------------- evaluation
def load_heldout(request: EvalRequest) -> tuple[SegmentationSet, int | None]:
    """The held-out data of a request and its seed (None for a COCO dataset): generated scenes of
    request.seed (default EVAL_SEED), request.count of them (default EVAL_COUNT), or a COCO path."""
    if not request.data:
        seed = EVAL_SEED if request.seed is None else request.seed
        return generated_scenes(EVAL_COUNT if request.count is None else request.count, seed), seed
    return load_coco(request.data, limit=request.count), None


def predicted_class_maps(session: ort.InferenceSession, images: Sequence[Image.Image],
                         metadata: ModelMetadata) -> Iterator[np.ndarray]:
    """Original-resolution class maps of `images`, as the service answers them: prepare() -> ONNX Runtime
    -> the service's own decoder (training.decoding)."""
    model = served_model(metadata)
    spec = metadata.input
    for start in range(0, len(images), EVAL_BATCH):
        prepared = [prepare(image.convert(spec.color_mode), spec) for image in images[start : start + EVAL_BATCH]]
        outputs = run_outputs(session, np.stack([x for x, _ in prepared]), EVAL_BATCH)
        for i, (_x, geometry) in enumerate(prepared):
            yield decode_class_ids(model, [output[i] for output in outputs], geometry)


def heldout_confusion(session: ort.InferenceSession, data: SegmentationSet, metadata: ModelMetadata) -> np.ndarray:
    n = len(metadata.labels)
    conf = np.zeros((n, n), dtype=np.int64)
    for pred, truth in zip(predicted_class_maps(session, data.images, metadata), data.maps, strict=True):
        conf += confusion(pred, truth, n)
    return conf


def evaluation_text(data: SegmentationSet, seed: int | None) -> str:
    source = (f"{len(data)} freshly generated scenes (seed {seed}; no training image comes from that seed)"
              if seed is not None else f"{len(data)} images of {data.description}")
    return (f"{source}, each sent through `service.preprocess.prepare` and the exported `.onnx` with ONNX Runtime, "
            "decoded by the service's own decoder (letterbox padding cropped, logits resized bilinearly to the "
            "original size, argmax) and scored at the ORIGINAL resolution against the ground-truth class map. "
            "IoU is accumulated over all pixels of all images per class; mIoU averages the object classes "
            "(background excluded), leaving out classes absent from both truth and prediction.")


# ---------------------------------------------------------------------------------------------- card
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)  # fmt: skip
EXAMPLES_FILE = "example_predictions.png"


def colourise(class_map: np.ndarray) -> Image.Image:
    return Image.fromarray(PALETTE[np.asarray(class_map) % len(PALETTE)], "RGB")


def prediction_sheet(images: Sequence[Image.Image], truths: Sequence[np.ndarray],
                     predictions: Sequence[np.ndarray], gap: int = 4) -> Image.Image:
    """Rows of input | ground truth | prediction, each tile the size of the row's image, 2x enlarged."""
    width = max(image.width for image in images)
    heights = [image.height for image in images]
    sheet = Image.new("RGB", (3 * width + 2 * gap, sum(heights) + gap * (len(images) - 1)), (255, 255, 255))
    top = 0
    for image, truth, pred, height in zip(images, truths, predictions, heights, strict=True):
        for col, tile in enumerate((image.convert("RGB"), colourise(truth), colourise(pred))):
            sheet.paste(tile, (col * (width + gap), top))
        top += height + gap
    return sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST)


def per_class_table(details: dict[str, Any]) -> str:
    conf = np.asarray(details["confusion"])
    pixels = conf.sum(1)
    rows = [f"| {label} | {'-' if iou is None else f'{iou:.4f}'} | {int(p):,} |"
            for label, iou, p in zip(details["labels"], iou_per_class(conf), pixels, strict=True)]
    return "\n".join(["| class | IoU | ground-truth pixels |", "|---|---|---|", *rows])


def data_and_loss_text(checkpoint: Checkpoint) -> str:
    c, d = checkpoint.train_config, checkpoint.data
    crop = f"{c['crop']}-pixel square crops" if c.get("crop") else "whole inputs"
    return (
        f"The last {d.get('val_images')} of the {d.get('images')} images are the validation split (picking the "
        f"epoch only); {d.get('train_images')} train. Each class map is rasterised from the COCO annotations "
        "(pycocotools `annToMask`, later annotations over earlier ones) or taken from the scene generator, and "
        "letterboxed like its image (nearest neighbour) with the padding ignored by the loss. Augmentation: "
        f"{'random horizontal flips of the image and its class map (before `prepare`)' if c.get('hflip') else 'none'}"
        f". Training steps see {crop} of the prepared inputs, centred on an object pixel with probability "
        f"{c.get('object_crop_p')} (else anywhere, padding included); the fully-convolutional network runs on "
        "the whole input in validation and in production.\n\n"
        f"Loss: per-pixel cross-entropy plus {c.get('dice_weight')} x soft Dice loss over the object classes "
        "(curves `cross_entropy` and `dice`); `val_loss` is the cross-entropy per pixel of the whole validation "
        "inputs, `val_mIoU` their mIoU at the input resolution."
    )


# ---------------------------------------------------------------------------------------------- plug-in
class SemanticPlugin(TaskPlugin):
    name: ClassVar[str] = TASK
    config_cls: ClassVar[type[TrainerConfig]] = SegTrainConfig
    default_arch: ClassVar[str] = "unet"
    default_data: ClassVar[str] = SCENES
    data_help: ClassVar[str] = f"{SCENES} (generated, --count, seed {TRAIN_SCENES_SEED}) | COCO_DIR | instances.json"
    parity_atol: ClassVar[dict[str, float]] = {OUTPUT_NAME: 1e-3}
    golden_atol: ClassVar[float] = 1e-3
    golden_count: ClassVar[int] = 2  # a 128x128 class map per sample: 2 keep the metadata near 1 MB
    limitations: ClassVar[str] = (
        "The generated scenes are 160x120 textured or noisy backgrounds with 1-5 saturated shapes and stick "
        "figures that may occlude each other. Expect much worse results on photographs or on objects unlike these."
    )

    def prepare(self, request: TrainRequest, config: SegTrainConfig) -> Prepared:
        # Confident softmaxes underflow into denormal floats, which make CPU kernels many times slower.
        torch.set_flush_denormal(True)
        seed_everything(config.seed)  # the model's initial weights
        data, record = load_training_data(request)
        if not len(data):
            raise ValueError(f"{request.data}: no images")
        arch = get_arch(request.arch)
        if TASK not in arch.tasks:
            raise ValueError(f"architecture {request.arch!r} does not serve {TASK}")
        init = load_init(request.init, data.labels) if request.init else None
        spec = choose_input_spec(arch.default_input, init, request.image_size)
        arch_config = arch.make_config({"num_classes": len(data.labels), **(init.arch_config if init else {}),
                                        **request.arch_options})
        if arch_config.num_classes != len(data.labels):
            raise ValueError(f"num_classes {arch_config.num_classes} != {len(data.labels)} labels {data.labels}")
        model = arch.build(arch_config)
        check_sizes(model.stride, spec, config.crop)
        if init:
            model.load_state_dict(init.state_dict)
        job = make_job(model, data, spec, config)
        train, val = validation_split(len(data), config.val_fraction)
        record.update(images=len(data), train_images=len(train), val_images=len(val),
                      **({"init": request.init} if request.init else {}))
        return Prepared(job=job, arch_config=arch.config_to_dict(arch_config), labels=list(data.labels),
                        input_spec=spec, data=record, notes=[size_note(spec, arch.default_input, request)])

    def exportable(self, checkpoint: Checkpoint) -> nn.Module:
        return checkpoint.build_model()

    def outputs(self, checkpoint: Checkpoint) -> list[OutputSpec]:
        return [OutputSpec(name=OUTPUT_NAME, layout=OUTPUT_LAYOUT, kind="logits")]

    def metadata_fields(self, checkpoint: Checkpoint) -> dict[str, Any]:
        return {}

    def sample_images(self, checkpoint: Checkpoint, count: int, seed: int) -> list[Image.Image]:
        return generated_scenes(count, seed).images

    def evaluate(self, model: Path | bytes, metadata: ModelMetadata, request: EvalRequest) -> Evaluation:
        data, seed = load_heldout(request)
        if not len(data):
            raise ValueError(f"no held-out images in {request.data or 'the generated scenes'} (count {request.count})")
        if list(data.labels) != list(metadata.labels):
            raise ValueError(f"held-out labels {data.labels} != the model's {metadata.labels}; pass --data with a "
                             "COCO dataset of the model's categories")
        conf = heldout_confusion(open_session(model), data, metadata)
        metrics = segmentation_metrics(conf, metadata.labels)
        metrics["eval_count"] = float(len(data))
        if seed is not None:
            metrics["eval_seed"] = float(seed)
        details = {"labels": list(metadata.labels), "confusion": conf.tolist(), "data": request.data, "seed": seed,
                   "count": len(data)}
        return Evaluation(metrics=metrics, description=evaluation_text(data, seed), details=details)

    def card_sections(self, model_path: Path, checkpoint: Checkpoint, evaluation: Evaluation,
                      folder: Path) -> list[CardSection]:
        details = evaluation.details
        examples, _seed = load_heldout(EvalRequest(details["data"], details["seed"], EXAMPLE_COUNT))
        predictions = list(predicted_class_maps(open_session(model_path), examples.images, read_metadata(model_path)))
        prediction_sheet(examples.images, examples.maps, predictions).save(folder / EXAMPLES_FILE)
        return [
            CardSection("Per-class IoU (held-out)", per_class_table(details)),
            CardSection("Example predictions", "Input | ground truth | prediction (ONNX Runtime, the service's "
                        f"decoder) on the first held-out images:\n\n![example predictions]({EXAMPLES_FILE})"),
            CardSection("Data, augmentation and loss", data_and_loss_text(checkpoint)),
        ]


PLUGINS: dict[str, TaskPlugin] = {TASK: SemanticPlugin()}
