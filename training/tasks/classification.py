"""The `classification` task: one label per image, from a registered source (digits) or a user's folders.

    python -m training train --task classification --arch lenet5 --data digits --out runs/lenet5
    python -m training train --task classification --arch resnet --data path/to/classes --image-size 64 ...
    python -m training export runs/lenet5/checkpoint.pt --out models/lenet5.onnx --card
    python -m training evaluate models/lenet5.onnx [--data digits] [--seed 0] [--count 100]

Data: images are kept as the Pillow images a user would send and rendered once with the service's own
`prepare`, so training, evaluation and serving share one preprocessing. The data is split train / val /
test by the source (stratified, seeded by --split-seed); val picks the epoch (early stopping), test only
gives the reported metrics. Augmentation perturbs the rendered training tensors only: a small random
affine for digits-like data, a random resized crop with flip and colour jitter for photos and folders.

Evaluation runs the exported file through ONNX Runtime and decodes every image's logits with the service's
classifier (`StrideModel.decode`: softmax, top-k), so accuracy, macro F1 and cross-entropy are those of
the answers a request gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from service.contract import InputSpec, ModelMetadata, OutputSpec
from service.families import ClassifyQuery
from service.preprocess import Geometry, prepare
from service.results import Classification
from training.checkpoint import Checkpoint
from training.data import DATASETS, DEFAULT_SPLIT_SEED, ImageSet, ImageSplits, load_dataset, render_batch
from training.decoding import served_model
from training.export import ExportError, open_session, read_metadata, run_outputs
from training.flops import count_flops
from training.registry import count_parameters, get_arch
from training.tasks.base import (
    CardSection,
    EvalRequest,
    Evaluation,
    Prepared,
    TaskPlugin,
    TrainRequest,
)
from training.trainer import Job, Losses, TrainerConfig, seed_everything

OUTPUT_NAME = "logits"
PARTS = ("train", "val", "test")
VALIDATION_BATCH = 512  # validation forward passes: no gradients, so larger batches are cheap
CALIBRATION_SEED = 0  # which training images int8 calibration sees
CONFUSION_PLOT = "confusion_matrix.png"
SPLIT_RECORD = "split.json"

Augmentation = Literal["none", "affine", "crop"]


@dataclass(frozen=True)
class ClassifyConfig(TrainerConfig):
    """`train --task classification` options: the trainer's, with classifier defaults, and the task's."""

    epochs: int = 100
    batch_size: int = 64
    warmup_epochs: float = 2.0
    patience: int = 30  # stop after this many epochs without a better validation accuracy
    threads: int = 0  # 0 = min(cpu_count, 4)
    label_smoothing: float = 0.1  # softer targets: a little better calibrated and more accurate here
    # Augmentation (training only): random rotation (degrees), isotropic scale (+- fraction) and
    # translation (+- fraction of the input width/height), drawn per image.
    augment: bool = True
    max_rotation: float = 15.0
    max_scale: float = 0.15
    max_translate: float = 0.10
    # Which augmentation: "affine" (above; digits-style), "crop" (random resized crop, horizontal flip,
    # colour jitter; photos and user data) or "auto" (affine for built-in sources, crop for folders).
    augmentation: Literal["auto", "affine", "crop"] = "auto"
    crop_min_area: float = 0.6  # random resized crop: area fraction drawn from [crop_min_area, 1]
    hflip: bool = True  # crop: mirror half the images left-right (turn off for text, digits, arrows)
    jitter: float = 0.2  # crop: brightness/contrast/saturation factors drawn from [1-jitter, 1+jitter]


# ------------------------------------------------------------------------------------------------ data
@lru_cache(maxsize=4)
def _registered_source(name: str, split_seed: int) -> ImageSplits:
    return load_dataset(name, split_seed)


def load_splits(name: str, split_seed: int) -> ImageSplits:
    """A registered source (kept in memory: export asks for it several times) or a folder, read afresh
    every time so that files changed since training are noticed."""
    if name in DATASETS:
        return _registered_source(name, split_seed)
    return load_dataset(name, split_seed)


def is_folder_data(splits: ImageSplits) -> bool:
    return splits.extra.get("kind") == "folders"


def split_files(splits: ImageSplits) -> dict[str, list[str]]:
    """Folder data: the files (relative to the folder) of each part, as the checkpoint records them."""
    files: list[str] = splits.extra["files"]  # type: ignore[assignment]
    return {part: [files[i] for i in getattr(splits, part).source_indices] for part in PARTS}


def data_record(splits: ImageSplits) -> dict[str, Any]:
    """How to find the data again: the checkpoint's `data`."""
    record: dict[str, Any] = {"name": splits.name, "split_seed": splits.split_seed, "description": splits.description,
                              "sizes": {part: len(getattr(splits, part)) for part in PARTS}}
    if is_folder_data(splits):
        record["split"] = split_files(splits)
    return record


