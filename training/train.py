"""Generic image-classifier training: data in memory as tensors, light augmentation, early stopping.

Read top to bottom: `TrainConfig` (hyperparameters), `augment` (random affine on input tensors),
`fit` (the loop), `train_checkpoint` (data source + architecture name -> Checkpoint).

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
from training.checkpoint import Checkpoint
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
) -> FitResult:
    """Train `model` in place; returns the weights of the epoch with the best validation accuracy
    (ties broken by lower validation loss)."""
    x_train, y_train = train  # [N, C, H, W] float32, [N] int64
    x_val, y_val = val
    generator = torch.Generator().manual_seed(config.seed)  # shuffling + augmentation draws
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
    history: list[dict[str, float]] = []
    best_key, best_state, best_epoch = (-1.0, 0.0), None, 0
    started = time.perf_counter()
    log = log_path.open("w") if log_path else None
    bar = tqdm(total=config.epochs * steps_per_epoch, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(config.epochs):
            lr = learning_rate(epoch, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            seen, loss_sum, correct = 0, 0.0, 0
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                xb, yb = x_train[idx], y_train[idx]  # [b, C, H, W], [b]
                if config.augment:
                    xb = augment(xb, config, background, generator)
                logits = model(xb)  # [b, classes]
                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(idx)
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == yb).sum().item()
                bar.update(1)
            val_loss, val_acc = evaluate_tensors(model, x_val, y_val)
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
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch + 1 - best_epoch >= config.patience:
                break  # early stopping
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


def train_checkpoint(
    arch: str,
    splits: ImageSplits,
    config: TrainConfig,
    arch_overrides: Mapping[str, Any] | None = None,
    input_spec: InputSpec | None = None,
    log_path: Path | None = None,
    progress: bool = True,
) -> Checkpoint:
    """Build `arch` for `splits`' labels, train it from scratch with `config.seed`, return the best."""
    configure_threads(config.threads)
    seed_everything(config.seed)
    spec = get_arch(arch)
    input_spec = input_spec or spec.default_input
    arch_config = spec.make_config(
        {**(arch_overrides or {}), "num_classes": len(splits.labels), "in_channels": input_spec.channels}
    )
    model = spec.build(arch_config)  # seeded init

    def tensors(part: str) -> tuple[torch.Tensor, torch.Tensor]:
        subset = getattr(splits, part)
        x = torch.from_numpy(render_batch(subset.images, input_spec))  # [N, C, H, W]
        return x, torch.from_numpy(subset.targets)  # [N] int64

    result = fit(model, tensors("train"), tensors("val"), config, background_value(input_spec), log_path, progress)
    return Checkpoint(
        arch=arch,
        arch_config=spec.config_to_dict(arch_config),
        labels=list(splits.labels),
        input_spec=input_spec,
        state_dict=result.best_state,
        data={"name": splits.name, "split_seed": splits.split_seed, "description": splits.description},
        train_config=dataclasses.asdict(config),
        summary={
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "best_val_accuracy": result.best_val_accuracy,
            "best_val_loss": result.best_val_loss,
            "train_seconds": result.seconds,
            "threads": torch.get_num_threads(),
            "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        },
        history=result.history,
    )
