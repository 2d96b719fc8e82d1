"""Semantic segmentation: a class per pixel (background included) from any COCO dataset with masks.

    python -m training train --task semantic_segmentation --data COCO_DIR --out runs/segmenter
    python -m training export runs/segmenter/checkpoint.pt --out models/segmenter.onnx --card
    python -m training bundle --only segmenter

Data: COCO_DIR holds `instances.json` (or `annotations/instances*.json`) and the images it names. Each
image's class map is rasterised from its annotations with pycocotools `annToMask` (polygons or RLE), in
annotation order so later annotations are drawn over earlier ones; pixels no annotation covers are
background, class 0. Labels are "background" followed by the category names in category-id order.

Every image goes through `service.preprocess.prepare` (a 128x128 letterbox), exactly as the service sends
it to the model; its class map gets the same letterbox with nearest-neighbour resizing, and the padding
is ignored by the loss. The model outputs logits at the full input resolution; the evaluation decodes them
with the service's own decoder (training.decoding: letterbox padding cropped, logits resized bilinearly to
the original image size, argmax there) and scores that class map against the original-resolution ground
truth, so the metrics are those of the served answers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from service.contract import (
    Golden,
    GoldenSample,
    InputSpec,
    Interpolation,
    ModelMetadata,
    OutputSpec,
    ResizePolicy,
    Task,
)
from service.preprocess import Geometry, prepare
from training.bundle import describe_machine
from training.checkpoint import load_payload
from training.decoding import decode_class_ids, served_model
from training.export import (
    OPSET,
    png_base64,
    save_model,
    strip_debug_info,
    trace_to_onnx,
    verify_saved,
    write_metadata,
)
from training.models.segmenter import CARD_SUMMARY, SegmenterConfig, UNet

log = logging.getLogger(__name__)

TASK = "semantic_segmentation"
ARCH = "unet"
ARCH_TITLE = "U-Net (Ronneberger et al., 2015), a fully-convolutional encoder-decoder"
BACKGROUND = "background"
IGNORE = 255  # target value of letterbox padding: not scored by the loss
FORMAT_VERSION = 1
OUTPUT_NAME = "logits"
OUTPUT_LAYOUT = "batch,class,height,width"
PARITY_ATOL = 1e-3  # max |ORT - PyTorch| on logits
GOLDEN_ATOL = 1e-3
GOLDEN_DECIMALS = 4  # expected logits are rounded to keep the metadata small (error <= 5e-5)
GOLDEN_COUNT = 2
HELDOUT_SEED = 20261125  # the bundled model's held-out scenes: a seed no training set uses
HELDOUT_COUNT = 100
TRAIN_SEED = 1


def default_input_spec(size: int = 128) -> InputSpec:
    """128x128 RGB letterbox: the 160x120 scenes become 128x96 with 16 rows of padding above and below.
    mean/std 0.5/0.25 put the 8-bit range at [-2, 2]."""
    return InputSpec(
        name="images",
        height=size,
        width=size,
        channels=3,
        resize=ResizePolicy.LETTERBOX,
        interpolation=Interpolation.BILINEAR,
        pad_value=0,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


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
    raise FileNotFoundError(f"{data}: no instances.json or annotations/instances*.json")


def load_coco(data: str | Path, limit: int | None = None) -> SegmentationSet:
    """Every image of a COCO dataset (file names relative to the json's folder, or to its parent when the
    json lies in annotations/) with its rasterised class map."""
    from pycocotools.coco import COCO  # imported here: only training and tests need it

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
    """Fresh scenes from training.data.scenes with their semantic maps, in memory (no files)."""
    from training.data import scenes

    labels, class_of = labels_from_categories(scenes.CATEGORIES)
    lut = np.zeros(max(class_of) + 1, dtype=np.uint8)
    for cat_id, index in class_of.items():
        lut[cat_id] = index
    images, maps = [], []
    for _i, image, _anns, semantic in scenes.generate(count, seed):
        images.append(image)
        maps.append(lut[semantic])
    description = f"{count} generated scenes (training.data.scenes, seed {seed}, {scenes.WIDTH}x{scenes.HEIGHT})"
    return SegmentationSet(labels, images, maps, [], description)


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
    x, geometry = prepare(image, spec)
    return x, letterbox_target(class_map, geometry)


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


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class SegReport:
    labels: list[str]
    images: int
    seed: int | None  # generated held-out scenes: their seed
    metrics: dict[str, float]
    confusion: list[list[int]]  # [true class][predicted class] pixels at the original resolution

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def open_session(model: str | Path | bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # deterministic and no thread stalls on a busy machine
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def predict_maps(
    run: Callable[[np.ndarray], list[np.ndarray]], images: Sequence[Image.Image], meta: ModelMetadata,
    batch_size: int = 16,
) -> Iterator[np.ndarray]:
    """Original-resolution class maps of `images`, decoded by the service's own code (training.decoding);
    `run` maps a [N, C, H, W] batch to the model's outputs, in the session's order."""
    model = served_model(meta)
    spec = meta.input
    for start in range(0, len(images), batch_size):
        prepared = [prepare(image.convert(spec.color_mode), spec) for image in images[start : start + batch_size]]
        outputs = run(np.stack([x for x, _ in prepared]))
        for i, (_x, geometry) in enumerate(prepared):
            yield decode_class_ids(model, [output[i] for output in outputs], geometry)


def evaluate_onnx(model: str | Path | bytes, data: SegmentationSet, seed: int | None = None) -> SegReport:
    """Score an exported model through ONNX Runtime: prepare() -> ORT -> the service's decoder -> metrics
    against the original-resolution class maps. Input spec from the model's metadata."""
    from service.contract import from_metadata_props

    session = open_session(model)
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {input_name: x})

    n = len(meta.labels)
    conf = np.zeros((n, n), dtype=np.int64)
    for pred, truth in zip(predict_maps(run, data.images, meta), data.maps, strict=True):
        conf += confusion(pred, truth, n)
    return SegReport(list(meta.labels), len(data), seed, segmentation_metrics(conf, meta.labels), conf.tolist())