def checkpoint_splits(checkpoint: Checkpoint) -> ImageSplits:
    """The split a checkpoint was trained on, rebuilt from its source. Its labels must be the checkpoint's
    and, for a folder, the files of every part the ones recorded at training time (files added or removed
    since would silently move images between train and test)."""
    splits = load_splits(checkpoint.data["name"], int(checkpoint.data.get("split_seed", DEFAULT_SPLIT_SEED)))
    if list(splits.labels) != list(checkpoint.labels):
        raise ExportError(f"data labels {splits.labels} != checkpoint labels {checkpoint.labels}")
    recorded = checkpoint.data.get("split")
    if recorded is not None:
        now = split_files(splits)
        for part in PARTS:
            if now[part] != list(recorded[part]):
                raise ExportError(f"the {part} files under {checkpoint.data['name']} differ from those recorded in "
                                  "the checkpoint; export from the data as it was at training time")
    return splits


def class_round_robin(targets: np.ndarray) -> list[int]:
    """Positions ordered by their rank within their class, then by class: the first image of every class
    (classes in order), then the second of every class, ... So any prefix covers the classes evenly."""
    rank_in_class = np.zeros(len(targets), dtype=np.int64)
    for cls in np.unique(targets):
        members = np.flatnonzero(targets == cls)
        rank_in_class[members] = np.arange(len(members))
    return sorted(range(len(targets)), key=lambda i: (int(rank_in_class[i]), int(targets[i])))


# ----------------------------------------------------------------------------------------------- input
def choose_input_spec(arch: str, splits: ImageSplits, image_size: int = 0) -> InputSpec:
    """The architecture's own input spec for its reference data (digits), at `image_size` when given; for a
    user's folders: the architecture's input size (or `image_size`), 1 channel when every image is
    grayscale else 3 (RGB), and mean/std per channel measured on the training split at that size."""
    spec = get_arch(arch)
    if not is_folder_data(splits):
        return spec.input_for(image_size)
    channels = 1 if splits.extra.get("color_mode", "RGB") == "L" else 3
    unit = {"mean": (0.0,) * channels, "std": (1.0,) * channels}
    probe = spec.input_for(image_size).model_copy(update={"channels": channels, **unit})
    x = render_batch(splits.train.images, probe)  # [N, C, H, W] in [0, 1]
    mean = tuple(round(float(v), 4) for v in x.mean((0, 2, 3)))
    std = tuple(round(max(float(v), 1e-3), 4) for v in x.std((0, 2, 3)))
    return probe.model_copy(update={"mean": mean, "std": std})


def input_notes(arch: str, spec: InputSpec, image_size: int, splits: ImageSplits) -> list[str]:
    """What the card and the CLI say about the input the run used."""
    default = get_arch(arch).default_input
    size = f"input {spec.width}x{spec.height}"
    if image_size:
        notes = [f"{size} (--image-size {image_size}; the architecture's default is {default.width}x{default.height})"]
    else:
        notes = [f"{size} (the architecture's default)"]
    if is_folder_data(splits):
        notes.append(f"{spec.channels} channel(s) ({spec.color_mode}), mean {list(spec.mean)} and std "
                     f"{list(spec.std)} measured on the {len(splits.train)} training images at that size")
    return notes


