"""The one checkpoint format of every task: weights plus everything needed to rebuild, export and describe.

Stored with torch.save as plain Python containers and tensors only, so `torch.load(weights_only=True)`
reads it: no pickled classes, no code executed on load. Every file the training package reads (checkpoints,
resume state, `--init` weights) goes through `load_payload`, which refuses anything else: a checkpoint
path comes from the user, and unpickling an arbitrary object runs code.

The task is inside (`task`), so `export` and `evaluate` need no `--task`. Files written before the format
had a task (format 1 classifiers, the dense, semantic and embedding files of earlier releases) are read
through `upgrade_payload`; `python -m training upgrade OLD.pt --out NEW.pt` rewrites one.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from service.contract import InputSpec

FORMAT_VERSION = 2


class UnsafeCheckpointError(ValueError):
    """The file holds Python objects other than tensors and plain containers; it is not loaded."""


def load_payload(path: str | Path) -> Any:
    """The checkpoint's contents (tensors, dicts, lists, str, int, float, bool, None), on the CPU.

    Loaded with `weights_only=True` only; a file that needs more (a pickled class, a dataclass, an
    arbitrary object) raises UnsafeCheckpointError and nothing in it is executed.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds pickled Python objects, not only tensors and plain containers, and "
            f"loading it could run code ({refusal_reason(exc)}); Stride checkpoints store configs as plain dicts"
        ) from exc


def refusal_reason(exc: Exception) -> str:
    """The object torch's long weights-only message names (its wording differs by cause), e.g. GLOBAL os.system."""
    found = re.search(r"GLOBAL [\w.]+", str(exc))
    if found:
        return found.group(0)
    return "not a weights-only file"


@dataclass
class Checkpoint:
    task: str  # a training.tasks name: classification, detection, ..., embedding
    arch: str  # a training.registry name
    arch_config: dict[str, Any]
    labels: list[str]
    input_spec: InputSpec
    state_dict: dict[str, torch.Tensor]
    data: dict[str, Any]  # how to find the data again: {"name": ..., "description": ..., task-specific keys}
    train_config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # best epoch, seconds, validation metrics, command
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific plain values (joint names, skeleton)

    def build_model(self) -> nn.Module:
        """The architecture with these weights, in eval mode."""
        from training.registry import get_arch

        spec = get_arch(self.arch)
        model = spec.build(spec.make_config(self.arch_config))
        model.load_state_dict(self.state_dict)
        return model.eval()

    def to_payload(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "arch": self.arch,
            "arch_config": self.arch_config,
            "labels": self.labels,
            "input_spec": self.input_spec.model_dump(mode="json"),
            "state_dict": self.state_dict,
            "data": self.data,
            "train_config": self.train_config,
            "summary": self.summary,
            "history": self.history,
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.to_payload(), path)
        return path

    @classmethod
    def from_payload(cls, payload: Any, source: str | Path = "checkpoint") -> Checkpoint:
        if not isinstance(payload, dict) or "state_dict" not in payload:
            raise ValueError(
                f"{source}: not a Stride checkpoint (no state_dict); train one with python -m training train"
            )
        payload = upgrade_payload(payload)
        return cls(
            task=payload["task"],
            arch=payload["arch"],
            arch_config=dict(payload["arch_config"]),
            labels=list(payload["labels"]),
            input_spec=InputSpec.model_validate(payload["input_spec"]),
            state_dict=payload["state_dict"],
            data=dict(payload.get("data", {})),
            train_config=dict(payload.get("train_config", {})),
            summary=dict(payload.get("summary", {})),
            history=list(payload.get("history", [])),
            extra=dict(payload.get("extra", {})),
        )

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        return cls.from_payload(load_payload(path), path)