# ---------------------------------------------------------------------------------------------- training
@dataclass
class SegTrainConfig:
    epochs: int = 30
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.3
    dice_weight: float = 0.5  # + soft Dice loss over the object classes (helps thin, rare classes)
    hflip: bool = True
    # Training crops of the prepared input (0 = the whole input): far cheaper per step than whole inputs,
    # and centred on an object pixel with probability object_crop_p, so less compute goes to easy
    # background. The network is fully convolutional, so it runs on the whole input afterwards.
    crop: int = 64
    object_crop_p: float = 0.5
    bn_images: int = 0  # > 0: re-estimate the BatchNorm statistics on this many whole inputs per epoch
    val_fraction: float = 0.05  # of the COCO images: picks the epoch to keep
    # Wall-clock budget (0 = none): the cosine schedule runs over whichever comes first, all the epochs or
    # this many seconds, and training stops there, so a slow or busy machine still ends annealed in time.
    time_budget_s: float = 1080.0
    seed: int = 0
    threads: int = 1  # more threads stall each other on a busy machine (measured 11x slower per step)


@dataclass
class SegCheckpoint:
    arch_config: dict[str, Any]
    labels: list[str]
    input_spec: InputSpec
    state_dict: dict[str, torch.Tensor]
    data: dict[str, Any]
    train_config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    arch: str = ARCH

    def build_model(self) -> UNet:
        config = SegmenterConfig(**self.arch_config)
        model = UNet(config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {k: v for k, v in asdict(self).items() if k not in ("input_spec", "state_dict")}
        payload.update(
            format_version=FORMAT_VERSION,
            task=TASK,
            input_spec=self.input_spec.model_dump(mode="json"),
            state_dict=self.state_dict,
        )
        payload["arch_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch_config.items()}
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SegCheckpoint:
        payload = load_payload(path)
        if payload.get("task") != TASK or payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: not a semantic segmentation checkpoint of format {FORMAT_VERSION}")
        return cls(
            arch_config=dict(payload["arch_config"]),
            labels=list(payload["labels"]),
            input_spec=InputSpec.model_validate(payload["input_spec"]),
            state_dict=payload["state_dict"],
            data=payload["data"],
            train_config=payload.get("train_config", {}),
            summary=payload.get("summary", {}),
            history=payload.get("history", []),
            arch=payload.get("arch", ARCH),
        )


def is_semantic_checkpoint(path: str | Path) -> bool:
    try:
        payload = load_payload(path)
    except Exception:
        return False
    return isinstance(payload, dict) and payload.get("task") == TASK


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):  # full batches only (BatchNorm)
        yield order[start : start + batch_size]


def train_segmenter(
    data: SegmentationSet,
    config: SegTrainConfig | None = None,
    arch: SegmenterConfig | None = None,
    spec: InputSpec | None = None,
    log_path: Path | None = None,
    progress: bool = True,
) -> SegCheckpoint:
    """Train a U-Net on `data` (cross-entropy per pixel, AdamW, warmup + cosine); the epoch with the best
    validation mIoU (at the input resolution, on val_fraction of the images) is kept."""
    config = config or SegTrainConfig()
    spec = spec or default_input_spec()
    arch = arch or SegmenterConfig(num_classes=len(data.labels))
    if arch.num_classes != len(data.labels):
        raise ValueError(f"num_classes {arch.num_classes} != {len(data.labels)} labels")
    if config.threads:
        torch.set_num_threads(config.threads)
    # Confident softmaxes underflow into denormal floats, which make CPU kernels many times slower.
    torch.set_flush_denormal(True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n_val = max(1, round(len(data) * config.val_fraction)) if config.val_fraction > 0 else 0
    val_idx = np.arange(len(data) - n_val, len(data))  # the last images: the split is reproducible
    train_idx = np.arange(len(data) - n_val)
    if len(train_idx) < config.batch_size:
        raise ValueError(f"{len(train_idx)} training images, fewer than batch size {config.batch_size}")
    val_x, val_y = _render(data, val_idx, spec, flip=None)
    recalibrate = bool(config.crop and config.bn_images)
    bn_x = _render(data, train_idx[: config.bn_images], spec, flip=None)[0] if recalibrate else None

    model = UNet(arch)
    if model.stride > 1 and (spec.height % model.stride or spec.width % model.stride):
        raise ValueError(f"input {spec.width}x{spec.height} is not a multiple of the U-Net stride {model.stride}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_idx) // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))

    def progress_at(step: int) -> float:
        """0 -> 1 over the run: by steps, or by the time budget if that runs out first."""
        by_steps = (step - warmup) / max(1, total - warmup)
        if config.time_budget_s <= 0:
            return by_steps
        return max(by_steps, (time.perf_counter() - started) / config.time_budget_s)

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_at(step))))

    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    started = time.perf_counter()
    bar = _progress(total, progress)
    step = 0
    out_of_time = False
    for epoch in range(1, config.epochs + 1):
        model.train()
        losses: list[float] = []
        for batch in _batches(len(train_idx), config.batch_size, rng):
            if step >= warmup and progress_at(step) >= 1.0:
                out_of_time = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            flips = rng.random(len(batch)) < 0.5 if config.hflip else None
            x, y = _render(data, train_idx[batch], spec, flip=flips)
            if config.crop:
                x, y = random_crops(x, y, config.crop, config.object_crop_p, rng)
            loss = segmentation_loss(model(x), y, config.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        if bn_x is not None:
            recalibrate_batchnorm(model, bn_x)
        val_miou, val_loss = _validate(model, val_x, val_y, len(data.labels))
        row = {
            "epoch": epoch,
            "steps": step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": val_loss,
            "val_mIoU": val_miou,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val mIoU %.4f, %.0f s", epoch, row["train_loss"],
                 val_loss, val_miou, row["seconds"])
        if log_path:
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if best is None or val_miou >= best[0]:
            best = (val_miou, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if out_of_time:
            log.warning("time budget of %.0f s used up in epoch %d of %d", config.time_budget_s, epoch,
                        config.epochs)
            break
    if bar is not None:
        bar.close()
    assert best is not None
    seconds = time.perf_counter() - started
    return SegCheckpoint(
        arch_config=asdict(arch),
        labels=list(data.labels),
        input_spec=spec,
        state_dict=best[2],
        data={"description": data.description, "images": len(data), "train_images": len(train_idx),
              "val_images": n_val},
        train_config=asdict(config),
        summary={
            "best_epoch": best[1],
            "best_val_mIoU": best[0],
            "epochs_run": len(history),
            "steps": step,
            "stopped_by_time_budget": out_of_time,
            "train_seconds": seconds,
            "threads": torch.get_num_threads(),
        },
        history=history,
    )


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 0.0) -> torch.Tensor:
    """Per-pixel cross-entropy (IGNORE pixels skipped) + dice_weight * soft Dice loss averaged over the
    object classes present in the batch's targets or predictions (class 0, background, left out)."""
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
    if dice_weight <= 0:
        return loss
    valid = (target != IGNORE).unsqueeze(1)  # [B, 1, H, W]
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(torch.where(valid[:, 0], target, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    inter = (probs * onehot).sum((0, 2, 3))[1:]
    total = (probs + onehot).sum((0, 2, 3))[1:]
    dice = 1 - (2 * inter + 1) / (total + 1)
    return loss + dice_weight * dice.mean()


def random_crops(
    x: torch.Tensor, y: torch.Tensor, size: int, object_p: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """size x size crops of a batch ([B, C, H, W] inputs, [B, H, W] targets), each centred on a random
    object pixel with probability object_p (when there is one), else placed uniformly."""
    height, width = y.shape[1:]
    size = min(size, height, width)
    xs, ys = [], []
    for image, target in zip(x, y, strict=True):
        objects = ((target > 0) & (target != IGNORE)).nonzero()
        if len(objects) and rng.random() < object_p:
            cy, cx = objects[rng.integers(len(objects))].tolist()
            top = int(np.clip(cy - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, height - size))
            left = int(np.clip(cx - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, width - size))
        else:
            top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        xs.append(image[:, top : top + size, left : left + size])
        ys.append(target[top : top + size, left : left + size])
    return torch.stack(xs), torch.stack(ys)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 32) -> None:
    """Re-estimate every BatchNorm's running mean/variance as the plain average over the whole inputs x
    (training on crops biases them towards object-rich windows)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


def _render(
    data: SegmentationSet, indices: Sequence[int], spec: InputSpec, flip: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for k, i in enumerate(indices):
        image, class_map = data.images[i], data.maps[i]
        if flip is not None and flip[k]:  # mirror the user-facing image, then prepare() it as usual
            image, class_map = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), class_map[:, ::-1]
        x, y = render_pair(image, np.ascontiguousarray(class_map), spec)
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


@torch.no_grad()
def _validate(model: UNet, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    model.eval()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    losses = []
    for start in range(0, len(x), 32):
        logits = model(x[start : start + 32])
        target = y[start : start + 32]
        losses.append(float(F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")))
        conf += confusion(logits.argmax(1).numpy(), target.numpy(), num_classes)
    pixels = max(1, int((y != IGNORE).sum()))
    return mean_iou(conf), sum(losses) / pixels


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="batch", leave=False)


# ---------------------------------------------------------------------------------------------- export
@dataclass
class SegExportResult:
    path: Path
    metadata: ModelMetadata
    test: SegReport
    parity_max_abs_diff: float
    file_bytes: int
    exporter: str
    parameters: int
    heldout: SegmentationSet


def heldout_scenes(seed: int = HELDOUT_SEED, count: int = HELDOUT_COUNT) -> SegmentationSet:
    return generated_scenes(count, seed)


@torch.no_grad()
def golden_samples(model: UNet, spec: InputSpec, images: Sequence[Image.Image]) -> Golden:
    """Images exactly as a user would POST them (PNG) and the PyTorch logits for prepare(image), flattened
    and rounded to GOLDEN_DECIMALS."""
    samples = []
    for image in images:
        x, _ = prepare(image.convert(spec.color_mode), spec)
        logits = model(torch.from_numpy(x)[None])[0].numpy().astype(np.float64)
        expected = np.round(logits.ravel(), GOLDEN_DECIMALS).tolist()
        samples.append(GoldenSample(image_png_base64=png_base64(image), expected=expected))
    return Golden(atol=GOLDEN_ATOL, samples=samples)


@torch.no_grad()
def check_parity(proto: onnx.ModelProto, model: UNet, x: np.ndarray) -> float:
    """Max |ORT - PyTorch| on the logits for batches of 1 and 3 (and all of x); raises above PARITY_ATOL."""
    session = open_session(proto.SerializeToString())
    name = session.get_inputs()[0].name
    worst = 0.0
    for batch in (x[:1], x[:3], x):
        expected = model(torch.from_numpy(batch)).numpy()
        got = session.run(None, {name: batch})[0]
        if got.shape != expected.shape:
            raise RuntimeError(f"ORT output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > PARITY_ATOL:
        raise RuntimeError(f"ORT vs PyTorch max abs diff {worst:.3g} > {PARITY_ATOL}")
    return worst


def export_segmenter(
    checkpoint: SegCheckpoint,
    out_path: str | Path,
    heldout: SegmentationSet | None = None,
    heldout_seed: int | None = HELDOUT_SEED,
    model_version: str = "1.0.0",
) -> SegExportResult:
    """Export to ONNX (dynamic batch, output "logits" [batch, class, H, W]), check graph and parity, write
    metadata with golden samples, then evaluate the saved file with ONNX Runtime on `heldout` (default:
    HELDOUT_COUNT generated scenes of heldout_seed) and store those metrics in the metadata."""
    out_path = Path(out_path)
    if heldout is None:
        heldout_seed = HELDOUT_SEED if heldout_seed is None else heldout_seed
        heldout = heldout_scenes(heldout_seed, HELDOUT_COUNT)
    if list(heldout.labels) != list(checkpoint.labels):
        raise ValueError(f"held-out labels {heldout.labels} != checkpoint labels {checkpoint.labels}")
    model = checkpoint.build_model()
    spec = checkpoint.input_spec
    x = np.stack([prepare(im.convert(spec.color_mode), spec)[0] for im in heldout.images[:8]])
    if len(x) < 2:
        x = np.concatenate([x, x])  # >= 2 so the exporter does not specialise the batch size to 1
    proto, exporter = trace_to_onnx(model, torch.from_numpy(x[:4]), spec.name)
    strip_debug_info(proto)
    onnx.checker.check_model(proto, full_check=True)
    parity = check_parity(proto, model, x)

    meta = ModelMetadata(
        task=Task.SEMANTIC_SEGMENTATION,
        labels=list(checkpoint.labels),
        input=spec,
        outputs=[OutputSpec(name=OUTPUT_NAME, layout=OUTPUT_LAYOUT, kind="logits")],
        model_version=model_version,
        architecture=describe_architecture(checkpoint),
        training_data=checkpoint.data.get("description", "COCO dataset"),
        golden=golden_samples(model, spec, heldout.images[:GOLDEN_COUNT]),
    )
    proto.doc_string = f"{ARCH_TITLE}, exported by Stride's training package"
    write_metadata(proto, meta)
    save_model(proto, out_path)
    test = evaluate_onnx(out_path, heldout, heldout_seed)
    metrics = dict(test.metrics)
    metrics["heldout_images"] = float(len(heldout))
    if heldout_seed is not None:
        metrics["heldout_seed"] = float(heldout_seed)
    meta = meta.model_copy(update={"metrics": metrics})
    write_metadata(proto, meta)
    save_model(proto, out_path)
    onnx.checker.check_model(str(out_path), full_check=True)
    verify_saved(out_path, meta)
    return SegExportResult(
        path=out_path,
        metadata=meta,
        test=test,
        parity_max_abs_diff=parity,
        file_bytes=out_path.stat().st_size,
        exporter=exporter,
        parameters=sum(p.numel() for p in model.parameters()),
        heldout=heldout,
    )


def describe_architecture(checkpoint: SegCheckpoint) -> str:
    options = ", ".join(f"{k}={v}" for k, v in checkpoint.arch_config.items())
    return f"{checkpoint.arch}: {ARCH_TITLE}; {options}"


# ---------------------------------------------------------------------------------------------- model card
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)  # fmt: skip


def colourise(class_map: np.ndarray) -> Image.Image:
    return Image.fromarray(PALETTE[np.asarray(class_map) % len(PALETTE)], "RGB")


def plot_training(history: list[dict[str, float]], best_epoch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train: cross-entropy + Dice, crops")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation: cross-entropy, whole inputs")
    ax_loss.set(xlabel="epoch", ylabel="loss per pixel", title="Loss", yscale="log")
    ax_iou.plot(epochs, [r["val_mIoU"] for r in history], label="validation (input resolution)")
    ax_iou.set(xlabel="epoch", ylabel="mIoU, object classes", title="Validation mIoU")
    for ax in (ax_loss, ax_iou):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def example_predictions(model_path: Path, data: SegmentationSet, path: Path, count: int = 4) -> None:
    """Rows of input | ground truth | prediction (ONNX Runtime, the service's own decoder), 2x enlarged."""
    session = open_session(model_path)
    from service.contract import from_metadata_props

    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    name = session.get_inputs()[0].name
    images = data.images[:count]
    preds = list(predict_maps(lambda x: session.run(None, {name: x}), images, meta))
    w, h = images[0].size
    gap = 4
    sheet = Image.new("RGB", (3 * w + 2 * gap, len(images) * h + (len(images) - 1) * gap), (255, 255, 255))
    for row, (image, truth, pred) in enumerate(zip(images, data.maps, preds, strict=False)):
        for col, tile in enumerate((image, colourise(truth), colourise(pred))):
            sheet.paste(tile, (col * (w + gap), row * (h + gap)))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST).save(path)


def write_card(
    folder: Path, checkpoint: SegCheckpoint, result: SegExportResult, name: str, command: str, rationale: str
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plot_training(checkpoint.history, checkpoint.summary["best_epoch"], folder / "training_curves.png")
    example_predictions(result.path, result.heldout, folder / "example_predictions.png")
    machine = describe_machine()
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "model": result.path.name,
                "model_version": result.metadata.model_version,
                "measured_with": "onnxruntime on the exported file; service.preprocess.prepare inputs; logits "
                "cropped, bilinearly resized to the original size, argmax; scored at the original resolution",
                "metadata_metrics": result.metadata.metrics,
                "heldout": result.test.to_dict(),
                "parity_max_abs_diff_vs_pytorch": result.parity_max_abs_diff,
                "parameters": result.parameters,
                "file_bytes": result.file_bytes,
                "exporter": result.exporter,
                "training": {**checkpoint.summary, "machine": machine},
                "train_config": checkpoint.train_config,
                "arch_config": checkpoint.arch_config,
                "data": checkpoint.data,
                "history": checkpoint.history,
            },
            indent=2,
        )
        + "\n"
    )
    (folder / "README.md").write_text(render_card(checkpoint, result, name, command, rationale, machine))


def render_card(
    checkpoint: SegCheckpoint, result: SegExportResult, name: str, command: str, rationale: str, machine: str
) -> str:
    test, meta, spec, s = result.test, result.metadata, checkpoint.input_spec, checkpoint.summary
    m = test.metrics
    ious = iou_per_class(np.asarray(test.confusion))
    pixels = np.asarray(test.confusion).sum(1)
    per_class = "\n".join(
        f"| {label} | {'-' if iou is None else f'{iou:.4f}'} | {int(p):,} |"
        for label, iou, p in zip(test.labels, ious, pixels, strict=True)
    )
    hyper = "\n".join(f"| `{k}` | `{v}` |" for k, v in checkpoint.train_config.items())
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in checkpoint.arch_config.items())
    seed_note = f"seed {test.seed}" if test.seed is not None else "given data set"
    return f"""# {name} — {ARCH_TITLE}

`{name}.onnx`, version `{meta.model_version}`, task `semantic_segmentation`, labels
{", ".join(f"`{label}`" for label in meta.labels)} (index = class id, 0 = background).

Output `{OUTPUT_NAME}`: [batch, {len(meta.labels)}, {spec.height}, {spec.width}] float32 (layout
`{OUTPUT_LAYOUT}`, kind `logits`), one score per class for every pixel of the model input, at the full
input resolution. Per-pixel class of the original image: crop the letterbox padding off the logits,
resize them bilinearly to the original size, take the argmax over classes (what the service does).

## Held-out metrics (ONNX Runtime, exported file)

{test.images} freshly generated scenes ({seed_note}; no training image comes from that seed), each sent
through `service.preprocess.prepare` and the exported `.onnx` with ONNX Runtime, decoded as above and
scored at the ORIGINAL resolution against the scene generator's class map. IoU is accumulated over all
pixels of all images per class; mIoU averages the object classes (background excluded). The same
numbers are in the model's metadata (`metrics`); `tests/models/test_bundled_semantic.py` re-measures them.

| metric | value |
|---|---|
| mIoU (circle, square, triangle, person) | **{m["mIoU"]:.4f}** |
| mIoU including background | {m["mIoU_with_background"]:.4f} |
| pixel accuracy | {m["pixel_accuracy"]:.4f} |
| ONNX Runtime vs PyTorch, max abs diff on logits (batch 1, 3, 8) | {result.parity_max_abs_diff:.2e} |

| class | IoU | ground-truth pixels |
|---|---|---|
{per_class}

Input | ground truth | prediction (ONNX Runtime) on the first held-out scenes:

![example predictions](example_predictions.png)

## Architecture

{CARD_SUMMARY}

| option | value |
|---|---|
{options}

**Why this configuration:** {rationale}

Parameters: **{result.parameters:,}**. ONNX file: {result.file_bytes:,} bytes (of which the two golden
samples' expected logits are most of the metadata), opset {OPSET}, dynamic batch axis, {result.exporter}
exporter. Golden samples: {len(meta.golden.samples) if meta.golden else 0} held-out scenes as PNG with
the PyTorch logits rounded to {GOLDEN_DECIMALS} decimals, atol {GOLDEN_ATOL}.

## Input

`{spec.name}`: [batch, {spec.channels}, {spec.height}, {spec.width}] float32, made by the service from the
uploaded image: converted to `{spec.color_mode}`, letterboxed to {spec.width}x{spec.height}
({spec.interpolation.value} resize keeping the aspect ratio, centred, padded with {spec.pad_value}),
pixels multiplied by {spec.scale:.6g}, then (x − mean) / std with mean {list(spec.mean)} and std
{list(spec.std)}. A 160x120 scene becomes 128x96 with 16 padding rows above and below.

## Data

Training: {checkpoint.data.get("description", "")}. The last {checkpoint.data.get("val_images")} images
are the validation split (picking the epoch only); {checkpoint.data.get("train_images")} train. Each
class map is rasterised from the COCO annotations (pycocotools `annToMask`, later annotations over
earlier ones), letterboxed like its image (nearest neighbour) with the padding ignored by the loss.
Augmentation: random horizontal flips of the image and its class map (before `prepare`). Training steps
see {checkpoint.train_config.get("crop") or "whole"}-pixel square crops of the prepared inputs, centred on
an object pixel with probability {checkpoint.train_config.get("object_crop_p")} (else anywhere, padding
included); the fully-convolutional network then runs on the whole 128x128 input in validation and in
production.

The scenes are 160x120 textured or noisy backgrounds with 1-5 saturated shapes and stick figures that
may occlude each other. Expect much worse results on photographs or on objects unlike these.

## Training

Reproduce with:

```
{command}
```

Per-pixel cross-entropy plus {checkpoint.train_config.get("dice_weight")} x soft Dice loss over the object
classes, AdamW with linear warmup and cosine decay over the planned steps or the wall-clock budget
(`time_budget_s`), whichever ends first{" (here: the budget)" if s.get("stopped_by_time_budget") else ""};
the epoch with the best validation mIoU is kept: epoch {s["best_epoch"]} of {s["epochs_run"]} run
(validation mIoU at the input resolution {s["best_val_mIoU"]:.4f}, {s.get("steps", "?")} steps in all).
Training took **{s["train_seconds"]:.0f} s** ({s["train_seconds"] / 60:.1f} min)
on {machine}, {s["threads"]} torch thread(s), on a machine SHARED with other training jobs at the time,
so an idle machine is faster. Other CPUs or thread counts can differ in floating-point rounding.

| hyperparameter | value |
|---|---|
{hyper}

![training curves](training_curves.png)

Per-epoch numbers, the confusion matrix and the full evaluation are in [metrics.json](metrics.json).
"""


