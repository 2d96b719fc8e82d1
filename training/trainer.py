"""The one training loop every task runs: schedule, time budget, early stopping, resume, DDP, progress, log.

A task plug-in (training/tasks/) turns its data and model into a `Job`: the module to train, how many
training items there are, how to collate a batch of them, the loss of a batch and (optionally) a
validation that names the metric to keep the best epoch by. `fit` does the rest, the same way for all:

- optimiser: AdamW (or SGD with Nesterov momentum), no weight decay on biases and norm parameters;
- learning rate per step: linear warm-up from lr/10 over `warmup_epochs`, then cosine to ~0 (or step
  decay, or constant). With `max_minutes` the cosine runs over whichever is further along, the steps or
  the wall clock, and training stops at its end: a slow or busy machine still ends annealed, in time;
- early stopping after `patience` epochs without a better validation metric (0: never), keeping the best
  epoch's weights; without a validation, the last epoch's;
- resume: after every epoch the whole state (weights, optimiser, generator, history, best so far) is
  written atomically to the run's `last.pt`, which `resume=True` continues from;
- DistributedDataParallel under torchrun (training.distributed): each rank trains on its shard of each
  epoch's order, losses are averaged across ranks, only rank 0 writes files;
- a tqdm bar and one JSON line per epoch in `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training import distributed
from training.checkpoint import load_payload

Losses = dict[str, torch.Tensor]  # "total" is what is minimised; other entries are logged


@dataclass(frozen=True)
class TrainerConfig:
    """Options every task shares; a task's own config dataclass extends this one."""

    epochs: int = 30
    batch_size: int = 32
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = 20  # step schedule: epochs between decays
    step_gamma: float = 0.1
    warmup_epochs: float = 1.0  # linear ramp from lr/10: avoids early instability with AdamW
    max_minutes: float = 0.0  # wall-clock budget (0: none); the cosine schedule is compressed to it
    patience: int = 0  # early stopping: epochs without a better validation metric (0: never)
    grad_clip: float = 0.0  # max gradient norm (0: no clipping)
    seed: int = 0
    threads: int = 1  # torch intra-op threads; 1 is fastest per core when other jobs share the machine


@dataclass
class Job:
    """What a task hands the trainer for one run."""

    model: nn.Module
    train_size: int  # number of training items; batches are lists of their indices
    batch: Callable[[torch.Tensor, torch.Generator], Any]  # (indices, generator) -> collated batch
    loss: Callable[[nn.Module, Any], Losses]  # (the module to call, maybe DDP-wrapped; batch) -> losses
    validate: Callable[[nn.Module], dict[str, float]] | None = None  # eval-mode metrics on held-back data
    monitor: str = ""  # the validate() key to maximise (best epoch, early stopping); "" = keep the last
    extra_parameters: list[nn.Parameter] = field(default_factory=list)  # trained, not exported (a loss head)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 1-based
    best_metrics: dict[str, float]  # the validation row of the best epoch ({} without a validation)
    epochs_run: int
    steps: int
    seconds: float
    history: list[dict[str, float]]
    stopped_by: str  # "epochs", "patience" or "time budget"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(threads: int) -> int:
    """Small models on a few cores: more threads than cores only adds contention. 0 = min(cores, 4)."""
    n = threads or max(1, min(os.cpu_count() or 1, 4))
    torch.set_num_threads(n)
    return n