def background_value(spec: InputSpec) -> float:
    """The normalised value of a black (pad_value) pixel: what new border pixels should read as."""
    return (spec.pad_value * spec.scale - spec.mean[0]) / spec.std[0]


# -------------------------------------------------------------------------------------------- augment
def augment(x: torch.Tensor, config: ClassifyConfig, background: float, generator: torch.Generator) -> torch.Tensor:
    """Random small affine transform per image. x: [B, C, H, W] normalised model input."""
    b = x.shape[0]
    if b == 0:
        return x  # affine_grid refuses an empty batch

    def uniform(limit: float) -> torch.Tensor:  # [B] in [-limit, limit]
        return (torch.rand(b, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(config.max_rotation))
    scale = 1.0 + uniform(config.max_scale)
    # affine_grid maps output coords to input coords in [-1, 1]; a shift of t moves the image by t/2 widths.
    tx, ty = uniform(2 * config.max_translate), uniform(2 * config.max_translate)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # [B, H, W, 2]
    # grid_sample fills outside pixels with 0; shift so that 0 means "background", not mid-grey.
    return F.grid_sample(x - background, grid, mode="bilinear", align_corners=False) + background


def augment_crop(x: torch.Tensor, config: ClassifyConfig, spec: InputSpec, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip + colour jitter, in tensor ops. x: [B, C, H, W] normalised
    model input; returns the same shape, pixel values kept inside the range real images can have."""
    b, c = x.shape[:2]
    if b == 0:
        return x  # affine_grid refuses an empty batch
    mean = torch.tensor(spec.mean).view(1, c, 1, 1)
    std = torch.tensor(spec.std).view(1, c, 1, 1)
    pixels = x * std + mean  # back to [0, 1] pixel scale (scale=1/255 rendering)

    # Random resized crop: area fraction in [crop_min_area, 1], aspect ratio in [3/4, 4/3] (log-uniform),
    # placed uniformly inside the image, resampled to the full size with bilinear interpolation.
    area = config.crop_min_area + (1 - config.crop_min_area) * torch.rand(b, generator=generator)
    ratio = torch.exp((torch.rand(b, generator=generator) * 2 - 1) * math.log(4 / 3))
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.ones(b)
    if config.hflip:
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if config.jitter > 0:
        pixels = colour_jitter(pixels, config.jitter, generator)
    return (pixels - mean) / std


def colour_jitter(pixels: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and (3 channels) saturation factors in [1 - jitter, 1 + jitter] per image.
    pixels: [B, C, H, W] in [0, 1]; the result is clamped to [0, 1]."""
    b, c = pixels.shape[:2]

    def factor() -> torch.Tensor:  # [B, 1, 1, 1]
        return (1 + (torch.rand(b, generator=generator) * 2 - 1) * jitter).view(b, 1, 1, 1)

    pixels = pixels * factor()  # brightness
    grey = pixels.mean(1, keepdim=True)  # [B, 1, H, W] luminance proxy
    level = grey.mean((2, 3), keepdim=True)
    pixels = (pixels - level) * factor() + level  # contrast
    if c == 3:
        pixels = (pixels - grey) * factor() + grey  # saturation: towards / away from grey
    return pixels.clamp(0.0, 1.0)


def resolve_augmentation(config: ClassifyConfig, folder_data: bool) -> Augmentation:
    if not config.augment:
        return "none"
    if config.augmentation != "auto":
        return config.augmentation
    return "crop" if folder_data else "affine"


def augmenter(kind: Augmentation, config: ClassifyConfig,
              spec: InputSpec) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """(batch, generator) -> augmented batch."""
    if kind == "crop":
        return lambda x, generator: augment_crop(x, config, spec, generator)
    if kind == "affine":
        background = background_value(spec)
        return lambda x, generator: augment(x, config, background, generator)
    return lambda x, generator: x


def describe_augmentation(kind: str, train_config: dict[str, Any]) -> str:
    """One line for the card, from the options the run recorded."""
    c = train_config
    if kind == "crop":
        return (f"random resized crop (area {c.get('crop_min_area')}-1, aspect 3/4-4/3)"
                + (", horizontal flip" if c.get("hflip") else "")
                + (f", brightness/contrast/saturation jitter ±{c.get('jitter')}" if c.get("jitter") else ""))
    if kind == "affine":
        return (f"random rotation ±{c.get('max_rotation')}°, scale ±{float(c.get('max_scale', 0)) * 100:.0f}%, "
                f"translation ±{float(c.get('max_translate', 0)) * 100:.0f}% of the image size, on the rendered "
                "input tensors")
    return "none"


# ------------------------------------------------------------------------------------------- training
def tensors(subset: ImageSet, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C, H, W] float32 rendered as the service renders, [N] int64 class indices."""
    return torch.from_numpy(render_batch(subset.images, spec)), torch.from_numpy(subset.targets)


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def classification_loss(label_smoothing: float) -> Callable[[nn.Module, Any], Losses]:
    def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Losses:
        x, y = batch
        device = module_device(net)
        logits = net(x.to(device))  # [b, classes]
        return {"total": F.cross_entropy(logits, y.to(device), label_smoothing=label_smoothing)}

    return loss


@torch.no_grad()
def summed_loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(summed plain cross-entropy, number correct) of `model` on x: [N, C, H, W], y: [N]."""
    device = module_device(model)
    total, correct = 0.0, 0
    for start in range(0, len(x), VALIDATION_BATCH):
        logits = model(x[start : start + VALIDATION_BATCH].to(device))
        target = y[start : start + VALIDATION_BATCH].to(device)
        total += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum().item())
    return total, correct


def validation(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], dict[str, float]]:
    def validate(model: nn.Module) -> dict[str, float]:
        total, correct = summed_loss_and_correct(model, x, y)
        return {"val_accuracy": correct / len(x), "val_loss": total / len(x)}

    return validate