# ---------------------------------------------------------------------------------------------- bundle
BUNDLE_NAME = "segmenter"
BUNDLE_TRAIN_COUNT = 2000
BUNDLE_CONFIG = SegTrainConfig()  # the defaults
BUNDLE_ARCH = SegmenterConfig()  # the defaults
BUNDLE_RATIONALE = (
    "sized for the CPU budget. Five levels of 8-128 channels cost less per image than four levels of "
    "16-64 (1.5 s vs 2.4 s per training batch of 16 whole inputs, benchmarked here) and see more context: "
    "the 8x8 bottleneck spans the whole 128x128 input, and the shape classes differ only in their "
    "outlines. Training on 64x64 crops (half centred on an object) in batches of 8 buys many cheap "
    "optimizer steps: 30 epochs are 7,110 steps, 6.6 minutes on the shared machine, and the validation "
    "mIoU was still creeping up at the end (0.850 at epoch 19, 0.873 at epoch 29), so a longer schedule "
    "would likely score a little higher. One torch thread: with two, a training step was 11x slower on "
    "the busy machine (the threads wait for each other). Re-estimating the BatchNorm statistics on whole "
    "inputs after crop training (`bn_images`) was tried only briefly, showed no gain, and is off."
)


def build_bundled_segmenter(models_dir: Path, progress: bool = True, work_dir: Path | None = None) -> SegExportResult:
    """Generate the training scenes as a COCO dataset, train from it, export models/segmenter.onnx with
    held-out metrics, write the card. Returns the export result."""
    from training.data import scenes

    work_dir = work_dir or Path("runs") / BUNDLE_NAME
    scenes.write_dataset(work_dir / "data", BUNDLE_TRAIN_COUNT, TRAIN_SEED)
    data = load_coco(work_dir / "data")
    checkpoint = train_segmenter(data, BUNDLE_CONFIG, BUNDLE_ARCH, progress=progress)
    checkpoint.save(work_dir / "checkpoint.pt")
    return export_bundled_segmenter(checkpoint, Path(models_dir), work_dir)