def upgrade_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload of any format this package ever wrote, as a format-2 payload (a copy; weights shared)."""
    version = payload.get("format_version")
    if version == FORMAT_VERSION:
        return payload
    if payload.get("kind") == "dense":
        return _from_dense(payload)
    if payload.get("kind") == "embedding":
        return _from_embedding(payload)
    if payload.get("task") == "semantic_segmentation":
        return _from_semantic(payload)
    if version == 1 and "arch" in payload:
        return {**payload, "format_version": FORMAT_VERSION, "task": "classification", "extra": {}}
    raise ValueError(f"checkpoint format {version!r} is not one this code reads (it writes {FORMAT_VERSION})")


def _from_dense(p: dict[str, Any]) -> dict[str, Any]:
    history = [_renamed_losses(row, {"loss_total": "loss"}) for row in p.get("history", [])]
    config = p.get("train_config", {})
    epochs_planned = int(config.get("epochs", len(history)))
    summary = {
        "train_seconds": p.get("train_seconds"),
        "command": p.get("command", ""),
        "threads": p.get("torch_threads"),
        "epochs_run": len(history),
        "best_epoch": len(history),  # the old dense loop kept the last epoch
        "steps": history[-1].get("step") if history else 0,
        # rows of an earlier stage carry "stage"; this stage's rows tell whether its budget cut it short
        "stopped_by": "time budget" if sum("stage" not in r for r in history) < epochs_planned else "epochs",
    }
    info = p.get("data_info", {}) or {}
    images = p.get("train_images")
    generated = info.get("generator")
    description = (f"{images} generated scenes ({generated}, seed {info.get('seed')})" if generated
                   else f"COCO dataset {p.get('data', '')} ({images} images)")
    return {
        "format_version": FORMAT_VERSION,
        "task": p["task"],
        "arch": "dense",
        "arch_config": p["model_config"],
        "labels": p["labels"],
        "input_spec": p["input_spec"],
        "state_dict": p["state_dict"],
        "data": {"name": "scenes" if generated else str(p.get("data", "")), "seed": info.get("seed"),
                 "count": images, "description": description, "info": info},
        "train_config": config,
        "summary": summary,
        "history": history,
        "extra": {
            "category_ids": p.get("category_ids", []),
            "keypoint_names": p.get("keypoint_names", []),
            "skeleton": p.get("skeleton", []),
        },
    }


def _from_semantic(p: dict[str, Any]) -> dict[str, Any]:
    summary = dict(p.get("summary", {}))
    if "stopped_by_time_budget" in summary:
        summary["stopped_by"] = "time budget" if summary.pop("stopped_by_time_budget") else "epochs"
    if "best_val_mIoU" in summary:
        summary["best_metrics"] = {"val_mIoU": summary["best_val_mIoU"]}
    return {
        **p,
        "format_version": FORMAT_VERSION,
        "task": "semantic_segmentation",
        "arch": "unet",
        "summary": summary,
        "history": [_renamed_losses(row, {"train_loss": "loss"}) for row in p.get("history", [])],
        "extra": p.get("extra", {}),
    }


def _renamed_losses(row: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """An old history row with its keys in the names the cards plot (loss, loss_*, val_*)."""
    return {names.get(k, k): v for k, v in row.items()}


def _from_embedding(p: dict[str, Any]) -> dict[str, Any]:
    from training.registry import get_arch

    config = p["config"]
    spec = get_arch("embednet")
    arch_keys = {k: config[k] for k in ("width", "dimension") if k in config}
    return {
        "format_version": FORMAT_VERSION,
        "task": "embedding",
        "arch": "embednet",
        "arch_config": arch_keys,
        "labels": [],
        "input_spec": spec.default_input.model_dump(mode="json"),
        "state_dict": p["state_dict"],
        "data": {"name": "identities", "identities": config.get("identities"), "views": config.get("views")},
        "train_config": config,
        "summary": {**p.get("summary", {}), "best_epoch": len(p.get("history", [])),
                    "epochs_run": len(p.get("history", []))},
        "history": p.get("history", []),
        "extra": {},
    }
