"""Generic image-classifier training: data in memory as tensors, light augmentation, early stopping.

Read top to bottom: `TrainConfig` (hyperparameters), `augment` (random affine on input tensors, for
digits) and `augment_crop` (random resized crop, flip, colour jitter, for photos and user folders),
`fit` (the loop: early stopping, resumable state after every epoch, DistributedDataParallel under
torchrun via `training.distributed`), `choose_input_spec` (size, channels and normalisation for a
dataset), `train_checkpoint` (data source + architecture name -> Checkpoint).

Inputs are rendered once through `service.preprocess.prepare`, exactly as the service will render a
request. Augmentation then perturbs those tensors during training only; evaluation always sees the
plain rendering.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from service.contract import InputSpec
from training import distributed
from training.checkpoint import Checkpoint, load_payload
from training.data import ImageSplits, render_batch
from training.models import get_arch


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = 20  # step schedule: epochs between decays
    step_gamma: float = 0.1
    warmup_epochs: int = 2  # linear ramp from lr/10, avoids early instability with AdamW
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
    patience: int = 30  # stop after this many epochs without a better validation accuracy
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = min(cpu_count, 4)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 1-based
    best_val_accuracy: float
    best_val_loss: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(threads: int) -> int:
    """Small models on a few cores: more threads than cores only adds contention."""
    n = threads or max(1, min(os.cpu_count() or 1, 4))
    torch.set_num_threads(n)
    return n


def background_value(spec: InputSpec) -> float:
    """The normalised value of a black (pad_value) pixel: what new border pixels should read as."""
    return (spec.pad_value * spec.scale - spec.mean[0]) / spec.std[0]


def augment(x: torch.Tensor, config: TrainConfig, background: float, generator: torch.Generator) -> torch.Tensor:
    """Random small affine transform per image. x: [B, C, H, W] normalised model input."""
    b = x.shape[0]

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


def augment_crop(x: torch.Tensor, config: TrainConfig, spec: InputSpec, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + horizontal flip + colour jitter, in tensor ops. x: [B, C, H, W] normalised
    model input; returns the same shape, pixel values kept inside the range real images can have."""
    b, c = x.shape[:2]
    mean = torch.tensor(spec.mean).view(1, c, 1, 1)
    std = torch.tensor(spec.std).view(1, c, 1, 1)
    pixels = x * std + mean  # back to [0, 1] pixel scale (scale=1/255 rendering)

    # Random resized crop: area fraction in [crop_min_area, 1], aspect ratio in [3/4, 4/3] (log-uniform),
    # placed uniformly inside the image, resampled to the full size with bilinear interpolation.
    area = config.crop_min_area + (1 - config.crop_min_area) * torch.rand(b, generator=generator)
    log_ratio = (torch.rand(b, generator=generator) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_ratio)
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

        def factor() -> torch.Tensor:  # [B, 1, 1, 1] in [1 - jitter, 1 + jitter]
            return (1 + (torch.rand(b, generator=generator) * 2 - 1) * config.jitter).view(b, 1, 1, 1)

        pixels = pixels * factor()  # brightness
        grey = pixels.mean(1, keepdim=True)  # [B, 1, H, W] luminance proxy
        pixels = (pixels - grey.mean((2, 3), keepdim=True)) * factor() + grey.mean((2, 3), keepdim=True)  # contrast
        if c == 3:
            pixels = (pixels - grey) * factor() + grey  # saturation: towards / away from grey
        pixels = pixels.clamp(0.0, 1.0)
    return (pixels - mean) / std