def export_bundled_segmenter(checkpoint: SegCheckpoint, models_dir: Path, work_dir: Path) -> SegExportResult:
    """The export and card half of build_bundled_segmenter (rerun alone to redo them from a checkpoint)."""
    out_path = models_dir / f"{BUNDLE_NAME}.onnx"
    result = export_segmenter(checkpoint, out_path)
    data_dir = work_dir / "data"
    bundle_cmd = f"python -m training bundle --models-dir {shlex.quote(str(models_dir))} --only {BUNDLE_NAME}"
    command = (
        f"{bundle_cmd}\n\n# or, step by step (same defaults):\n"
        f"python -m training data scenes --out {data_dir} --count {BUNDLE_TRAIN_COUNT} --seed {TRAIN_SEED}\n"
        f"python -m training train --task {TASK} --data {data_dir} --out {work_dir}\n"
        f"python -m training export {work_dir}/checkpoint.pt --out {out_path} --card"
    )
    checkpoint.summary["command"] = command
    checkpoint.save(work_dir / "checkpoint.pt")
    write_card(models_dir / BUNDLE_NAME, checkpoint, result, BUNDLE_NAME, command, BUNDLE_RATIONALE)
    return result


# ---------------------------------------------------------------------------------------------- CLI
def wants_semantic(argv: Sequence[str]) -> bool:
    """Whether `python -m training ARGV` is a semantic segmentation command: `train --task
    semantic_segmentation`, `export` of a semantic checkpoint, `evaluate` of a semantic ONNX file."""
    if not argv:
        return False
    command, rest = argv[0], list(argv[1:])
    if command == "train":
        for i, arg in enumerate(rest):
            if arg == "--task" and i + 1 < len(rest):
                return rest[i + 1] == TASK
            if arg.startswith("--task="):
                return arg.split("=", 1)[1] == TASK
        return False
    positional = next((a for a in rest if not a.startswith("-")), None)
    if command == "export" and positional and positional.endswith((".pt", ".pth")) and Path(positional).is_file():
        return is_semantic_checkpoint(positional)
    if command == "evaluate" and positional and positional.endswith(".onnx") and Path(positional).is_file():
        props = {p.key: p.value for p in onnx.load(positional, load_external_data=False).metadata_props}
        return props.get("task") == json.dumps(TASK)
    return False