def make_optimizer(parameters: list[tuple[str, nn.Parameter]], config: TrainerConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and 1-d (norm) weights: decaying them shifts activations, it does not regularise.
    decay = [p for n, p in parameters if p.ndim > 1 and not n.endswith("bias")]
    no_decay = [p for n, p in parameters if p.ndim <= 1 or n.endswith("bias")]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose adamw or sgd")


@dataclass
class Schedule:
    """Learning rate per step. `fraction_done` is how far along the run is: by steps, or by the wall clock
    when a time budget is set and binds first."""

    config: TrainerConfig
    steps_per_epoch: int
    clock: Callable[[], float] = time.perf_counter
    started: float = 0.0

    @property
    def total_steps(self) -> int:
        return max(1, self.config.epochs * self.steps_per_epoch)

    def fraction_done(self, step: int) -> float:
        by_steps = step / self.total_steps
        if self.config.max_minutes <= 0:
            return by_steps
        return max(by_steps, (self.clock() - self.started) / (self.config.max_minutes * 60))

    def lr(self, step: int) -> float:
        c = self.config
        warm = c.warmup_epochs * self.steps_per_epoch
        if step < warm:
            return c.lr * (0.1 + 0.9 * step / warm)
        if c.schedule == "cosine":
            done = self.fraction_done(step)
            start = warm / self.total_steps if c.max_minutes <= 0 else 0.0
            progress = min(1.0, max(0.0, (done - start) / max(1e-9, 1 - start)))
            return c.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if c.schedule == "step":
            return c.lr * c.step_gamma ** (step // (c.step_size * self.steps_per_epoch))
        return c.lr

    def out_of_time(self, step: int) -> bool:
        return self.config.max_minutes > 0 and self.fraction_done(step) >= 1.0


def fit(
    job: Job,
    config: TrainerConfig,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> FitResult:
    """Train job.model in place; returns the best (or last) epoch's weights. Files in run_dir (rank 0):
    metrics.jsonl (one JSON object per epoch) and last.pt (the resumable state)."""
    ctx = distributed.context()
    model = job.model
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * ctx.rank)  # augmentation per rank
    named = [*model.named_parameters(), *((f"extra.{i}", p) for i, p in enumerate(job.extra_parameters))]
    optimizer = make_optimizer(named, config)
    net = ctx.wrap(model)
    sampler = distributed.ShardSampler(job.train_size, ctx, seed=config.seed) if ctx.enabled else None
    shard = sampler.shard_size if sampler else job.train_size
    schedule = Schedule(config, math.ceil(shard / config.batch_size), clock)
    state_path = run_dir / "last.pt" if run_dir else None
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, float], dict[str, torch.Tensor] | None] = (-math.inf, 0, {}, None)
    first_epoch, step, elapsed_before = 0, 0, 0.0
    if resume and state_path is not None and state_path.exists():
        state = load_payload(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        for p, saved in zip(job.extra_parameters, state.get("extra_parameters", []), strict=False):
            p.data.copy_(saved)
        history, first_epoch, step = state["history"], state["epoch"], state["step"]
        best = (state["best_value"], state["best_epoch"], state["best_metrics"], state["best_state"])
        elapsed_before = history[-1]["seconds"] if history else 0.0
    schedule.started = clock() - elapsed_before
    writes = ctx.is_main and run_dir is not None
    if writes:
        assert run_dir is not None
        run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "metrics.jsonl").open("a" if first_epoch else "w") if writes and run_dir else None
    bar = tqdm(
        total=config.epochs * schedule.steps_per_epoch,
        initial=step,
        disable=not (progress and ctx.is_main),
        unit="step",
        dynamic_ncols=True,
    )
    stopped_by = "epochs"
    try:
        for epoch in range(first_epoch, config.epochs):
            if config.patience and history and epoch - best[1] >= config.patience and job.monitor:
                stopped_by = "patience"
                break
            if schedule.out_of_time(step):
                stopped_by = "time budget"
                break
            net.train()
            lr = schedule.lr(step)
            order = sampler.epoch_indices(epoch) if sampler else torch.randperm(job.train_size, generator=generator)
            sums: dict[str, float] = {}
            batches = 0
            for start in range(0, len(order), config.batch_size):
                if schedule.out_of_time(step):
                    break
                lr = schedule.lr(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                losses = job.loss(net, job.batch(order[start : start + config.batch_size], generator))
                optimizer.zero_grad(set_to_none=True)
                losses["total"].backward()
                ctx.average_gradients(job.extra_parameters)  # outside DDP's module: averaged as DDP does
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for _, p in named], config.grad_clip)
                optimizer.step()
                step += 1
                batches += 1
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                bar.update(1)
            ctx.sync_buffers(model)  # BatchNorm statistics: rank 0's, so every rank validates alike
            names = sorted(sums)
            means = ctx.all_reduce(torch.tensor([sums[n] / max(1, batches) for n in names], dtype=torch.float64))
            row: dict[str, float] = {"epoch": epoch + 1, "step": step, "lr": lr}
            row.update(
                {
                    f"loss_{n}" if n != "total" else "loss": v / ctx.world_size
                    for n, v in zip(names, means.tolist(), strict=True)
                }
            )
            metrics = validate(job, model) if job.validate else {}
            row.update(metrics)
            row["seconds"] = round(clock() - schedule.started, 2)
            history.append(row)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
            bar.set_postfix(
                epoch=epoch + 1,
                loss=f"{row.get('loss', float('nan')):.4f}",
                **({job.monitor: f"{metrics[job.monitor]:.4f}"} if job.monitor in metrics else {}),
            )
            value = metrics.get(job.monitor, 0.0) if job.monitor else float(epoch)
            if value > best[0] or not job.monitor:
                state_copy = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = (value, epoch + 1, metrics, state_copy)
            if writes and state_path is not None:
                save_state(state_path, model, optimizer, generator, job, epoch + 1, step, history, best)
        if schedule.out_of_time(step) and step < schedule.total_steps:
            stopped_by = "time budget"
    finally:
        bar.close()
        if log:
            log.close()
    if best[3] is None:  # no epoch ran (resumed a finished run): the model as it is
        best = (best[0], best[1], best[2], {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[3])
    model.eval()
    distributed.write_debug_hash(best[3])
    return FitResult(
        best_state=best[3],
        best_epoch=best[1],
        best_metrics=best[2],
        epochs_run=len(history),
        steps=step,
        seconds=clock() - schedule.started,
        history=history,
        stopped_by=stopped_by,
    )


@torch.no_grad()
def validate(job: Job, model: nn.Module) -> dict[str, float]:
    assert job.validate is not None
    model.eval()
    return {k: float(v) for k, v in job.validate(model).items()}


def save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    job: Job,
    epoch: int,
    step: int,
    history: list[dict[str, float]],
    best: tuple[float, int, dict[str, float], dict[str, torch.Tensor] | None],
) -> None:
    """Everything `fit(..., resume=True)` needs, as plain containers and tensors (weights_only loadable);
    written to a temporary file, then renamed, so an interrupted write never leaves a broken state."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "extra_parameters": [p.detach().cpu() for p in job.extra_parameters],
            "epoch": epoch,
            "step": step,
            "history": history,
            "best_value": best[0],
            "best_epoch": best[1],
            "best_metrics": best[2],
            "best_state": best[3],
        },
        tmp,
    )
    os.replace(tmp, path)