def load_initial_weights(model: nn.Module, path: str, arch: str) -> None:
    """--init: start from another checkpoint's weights (same architecture, same labels count)."""
    start = Checkpoint.load(path)
    if start.arch != arch:
        raise ValueError(f"--init {path} is a {start.arch} checkpoint, not {arch}")
    try:
        model.load_state_dict(start.state_dict)
    except RuntimeError as exc:
        raise ValueError(f"--init {path}: its weights do not fit this {arch} (different classes, channels or "
                         f"options?): {exc}") from exc


def require_parts(splits: ImageSplits) -> None:
    empty = [part for part in PARTS if len(getattr(splits, part)) == 0]
    if empty:
        raise ValueError(f"{splits.name}: the {', '.join(empty)} split(s) are empty; add images per class")


# ----------------------------------------------------------------------------------------------- score
@dataclass
class ClassScores:
    labels: list[str]
    samples: int
    errors: int
    accuracy: float
    macro_f1: float
    cross_entropy: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: list[list[int]]  # [true class][predicted class]

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """The headline numbers: the model metadata's `metrics`."""
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}cross_entropy": self.cross_entropy,
            f"{prefix}samples": float(self.samples),
            f"{prefix}errors": float(self.errors),
        }

    def details(self) -> dict[str, Any]:
        """Everything, JSON-able: the card's per-class table and confusion matrix, metrics.json."""
        return asdict(self)


def score(predicted: np.ndarray, true_probability: np.ndarray, targets: np.ndarray, labels: list[str]) -> ClassScores:
    """Metrics from each image's predicted class [N], the probability it gave the true class [N] and the
    true classes [N]. A probability of exactly 0 (float64 underflow) counts as the smallest positive
    double, so one hopeless answer adds ~708 nats instead of making the mean infinite."""
    if len(targets) == 0:
        raise ValueError("nothing to score: no images")
    classes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, labels=classes,
                                                                     zero_division=0)
    correct = int((predicted == targets).sum())
    floor = np.finfo(np.float64).tiny
    return ClassScores(
        labels=list(labels),
        samples=len(targets),
        errors=len(targets) - correct,
        accuracy=correct / len(targets),
        macro_f1=float(np.mean(f1)),
        cross_entropy=float(-np.log(np.maximum(true_probability.astype(np.float64), floor)).mean()),
        per_class={label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                   for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)},
        confusion=confusion_matrix(targets, predicted, labels=classes).tolist(),
    )


