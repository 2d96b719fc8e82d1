"""A training checkpoint: weights plus everything needed to rebuild, export and describe the model.

Stored with torch.save as plain Python containers and tensors only, so `torch.load(weights_only=True)`
reads it: no pickled classes, no code executed on load. Every checkpoint of every task (classifier, dense,
semantic, resume state) is read through `load_payload`, which refuses anything else: a checkpoint path
comes from the user, and unpickling an arbitrary object runs code.
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
from training.models import get_arch

FORMAT_VERSION = 1


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
    arch: str
    arch_config: dict[str, Any]
    labels: list[str]
    input_spec: InputSpec
    state_dict: dict[str, torch.Tensor]
    data: dict[str, Any]  # {"name": "digits", "split_seed": 0, "description": ...}: rebuilds the split
    train_config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # best epoch, seconds, val metrics, ...
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch

    def build_model(self) -> nn.Module:
        """The architecture with these weights, in eval mode."""
        spec = get_arch(self.arch)
        model = spec.build(spec.make_config(self.arch_config))
        model.load_state_dict(self.state_dict)
        return model.eval()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "arch_config": self.arch_config,
            "labels": self.labels,
            "input_spec": self.input_spec.model_dump(mode="json"),
            "state_dict": self.state_dict,
            "data": self.data,
            "train_config": self.train_config,
            "summary": self.summary,
            "history": self.history,
        }
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        payload = load_payload(path)
        version = payload.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {version!r}, this code reads {FORMAT_VERSION}")
        return cls(
            arch=payload["arch"],
            arch_config=payload["arch_config"],
            labels=list(payload["labels"]),
            input_spec=InputSpec.model_validate(payload["input_spec"]),
            state_dict=payload["state_dict"],
            data=payload["data"],
            train_config=payload.get("train_config", {}),
            summary=payload.get("summary", {}),
            history=payload.get("history", []),
        )