def learning_rate(epoch: int, config: TrainConfig) -> float:
    """LR for a 0-based epoch: linear warmup, then cosine to ~0, step decay, or constant."""
    if epoch < config.warmup_epochs:
        return config.lr * (0.1 + 0.9 * epoch / config.warmup_epochs)
    if config.schedule == "cosine":
        progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "step":
        return config.lr * config.step_gamma ** (epoch // config.step_size)
    return config.lr


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases: decaying them only shifts activations and does not regularise.
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


@torch.no_grad()
def evaluate_tensors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on x: [N, C, H, W], y: [N]."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])  # [b, classes]
        target = y[start : start + batch_size]
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return total_loss / len(x), correct / len(x)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    background: float,
    log_path: Path | None = None,
    progress: bool = True,
    *,
    spec: InputSpec | None = None,
    augmentation: Literal["affine", "crop"] = "affine",
    state_path: Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train `model` in place; returns the weights of the epoch with the best validation accuracy
    (ties broken by lower validation loss).

    `state_path`: after every epoch the full training state (weights, optimizer, RNG, history, best so
    far) is written there, so `resume=True` continues an interrupted run exactly where it stopped.
    Under torchrun (`training.distributed`) each rank trains on its DistributedSampler shard with
    DistributedDataParallel; metrics are summed across ranks and only rank 0 writes files.
    """
    ctx = distributed.context()
    x_train, y_train = train  # [N, C, H, W] float32, [N] int64
    x_val, y_val = val
    # Shuffling comes from the sampler (same on every rank); augmentation draws differ per rank.
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * ctx.rank)
    optimizer = make_optimizer(model, config)
    net = ctx.wrap(model)
    sampler = distributed.ShardSampler(len(x_train), ctx, seed=config.seed)
    val_positions = torch.arange(ctx.rank, len(x_val), ctx.world_size)  # disjoint val shards, reduced below
    steps_per_epoch = math.ceil(sampler.shard_size / config.batch_size)
    history: list[dict[str, float]] = []
    best_key, best_state, best_epoch, first_epoch = (-1.0, 0.0), None, 0, 0
    elapsed_before = 0.0
    resumed = resume and state_path is not None and state_path.exists()
    if resumed:
        assert state_path is not None
        state = load_payload(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history, best_epoch, best_state = state["history"], state["best_epoch"], state["best_state"]
        best_key, first_epoch = tuple(state["best_key"]), state["epoch"]
        elapsed_before = history[-1]["seconds"] if history else 0.0
    started = time.perf_counter() - elapsed_before
    writes = ctx.is_main
    log = log_path.open("a" if resumed else "w") if (log_path and writes) else None
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=first_epoch * steps_per_epoch,
        disable=not (progress and writes),
        unit="step",
        dynamic_ncols=True,
    )
    try:
        for epoch in range(first_epoch, config.epochs):
            if history and epoch - best_epoch >= config.patience:
                break  # early stopping (also when resuming a run that had already stopped)
            lr = learning_rate(epoch, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            net.train()
            # One process: the original seeded permutation; under torchrun: this rank's sampler shard.
            order = sampler.epoch_indices(epoch) if ctx.enabled else torch.randperm(len(x_train), generator=generator)
            totals = torch.zeros(3, dtype=torch.float64)  # seen, loss sum, correct
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                xb, yb = x_train[idx], y_train[idx]  # [b, C, H, W], [b]
                if config.augment and augmentation == "crop" and spec is not None:
                    xb = augment_crop(xb, config, spec, generator)
                elif config.augment:
                    xb = augment(xb, config, background, generator)
                xb, yb = xb.to(ctx.device), yb.to(ctx.device)
                logits = net(xb)  # [b, classes]
                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals += torch.tensor([len(idx), loss.item() * len(idx), (logits.argmax(1) == yb).sum().item()])
                bar.update(1)
            ctx.sync_buffers(model)  # BatchNorm running statistics: rank 0's, so every rank evaluates alike
            val_loss_sum, val_correct = evaluate_sums(model, x_val[val_positions], y_val[val_positions], ctx.device)
            totals = ctx.all_reduce(torch.cat([totals, torch.tensor([val_loss_sum, val_correct], dtype=torch.float64)]))
            seen, loss_sum, correct, val_loss_sum, val_correct = totals.tolist()
            val_loss, val_acc = val_loss_sum / len(x_val), val_correct / len(x_val)
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": loss_sum / seen,  # on augmented batches, while weights were changing
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
            bar.set_postfix(epoch=epoch + 1, loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.4f}")
            if (val_acc, -val_loss) > best_key:
                best_key, best_epoch = (val_acc, -val_loss), epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if state_path is not None and writes:
                save_training_state(state_path, model, optimizer, generator, epoch + 1, history,
                                    best_key, best_epoch, best_state)  # fmt: skip
    finally:
        bar.close()
        if log:
            log.close()
    assert best_state is not None
    model.load_state_dict(best_state)
    return FitResult(
        best_state=best_state,
        best_epoch=best_epoch,
        best_val_accuracy=best_key[0],
        best_val_loss=-best_key[1],
        epochs_run=len(history),
        seconds=time.perf_counter() - started,
        history=history,
    )


@torch.no_grad()
def evaluate_sums(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 512
) -> tuple[float, float]:
    """(summed cross-entropy, number correct) of `model` on x: [N, C, H, W], y: [N]."""
    model.eval()
    total_loss, correct = 0.0, 0.0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size].to(device))
        target = y[start : start + batch_size].to(device)
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(1) == target).sum().item()
    return total_loss, correct


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    history: list[dict[str, float]],
    best_key: tuple[float, float],
    best_epoch: int,
    best_state: dict[str, torch.Tensor] | None,
) -> None:
    """Everything `fit(..., resume=True)` needs; written to a temporary file, then renamed (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "epoch": epoch,
            "history": history,
            "best_key": list(best_key),
            "best_epoch": best_epoch,
            "best_state": best_state,
        },
        tmp,
    )
    os.replace(tmp, path)


