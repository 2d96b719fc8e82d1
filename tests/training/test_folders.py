"""Class-per-folder data: both layouts, mixed formats, a stratified seeded split that is recorded; the
input spec chosen for it; augmentation that keeps shapes and ranges; early stopping and --resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.training.folder_images import CLASSES, write_dataset
from training.checkpoint import Checkpoint
from training.cli import main
from training.data import load_dataset
from training.data.folders import load_folder_splits
from training.train import TrainConfig, augment_crop, choose_input_spec


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


def test_grayscale_folders_give_a_one_channel_spec(tmp_path: Path) -> None:
    for label in ("dark", "light"):
        (tmp_path / label).mkdir()
        for i in range(10):
            value = 40 + i if label == "dark" else 200 + i
            Image.new("L", (12, 10), value).save(tmp_path / label / f"{i}.png")
            Image.new("RGB", (12, 10), (value,) * 3).save(tmp_path / label / f"{i}.jpg")
    splits = load_dataset(str(tmp_path))
    spec = choose_input_spec("resnet", splits)
    assert spec.channels == 1 and splits.extra["color_mode"] == "L"
    assert (spec.height, spec.width) == (16, 16)
    assert 0.3 < spec.mean[0] < 0.7 and spec.std[0] > 0.2  # measured on the training images


def test_colour_spec_is_measured_per_channel(single: Path) -> None:
    spec = choose_input_spec("alexnet", load_dataset(str(single)), image_size=24)
    assert (spec.channels, spec.height, spec.width) == (3, 24, 24)
    assert len(set(spec.mean)) == 3  # red, green and blue differ in these images


def test_crop_flip_jitter_keep_shapes_and_ranges(single: Path) -> None:
    splits = load_dataset(str(single))
    spec = choose_input_spec("resnet", splits)
    from training.data import render_batch

    x = torch.from_numpy(render_batch(splits.train.images[:16], spec))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    out = augment_crop(x, TrainConfig(), spec, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert bool((out >= low - 1e-5).all() and (out <= high + 1e-5).all())  # still valid pixel values
    assert not torch.allclose(out, x, atol=1e-2)


def test_flip_is_a_mirror(single: Path) -> None:
    spec = choose_input_spec("resnet", load_dataset(str(single)))
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    pixels = torch.zeros(64, 3, 16, 16)
    pixels[..., :8] = 1.0  # bright left half, dark right half
    out = augment_crop((pixels - mean) / std, TrainConfig(crop_min_area=1.0, jitter=0.0), spec,
                       torch.Generator().manual_seed(0))  # fmt: skip
    out = out * std + mean
    left, right = out[..., :8].mean((1, 2, 3)), out[..., 8:].mean((1, 2, 3))
    flipped = right > left
    assert bool(((left - right).abs() > 0.5).all())  # still a clean half/half image: crop area ~1
    assert 10 < int(flipped.sum()) < 54  # about half of them mirrored
    still = augment_crop((pixels - mean) / std, TrainConfig(crop_min_area=1.0, jitter=0.0, hflip=False), spec,
                         torch.Generator().manual_seed(0))  # fmt: skip
    still = still * std + mean
    assert bool((still[..., :8].mean((1, 2, 3)) > still[..., 8:].mean((1, 2, 3))).all())


def test_train_early_stops_and_resumes(single: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["train", "--arch", "resnet", "--data", str(single), "--out", str(run), "--image-size", "8",
            "--threads", "1", "--no-progress", "--arch-option", "widths=[8, 16]"]  # fmt: skip
    assert main([*base, "--epochs", "2"]) == 0
    first = Checkpoint.load(run / "checkpoint.pt")
    assert first.summary["epochs_run"] == 2 and (run / "last.pt").is_file()
    assert main([*base, "--epochs", "4", "--resume"]) == 0  # continues at epoch 3
    resumed = Checkpoint.load(run / "checkpoint.pt")
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history[:2]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    stopped = tmp_path / "stopped"
    args = ["train", "--arch", "gcn", "--data", str(single), "--out", str(stopped), "--image-size", "8",
            "--threads", "1", "--no-progress", "--epochs", "30", "--patience", "2", "--lr", "0"]  # fmt: skip
    assert main(args) == 0  # lr 0: no epoch beats the first, so training stops after 1 + patience epochs
    assert Checkpoint.load(stopped / "checkpoint.pt").summary["epochs_run"] == 3