def _add_dataclass_options(parser: Any, cls: type) -> None:
    import argparse
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (defaults reproduce the bundled model)")
    for f in dataclasses.fields(cls):
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            group.add_argument(flag, type=hint, default=f.default, help=f"default {f.default}")


def build_parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training", description="Semantic segmentation models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a U-Net on a COCO dataset with masks")
    train.add_argument("--task", required=True, choices=[TASK])
    train.add_argument("--data", required=True, type=Path, help="COCO folder (instances.json) or json file")
    train.add_argument("--out", required=True, type=Path, help="run folder: checkpoint.pt, metrics.jsonl")
    train.add_argument("--input-size", type=int, default=128, help="square letterbox input size (default 128)")
    train.add_argument("--arch", default=ARCH, choices=[ARCH])
    train.add_argument("--arch-option", action="append", default=[], metavar="KEY=VALUE",
                       help="U-Net config override, e.g. widths=[8,16,32] (repeatable)")
    train.add_argument("--no-progress", action="store_true")
    _add_dataclass_options(train, SegTrainConfig)
    train.set_defaults(handler=_run_train)

    export = commands.add_parser("export", help="export a semantic checkpoint to ONNX with held-out metrics")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--model-version", default="1.0.0")
    export.add_argument("--heldout-data", type=Path, help="COCO folder to measure on (default: generated scenes)")
    export.add_argument("--heldout-seed", type=int, default=HELDOUT_SEED)
    export.add_argument("--heldout-count", type=int, default=HELDOUT_COUNT)
    export.add_argument("--card", action="store_true", help="also write the model card folder next to --out")
    export.set_defaults(handler=_run_export)

    evaluate = commands.add_parser("evaluate", help="mIoU of a semantic ONNX model through ONNX Runtime")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("--data", type=Path, help="COCO folder (default: generated scenes)")
    evaluate.add_argument("--seed", type=int, default=HELDOUT_SEED)
    evaluate.add_argument("--count", type=int, default=HELDOUT_COUNT)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=_run_evaluate)
    return parser


