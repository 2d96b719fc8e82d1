"""What a task plug-in gives the framework: data, model and loss for the trainer, the task's parts of the
ONNX contract, its held-out evaluation (through the service's own decoders) and its sections of the card.

The framework owns everything else: the loop (training.trainer), the checkpoint (training.checkpoint), the
export, parity and golden checks (training.export), the card skeleton and plots (training.cards), the CLI
(training.cli) and the bundled recipes (training.bundle). A task never opens an ONNX session for export or
writes a card file itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from torch import nn

from service.contract import InputSpec, ModelMetadata, OutputSpec
from training.checkpoint import Checkpoint
from training.trainer import Job, TrainerConfig


@dataclass(frozen=True)
class TrainRequest:
    """One `train` command, as the CLI (or a bundled recipe) gives it to a task."""

    data: str  # a source name the task knows (digits, scenes, identities) or a folder / file path
    arch: str  # a training.registry name serving this task
    arch_options: dict[str, Any] = field(default_factory=dict)  # --arch-option KEY=VALUE overrides
    image_size: int = 0  # --image-size (0: the architecture's data config)
    split_seed: int = 0  # where the task splits the data itself (train / val / test)
    count: int = 0  # generated sources: how many items (0: the task's default)
    init: str = ""  # start from this checkpoint's weights (a second, fine-tuning stage)


@dataclass
class Prepared:
    """A task's answer to a TrainRequest: the trainer's job and what the checkpoint records besides weights."""

    job: Job
    arch_config: dict[str, Any]
    labels: list[str]
    input_spec: InputSpec
    data: dict[str, Any]  # how to find the data again (name, seeds, counts, description, file lists)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific plain values for the checkpoint
    notes: list[str] = field(default_factory=list)  # printed by the CLI and written in the card (sizes used)


@dataclass(frozen=True)
class EvalRequest:
    """Which held-out data `evaluate` (and export) measures on; each task documents its defaults."""

    data: str = ""  # "" = the task's default held-out source
    seed: int | None = None
    count: int | None = None


@dataclass
class Evaluation:
    metrics: dict[str, float]  # headline figures: into the ONNX metadata, the card table, `evaluate` output
    description: str  # markdown: what data, how many items, which seed, how it was decoded and scored
    details: dict[str, Any] = field(default_factory=dict)  # per-class tables, confusion matrices, ...


@dataclass
class CardSection:
    title: str
    body: str  # markdown; may reference images written into the card folder


class TaskPlugin(ABC):
    name: str  # a class may serve several tasks (training.tasks.dense sets it per instance)
    config_cls: ClassVar[type[TrainerConfig]]  # `train --task NAME` options: the trainer's and the task's
    default_arch: ClassVar[str]
    default_data: ClassVar[str]  # the source `train` and `evaluate` use when --data is not given
    data_help: ClassVar[str]  # one line for --help: which --data values this task reads
    parity_atol: ClassVar[dict[str, float]]  # per ONNX output name: max |ORT - PyTorch| accepted at export
    golden_atol: ClassVar[float]  # on the first output, what the service tolerates replaying golden samples
    golden_count: ClassVar[int] = 4  # golden samples written into the metadata

    @abstractmethod
    def prepare(self, request: TrainRequest, config: Any) -> Prepared:
        """Load or generate the data, build the model, and say how to batch it and what its loss is."""

    @abstractmethod
    def exportable(self, checkpoint: Checkpoint) -> nn.Module:
        """The module to trace (eval mode): the graph the service runs, outputs in `outputs()` order."""

    @abstractmethod
    def outputs(self, checkpoint: Checkpoint) -> list[OutputSpec]:
        """The ONNX outputs, in the order the exportable module returns them."""

    @abstractmethod
    def metadata_fields(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Task-specific ModelMetadata fields (detection, masks, keypoints, embedding, ...); may be empty."""

    @abstractmethod
    def sample_images(self, checkpoint: Checkpoint, count: int, seed: int) -> list[Image.Image]:
        """Real inputs as a user would send them, never trained on: for parity checks and golden samples."""

    @abstractmethod
    def evaluate(self, model: Path | bytes, metadata: ModelMetadata, request: EvalRequest) -> Evaluation:
        """Held-out metrics of an exported file through ONNX Runtime and the service's decoders."""

    @abstractmethod
    def card_sections(
        self, model_path: Path, checkpoint: Checkpoint, evaluation: Evaluation, folder: Path
    ) -> list[CardSection]:
        """The task's own card sections (example predictions, confusion matrix, ...); plots go in `folder`."""

    def calibration_images(self, checkpoint: Checkpoint, count: int) -> list[Image.Image]:
        """Inputs to calibrate int8 quantisation on (training-like images, never the held-out ones)."""
        return self.sample_images(checkpoint, count, seed=3000)

    def eval_request_for(self, checkpoint: Checkpoint) -> EvalRequest:
        """The held-out data export measures on by default (the task's default; classifiers: the test split
        of the data the checkpoint was trained on)."""
        return EvalRequest()

    def training_data_text(self, checkpoint: Checkpoint) -> str:
        """One line for the ONNX metadata's training_data."""
        return str(checkpoint.data.get("description") or checkpoint.data.get("name", ""))

    limitations: ClassVar[str] = ""