def served_answers(model: Path | bytes, metadata: ModelMetadata, images: Sequence[Image.Image]) -> list[Classification]:
    """Every image as the service answers it: its `prepare`, ONNX Runtime, `StrideModel.decode` with all
    classes asked for (top-k = the output's width), best first."""
    spec = metadata.input
    prepared: list[tuple[np.ndarray, Geometry]] = [prepare(image.convert(spec.color_mode), spec) for image in images]
    outputs = run_outputs(open_session(model), np.stack([x for x, _ in prepared]))
    served = served_model(metadata)
    query = ClassifyQuery(top_k=int(outputs[0].shape[-1]))
    answers = [served.decode([output[i] for output in outputs], geometry, query)
               for i, (_, geometry) in enumerate(prepared)]
    assert all(isinstance(a, Classification) for a in answers)
    return answers  # type: ignore[return-value]


def probability_of(answer: Classification, class_id: int) -> float:
    """The probability a served answer gave `class_id` (0 when it is not among the answer's top k)."""
    return float(answer.scores[answer.class_ids == class_id].sum())


def score_answers(answers: Sequence[Classification], targets: np.ndarray, labels: list[str]) -> ClassScores:
    predicted = np.asarray([int(a.class_ids[0]) for a in answers], dtype=np.int64)
    true_probability = np.asarray([probability_of(a, int(t)) for a, t in zip(answers, targets, strict=True)])
    return score(predicted, true_probability, targets, labels)


def evaluate_images(model: Path | bytes, images: Sequence[Image.Image], targets: np.ndarray,
                    metadata: ModelMetadata | None = None) -> ClassScores:
    """Scores of an exported classifier on labelled images, through ORT and the service's decoding; the
    input spec and labels come from the file's own metadata unless `metadata` is given."""
    if len(images) == 0:
        raise ValueError("nothing to evaluate: no images")
    metadata = metadata or read_metadata(model)
    return score_answers(served_answers(model, metadata, images), targets, metadata.labels)


# ----------------------------------------------------------------------------------------------- card
def plot_confusion_matrix(labels: list[str], counts: list[list[int]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on build machines
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n))
    ax.imshow(np.asarray(counts, dtype=np.int64).reshape(n, n), cmap="Blues")
    peak = int(np.asarray(counts, dtype=np.int64).max(initial=0))
    for i in range(n):
        for j in range(n):
            if counts[i][j]:
                color = "white" if counts[i][j] > peak / 2 else "black"
                ax.text(j, i, str(counts[i][j]), ha="center", va="center", color=color, fontsize=9)
    ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels, xlabel="predicted",
           ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_class_table(per_class: dict[str, dict[str, float]]) -> str:
    rows = [f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {int(m['support'])} |"
            for label, m in per_class.items()]
    return "\n".join(["| class | precision | recall | F1 | support |", "|---|---|---|---|---|", *rows])


def results_section(evaluation: Evaluation, folder: Path) -> CardSection:
    details = evaluation.details
    accuracy = evaluation.metrics.get("test_accuracy", 0.0)
    plot_confusion_matrix(details["labels"], details["confusion"], folder / CONFUSION_PLOT,
                          f"held-out test, ONNX Runtime ({accuracy:.2%})")
    errors = f"{details['errors']} error(s) in {details['samples']} images"
    return CardSection("Per-class results", f"{errors}; rows of the confusion matrix are the true classes.\n\n"
                       f"{per_class_table(details['per_class'])}\n\n![confusion matrix]({CONFUSION_PLOT})")


