"""Checkpoints are read with torch.load(weights_only=True) only: every format Stride writes loads that way,
and a file carrying a pickled object is refused before any of its code runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from training.checkpoint import Checkpoint, UnsafeCheckpointError, load_payload
from training.data import scenes
from training.dense.cli import _is_dense_file
from training.dense.train import DenseTrainConfig, load_dense, train_dense
from training.semantic import SegCheckpoint, is_semantic_checkpoint

TINY_DENSE = {"width": 8, "head_width": 16, "prototypes": 4, "proto_width": 8, "keypoint_refine": 0}


class RunsCodeWhenUnpickled:
    """Unpickling this calls os.mkdir(marker): the file the refusal must never execute."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.marker),)


@dataclass
class SomeConfig:
    epochs: int = 3


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint-shaped file whose "summary" would run code on a plain torch.load, and the marker."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 1, "kind": "dense", "task": "semantic_segmentation",
                "state_dict": {}, "summary": RunsCodeWhenUnpickled(marker)}, path)
    return path, marker


def test_load_payload_refuses_a_pickled_object_without_running_it(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match=r"refused.*GLOBAL posix\.mkdir") as caught:
        load_payload(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("load", [Checkpoint.load, SegCheckpoint.load, load_dense],
                         ids=["classifier", "semantic", "dense"])
def test_every_checkpoint_loader_refuses_it(hostile: tuple[Path, Path], load: Callable[[Path], object]) -> None:
    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError):
        load(path)
    assert not marker.exists()


def test_the_cli_file_sniffers_refuse_it(hostile: tuple[Path, Path]) -> None:
    """The CLI looks into any path it is given to route export/evaluate: that look must be safe too."""
    path, marker = hostile
    assert not _is_dense_file(path)
    assert not is_semantic_checkpoint(path)
    assert not marker.exists()


def test_a_config_stored_as_a_dataclass_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dataclass.pt"
    torch.save({"train_config": SomeConfig()}, path)
    with pytest.raises(UnsafeCheckpointError, match="SomeConfig"):
        load_payload(path)


def test_plain_containers_and_tensors_load(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    payload = {"w": torch.ones(2), "config": {"lr": 0.1, "names": ["a"], "pair": (1, 2), "flag": True, "none": None}}
    torch.save(payload, path)
    loaded = load_payload(path)
    assert torch.equal(loaded["w"], payload["w"]) and loaded["config"] == payload["config"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch keypoints run on 4 scenes (keypoints: the format with the most fields), then a second
    stage from its weights, as the bundled keypoints recipe does."""
    before = torch.get_num_threads()
    root = tmp_path_factory.mktemp("dense")
    data = scenes.write_dataset(root / "scenes", 4, seed=5).parent
    config = DenseTrainConfig(epochs=1, batch_size=4, max_minutes=5.0)
    first = train_dense("keypoints", data, root / "stage1", config, TINY_DENSE)
    second = train_dense("keypoints", data, root / "stage2", DenseTrainConfig(epochs=1, batch_size=4, init=str(first)),
                         TINY_DENSE)
    torch.set_num_threads(before)
    return first, second


def test_dense_checkpoints_load_weights_only(dense_run: tuple[Path, Path]) -> None:
    first, second = dense_run
    raw = torch.load(second, map_location="cpu", weights_only=True)
    assert raw["kind"] == "dense" and raw["task"] == "keypoints" and isinstance(raw["model_config"], dict)
    assert isinstance(raw["train_config"], dict) and raw["train_config"]["init"] == str(first)
    model, ckpt = load_dense(second)
    assert not model.training and model.config.width == TINY_DENSE["width"]
    assert [row.get("stage") for row in ckpt["history"]] == [1, None]  # the first stage's record continues
    assert _is_dense_file(second)
