"""The two steps every command and every bundled recipe runs: train a task into a checkpoint, and export a
checkpoint into a served file (plus variants and its card). The CLI and training.bundle both call these."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from training import distributed
from training.cards import CardContext, write_card
from training.checkpoint import Checkpoint
from training.export import ExportResult, VariantResult, export_checkpoint, export_fp16, export_int8
from training.machine import describe_machine
from training.tasks import get_task
from training.tasks.base import EvalRequest, TrainRequest
from training.trainer import configure_threads, fit, seed_everything

log = logging.getLogger(__name__)


def train(
    task_name: str,
    request: TrainRequest,
    config: Any,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
) -> Checkpoint | None:
    """Train and save out/checkpoint.pt; returns it (None on ranks other than 0 under torchrun)."""
    task = get_task(task_name)
    configure_threads(config.threads)
    seed_everything(config.seed)
    prepared = task.prepare(request, config)
    for note in prepared.notes:
        log.info("%s", note)
    result = fit(prepared.job, config, out, resume=resume, progress=progress)
    if not distributed.context().is_main:
        return None
    history, seconds, best_epoch = result.history, result.seconds, result.best_epoch
    if request.init:  # a later stage: the card shows the whole run, stage by stage
        earlier = Checkpoint.load(request.init)
        stage = int((earlier.history[-1] if earlier.history else {}).get("stage", 1)) + 1
        offset = len(earlier.history)
        history = [{**row, "stage": row.get("stage", 1)} for row in earlier.history] + [
            {**row, "epoch": row["epoch"] + offset, "stage": stage} for row in result.history
        ]
        seconds += float(earlier.summary.get("train_seconds") or 0.0)
        best_epoch += offset
    checkpoint = Checkpoint(
        task=task_name,
        arch=request.arch,
        arch_config=prepared.arch_config,
        labels=prepared.labels,
        input_spec=prepared.input_spec,
        state_dict=result.best_state,
        data=prepared.data,
        train_config={**dataclasses.asdict(config), **({"init": request.init} if request.init else {})},
        summary={
            "best_epoch": best_epoch,
            "epochs_run": result.epochs_run,
            "steps": result.steps,
            "stopped_by": result.stopped_by,
            "train_seconds": seconds,
            "best_metrics": result.best_metrics,
            "threads": torch.get_num_threads(),
            "world_size": distributed.context().world_size,
            "command": command,
            "notes": prepared.notes,
            "machine": describe_machine(),
        },
        history=history,
        extra=prepared.extra,
    )
    checkpoint.save(out / "checkpoint.pt")
    return checkpoint


def export_with_card(
    checkpoint: Checkpoint,
    out: Path,
    *,
    model_version: str = "1.0.0",
    evaluation: EvalRequest | None = None,
    int8: bool = False,
    fp16: bool = False,
    card_command: str | None = None,
    rationale: str = "",
) -> tuple[ExportResult, list[VariantResult]]:
    """Export (with held-out metrics of the saved file), the requested variants, and the card when
    `card_command` is given (the commands that reproduce the model)."""
    task = get_task(checkpoint.task)
    result = export_checkpoint(checkpoint, out, model_version, evaluation)
    request = evaluation or task.eval_request_for(checkpoint)

    def evaluate(path: Path, metadata: Any) -> Any:
        return task.evaluate(path, metadata, request)

    variants: list[VariantResult] = []
    if int8:
        variants.append(export_int8(result.path, task.calibration_images(checkpoint, 256), evaluate))
    if fp16:
        variants.append(export_fp16(result.path, evaluate))
    if card_command is not None:
        context = CardContext(
            name=out.stem,
            command=card_command,
            rationale=rationale or "chosen by whoever ran the training command above",
            machine=checkpoint.summary.get("machine") or describe_machine(),
            notes=list(checkpoint.summary.get("notes", [])),
        )
        write_card(out.with_suffix(""), checkpoint, result, context, variants)
    return result, variants