def data_section(checkpoint: Checkpoint, folder: Path) -> CardSection:
    from training.cards import write_json  # matplotlib comes with it; only cards need it

    splits = checkpoint_splits(checkpoint)
    write_json(folder / SPLIT_RECORD, splits.split_record())
    kind = checkpoint.extra.get("augmentation") or checkpoint.train_config.get("augmentation", "none")
    rows = "\n".join(f"| {part} | {len(getattr(splits, part))} | {use} |" for part, use in
                     zip(PARTS, ("gradient updates", "early stopping: picking the epoch", "the metrics, nothing else"),
                         strict=True))
    body = (f"{splits.description}.\n\n| split | images | use |\n|---|---|---|\n{rows}\n\nSplit seed "
            f"{splits.split_seed}; the exact items of each part are in [{SPLIT_RECORD}]({SPLIT_RECORD}). "
            f"Augmentation (training only): {describe_augmentation(kind, checkpoint.train_config)}.\n\n"
            f"{splits.card_notes}")
    return CardSection("Data", body.rstrip())


def compute_section(checkpoint: Checkpoint) -> CardSection:
    model = checkpoint.build_model()
    spec = checkpoint.input_spec
    flops = count_flops(model, (spec.channels, spec.height, spec.width))
    return CardSection("Compute", (
        f"FLOPs per image: **{flops:,}** (2 × the multiply-accumulates of every convolution, linear layer and "
        "matrix product, counted by `training.flops` on a real forward pass; pooling, activations and "
        f"normalisation not counted). Parameters: {count_parameters(model):,} (weights masked out by a fixed "
        "connection table are not counted)."))