def choose_input_spec(arch: str, splits: ImageSplits, image_size: int = 0) -> InputSpec:
    """The architecture's own input spec for its reference data (digits); for other data (a user's
    folders): the architecture's input size (or `image_size`), 1 channel when every image is grayscale
    else 3 (RGB), and mean/std per channel measured on the training split at that size."""
    default = get_arch(arch).default_input
    if splits.extra.get("kind") != "folders" and not image_size:
        return default
    channels = 1 if splits.extra.get("color_mode", "RGB") == "L" else 3
    size_h, size_w = (image_size, image_size) if image_size else (default.height, default.width)
    unit = {"mean": (0.0,) * channels, "std": (1.0,) * channels}
    probe = default.model_copy(update={"height": size_h, "width": size_w, "channels": channels, **unit})
    x = render_batch(splits.train.images, probe)  # [N, C, H, W] in [0, 1]
    mean = tuple(round(float(v), 4) for v in x.mean((0, 2, 3)))
    std = tuple(round(max(float(v), 1e-3), 4) for v in x.std((0, 2, 3)))
    return probe.model_copy(update={"mean": mean, "std": std})


def train_checkpoint(
    arch: str,
    splits: ImageSplits,
    config: TrainConfig,
    arch_overrides: Mapping[str, Any] | None = None,
    input_spec: InputSpec | None = None,
    log_path: Path | None = None,
    progress: bool = True,
    state_path: Path | None = None,
    resume: bool = False,
) -> Checkpoint:
    """Build `arch` for `splits`' labels, train it from scratch with `config.seed` (or continue from
    `state_path` with `resume`), return the best epoch's weights as a Checkpoint."""
    configure_threads(config.threads)
    seed_everything(config.seed)
    spec = get_arch(arch)
    input_spec = input_spec or choose_input_spec(arch, splits)
    fixed = {"height": input_spec.height, "width": input_spec.width} if spec.fixed_size else {}
    arch_config = spec.make_config(
        {**(arch_overrides or {}), **fixed, "num_classes": len(splits.labels), "in_channels": input_spec.channels}
    )
    model = spec.build(arch_config)  # seeded init

    def tensors(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        subset = getattr(splits, part)
        x = torch.from_numpy(render_batch(subset.images, input_spec))  # [N, C, H, W]
        return x, torch.from_numpy(subset.targets)  # [N] int64

    augmentation = config.augmentation
    if augmentation == "auto":
        augmentation = "crop" if splits.extra.get("kind") == "folders" else "affine"
    result = fit(
        model,
        tensors("train"),
        tensors("val"),
        config,
        background_value(input_spec),
        log_path,
        progress,
        spec=input_spec,
        augmentation=augmentation,
        state_path=state_path,
        resume=resume,
    )
    distributed.write_debug_hash(result.best_state)
    data: dict[str, Any] = {"name": splits.name, "split_seed": splits.split_seed, "description": splits.description}
    if splits.extra.get("kind") == "folders":
        files: list[str] = splits.extra["files"]  # type: ignore[assignment]
        data["split"] = {p: [files[i] for i in getattr(splits, p).source_indices] for p in ("train", "val", "test")}
    return Checkpoint(
        arch=arch,
        arch_config=spec.config_to_dict(arch_config),
        labels=list(splits.labels),
        input_spec=input_spec,
        state_dict=result.best_state,
        data=data,
        train_config={**dataclasses.asdict(config), "augmentation": augmentation},
        summary={
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_accuracy": result.best_val_accuracy,
            "best_val_loss": result.best_val_loss,
            "train_seconds": result.seconds,
            "threads": torch.get_num_threads(),
            "world_size": distributed.context().world_size,
            "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        },
        history=result.history,
    )
