"""What every data source hands to training: labelled images in user-facing form, already split.

Images are kept as the Pillow images a user would send (not tensors); `render_batch` turns them into
model input with the service's own `prepare`, so training, evaluation and serving share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.contract import InputSpec
from service.preprocess import prepare


@dataclass(frozen=True)
class ImageSet:
    images: list[Image.Image]
    targets: np.ndarray  # [N] int64 class indices into ImageSplits.labels
    source_indices: np.ndarray  # [N] where each image came from in the source (e.g. load_digits order)

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ImageSplits:
    name: str  # data source name as given on the command line, e.g. "digits"
    description: str  # one line for the model metadata's training_data and the model card
    labels: list[str]
    train: ImageSet
    val: ImageSet  # early stopping only
    test: ImageSet  # held out: reported metrics only
    split_seed: int
    extra: dict[str, object] = field(default_factory=dict)  # source-specific facts for split.json
    card_notes: str = ""  # markdown for the model card: how images look, what to send, limitations

    def split_record(self) -> dict[str, object]:
        """JSON-able record of exactly which source items went where, for reproducibility."""
        return {
            "dataset": self.name,
            "description": self.description,
            "split_seed": self.split_seed,
            **self.extra,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train": self.train.source_indices.tolist(),
            "val": self.val.source_indices.tolist(),
            "test": self.test.source_indices.tolist(),
        }


def render_batch(images: list[Image.Image], spec: InputSpec) -> np.ndarray:
    """User-facing images -> float32 [N, C, H, W] model input, through the service's preprocessing."""
    return np.stack([prepare(image, spec)[0] for image in images])
