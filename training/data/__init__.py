"""Data sources by name. Each returns `ImageSplits` (user-facing images, fixed train/val/test split).

New sources (e.g. a user's class-per-folder directory) register a loader here with the same signature.
"""

from __future__ import annotations

from collections.abc import Callable

from training.data import digits, folders
from training.data.base import ImageSet, ImageSplits, render_batch

DataLoaderFn = Callable[[int], ImageSplits]  # split_seed -> splits

DATASETS: dict[str, DataLoaderFn] = {
    digits.NAME: digits.load_digits_splits,
}
DEFAULT_SPLIT_SEED = digits.DEFAULT_SPLIT_SEED


def load_dataset(name: str, split_seed: int = DEFAULT_SPLIT_SEED) -> ImageSplits:
    """A registered source by name, or a class-per-folder directory by path (training.data.folders)."""
    if name not in DATASETS and folders.is_folder_dataset(name):
        return folders.load_folder_splits(name, split_seed)
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}, or a directory") from None
    return loader(split_seed)


__all__ = ["DATASETS", "DEFAULT_SPLIT_SEED", "ImageSet", "ImageSplits", "load_dataset", "render_batch"]