def semantic_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    args.argv = list(argv)
    return args.handler(args)


def _parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--arch-option needs KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def _run_train(args: Any) -> int:
    import dataclasses

    config = SegTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SegTrainConfig)})
    data = load_coco(args.data)
    arch = SegmenterConfig(**{"num_classes": len(data.labels), **_parse_options(args.arch_option)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.jsonl").unlink(missing_ok=True)
    checkpoint = train_segmenter(data, config, arch, default_input_spec(args.input_size),
                                 log_path=args.out / "metrics.jsonl", progress=not args.no_progress)
    checkpoint.summary["command"] = shlex.join(["python", "-m", "training", *args.argv])
    path = checkpoint.save(args.out / "checkpoint.pt")
    s = checkpoint.summary
    print(f"{path}: best epoch {s['best_epoch']}/{s['epochs_run']}, val mIoU {s['best_val_mIoU']:.4f}, "
          f"{s['train_seconds']:.1f} s")
    return 0


def _run_export(args: Any) -> int:
    checkpoint = SegCheckpoint.load(args.checkpoint)
    if args.heldout_data:
        heldout, seed = load_coco(args.heldout_data), None
    else:
        heldout, seed = heldout_scenes(args.heldout_seed, args.heldout_count), args.heldout_seed
    result = export_segmenter(checkpoint, args.out, heldout, seed, model_version=args.model_version)
    m = result.metadata.metrics
    print(f"{result.path}: held-out mIoU {m['mIoU']:.4f} via ONNX Runtime ({len(heldout)} images), "
          f"parity {result.parity_max_abs_diff:.1e}, {result.file_bytes:,} bytes ({result.exporter} exporter)")
    if args.card:
        folder = args.out.with_suffix("")
        train_command = checkpoint.summary.get("command", "# (checkpoint does not record its train command)")
        command = f"{train_command}\n{shlex.join(['python', '-m', 'training', *args.argv])}"
        write_card(folder, checkpoint, result, args.out.stem, command,
                   "chosen by whoever ran the training command above")
        print(f"model card: {folder}/README.md")
    return 0


def _run_evaluate(args: Any) -> int:
    data = load_coco(args.data) if args.data else heldout_scenes(args.seed, args.count)
    report = evaluate_onnx(args.model, data, None if args.data else args.seed)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{args.model}: {report.images} images ({data.description}), ONNX Runtime, original resolution")
    for key, value in report.metrics.items():
        print(f"  {key:<22} {value:.4f}")
    return 0


def run_semantic_bundle(models_dir: Path, names: Sequence[str], progress: bool = True) -> None:
    for name in names:
        if name != BUNDLE_NAME:
            raise ValueError(f"no bundled semantic segmentation model {name!r}")
        result = build_bundled_segmenter(Path(models_dir), progress=progress)
        m = result.metadata.metrics
        print(f"{result.path}: held-out mIoU {m['mIoU']:.4f} via ONNX Runtime ({int(m['heldout_images'])} scenes, "
              f"seed {int(m['heldout_seed'])}), parity {result.parity_max_abs_diff:.1e}, {result.file_bytes:,} bytes")


SEMANTIC_BUNDLED = (BUNDLE_NAME,)