# ---------------------------------------------------------------------------------------------- plug-in
class ClassificationPlugin(TaskPlugin):
    name: ClassVar[str] = "classification"
    config_cls: ClassVar[type[TrainerConfig]] = ClassifyConfig
    default_arch: ClassVar[str] = "lenet5"
    default_data: ClassVar[str] = "digits"
    data_help: ClassVar[str] = ("digits (scikit-learn's 8x8 handwritten digits, bundled) or a folder of class "
                                "folders: DIR/<class>/* (split 70/15/15) or DIR/train|val[|test]/<class>/*")
    parity_atol: ClassVar[dict[str, float]] = {OUTPUT_NAME: 1e-4}  # max |ORT - PyTorch|, float32 on CPU
    golden_atol: ClassVar[float] = 1e-3
    golden_count: ClassVar[int] = 8  # the first test image of each of the first 8 classes, as before
    limitations: ClassVar[str] = (
        "The model always answers one of its labels, even for an image of none of them; its probabilities "
        "are not a measure of how familiar an image is. It has seen only the data above: measure it on your "
        "own images before relying on it.")

    def prepare(self, request: TrainRequest, config: Any) -> Prepared:
        if not isinstance(config, ClassifyConfig):
            raise TypeError(f"classification needs a ClassifyConfig, got {type(config).__name__}")
        arch = get_arch(request.arch)
        if self.name not in arch.tasks:
            raise ValueError(f"{request.arch} does not serve classification")
        splits = load_splits(request.data or self.default_data, request.split_seed)
        require_parts(splits)
        spec = choose_input_spec(request.arch, splits, request.image_size)
        fixed = {"height": spec.height, "width": spec.width} if arch.fixed_size else {}
        arch_config = arch.make_config({**request.arch_options, **fixed, "num_classes": len(splits.labels),
                                        "in_channels": spec.channels})
        seed_everything(config.seed)  # the initial weights depend on the seed only
        model = arch.build(arch_config)
        if request.init:
            load_initial_weights(model, request.init, request.arch)
        x_train, y_train = tensors(splits.train, spec)
        kind = resolve_augmentation(config, is_folder_data(splits))
        perturb = augmenter(kind, config, spec)

        def batch(indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return perturb(x_train[indices], generator), y_train[indices]

        job = Job(model=model, train_size=len(x_train), batch=batch, loss=classification_loss(config.label_smoothing),
                  validate=validation(*tensors(splits.val, spec)), monitor="val_accuracy")
        notes = [*input_notes(request.arch, spec, request.image_size, splits), f"augmentation: {kind}"]
        if request.count:
            notes.append(f"--count {request.count} ignored: {splits.name} is not generated")
        return Prepared(job=job, arch_config=arch.config_to_dict(arch_config), labels=list(splits.labels),
                        input_spec=spec, data=data_record(splits), extra={"augmentation": kind}, notes=notes)

    def exportable(self, checkpoint: Checkpoint) -> nn.Module:
        return checkpoint.build_model()

    def outputs(self, checkpoint: Checkpoint) -> list[OutputSpec]:
        return [OutputSpec(name=OUTPUT_NAME, layout="batch,class", kind="logits")]

    def metadata_fields(self, checkpoint: Checkpoint) -> dict[str, Any]:
        return {}

    def sample_images(self, checkpoint: Checkpoint, count: int, seed: int) -> list[Image.Image]:
        """Test images of the checkpoint's own split, the first of each class first (classes in order),
        then the second of each, ...: golden samples cover the classes. `seed` is not used: the test split
        is fixed by the split seed, and the same images every export keep golden samples comparable."""
        test = checkpoint_splits(checkpoint).test
        return [test.images[i] for i in class_round_robin(test.targets)[:count]]

    def calibration_images(self, checkpoint: Checkpoint, count: int) -> list[Image.Image]:
        """Up to `count` training images in a seeded random order (never validation or test images)."""
        train = checkpoint_splits(checkpoint).train
        order = np.random.default_rng(CALIBRATION_SEED).permutation(len(train))[:count]
        return [train.images[i] for i in order]

    def eval_request_for(self, checkpoint: Checkpoint) -> EvalRequest:
        """The test split of the data the checkpoint was trained on, split as it was."""
        return EvalRequest(data=checkpoint.data["name"], seed=int(checkpoint.data.get("split_seed",
                                                                                       DEFAULT_SPLIT_SEED)))

    def evaluate(self, model: Path | bytes, metadata: ModelMetadata, request: EvalRequest) -> Evaluation:
        """The test split of `request.data` (default digits) split with `request.seed` (default 0); with
        `request.count`, its first count images. Labels must be the model's."""
        data = request.data or self.default_data
        seed = DEFAULT_SPLIT_SEED if request.seed is None else request.seed
        splits = load_splits(data, seed)
        if list(metadata.labels) != list(splits.labels):
            raise ValueError(f"model labels {metadata.labels} do not match the {data} labels {splits.labels}; "
                             "pass the data it was trained on with --data (and its split seed with --seed)")
        test = splits.test
        count = min(request.count, len(test)) if request.count else len(test)
        scores = evaluate_images(model, test.images[:count], test.targets[:count], metadata)
        return Evaluation(metrics=scores.metrics(), description=describe_evaluation(splits, seed, count),
                          details=scores.details())

    def card_sections(self, model_path: Path, checkpoint: Checkpoint, evaluation: Evaluation,
                      folder: Path) -> list[CardSection]:
        """Per-class table and confusion matrix (confusion_matrix.png), the data and its split (split.json),
        and the FLOPs per image."""
        sections = [results_section(evaluation, folder)] if "confusion" in evaluation.details else []
        return [*sections, data_section(checkpoint, folder), compute_section(checkpoint)]


def describe_evaluation(splits: ImageSplits, seed: int, count: int) -> str:
    subset = f"All {count}" if count == len(splits.test) else f"The first {count} of the {len(splits.test)}"
    text = (f"{subset} held-out test images of {splits.description} (split seed {seed}; used neither for training "
            "nor for picking the epoch), each rendered by `service.preprocess.prepare` as the service renders a "
            "request, run through ONNX Runtime and decoded by the service's classifier (softmax; accuracy "
            "counts the top answer).")
    if np.array_equal(splits.test.source_indices, splits.val.source_indices):
        text += (" There is no separate test folder: these are the validation images that picked the epoch, so "
                 "the figures are slightly optimistic.")
    return text


PLUGINS: dict[str, TaskPlugin] = {"classification": ClassificationPlugin()}
