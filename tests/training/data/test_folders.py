"""Class-per-folder data (training/data/folders.py): one folder split stratified and seeded, or train/ and
val/ folders used as they are."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.training.folder_images import CLASSES, write_dataset
from training.data import load_dataset
from training.data.folders import load_folder_splits


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("single") / "data", per_class=20)


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("trainval") / "data", per_class=20, layout="train/val")


def test_single_folder_is_split_stratified_and_seeded(single: Path) -> None:
    splits = load_dataset(str(single), 0)
    assert splits.labels == list(CLASSES)
    assert {Path(f).suffix for f in splits.extra["files"]} == {".png", ".jpg", ".bmp"}  # mixed formats
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sum(sizes) == 60 and sizes == (42, 9, 9)
    for part in (splits.train, splits.val, splits.test):  # stratified: every class equally represented
        counts = Counter(part.targets.tolist())
        assert max(counts.values()) - min(counts.values()) <= 1
    record = splits.split_record()
    everything = record["train"] + record["val"] + record["test"]
    assert sorted(everything) == list(range(60))  # disjoint and complete
    again, other = load_folder_splits(single, 0), load_folder_splits(single, 1)
    assert np.array_equal(again.test.source_indices, splits.test.source_indices)
    assert not np.array_equal(other.test.source_indices, splits.test.source_indices)
    assert all(image.mode == "RGB" for image in splits.train.images)  # palette PNGs converted too
    json.dumps(record)  # recordable as split.json


def test_train_val_layout(two_folders: Path) -> None:
    splits = load_dataset(str(two_folders))
    assert splits.extra["layout"] == "train/val"
    assert (len(splits.train), len(splits.val)) == (45, 15)
    files = splits.extra["files"]
    assert all(files[i].startswith("train/") for i in splits.train.source_indices)
    assert all(files[i].startswith("val/") for i in splits.val.source_indices)
    assert np.array_equal(splits.test.source_indices, splits.val.source_indices)  # no test/: val is held out
