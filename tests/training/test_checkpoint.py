"""Checkpoints are read with torch.load(weights_only=True) only: every format Stride writes loads that way,
and a file carrying a pickled object is refused before any of its code runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from training.checkpoint import FORMAT_VERSION, Checkpoint, UnsafeCheckpointError, load_payload, upgrade_payload
from training.cli import main
from training.registry import get_arch

TINY_DENSE = {"task": "keypoints", "width": 8, "head_width": 16, "prototypes": 4, "proto_width": 8,
              "keypoint_refine": 0, "num_classes": 1, "joints": 3}


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


def test_checkpoint_load_refuses_it(hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError):
        Checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", [["export", "{path}", "--out", "{out}"], ["upgrade", "{path}", "--out", "{out}"]])
def test_the_cli_refuses_it_with_a_message(hostile: tuple[Path, Path], tmp_path: Path, command: list[str]) -> None:
    path, marker = hostile
    argv = [a.format(path=path, out=tmp_path / "x.onnx") for a in command]
    with pytest.raises(SystemExit, match="refused"):
        main(argv)
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


def dense_checkpoint() -> Checkpoint:
    spec = get_arch("dense")
    model = spec.build(spec.make_config(TINY_DENSE))
    return Checkpoint(task="keypoints", arch="dense", arch_config=TINY_DENSE, labels=["person"],
                      input_spec=spec.default_input, state_dict=model.state_dict(),
                      data={"name": "scenes", "seed": 0, "count": 4}, train_config={"epochs": 1},
                      summary={"best_epoch": 1}, history=[{"epoch": 1, "loss": 1.0}],
                      extra={"keypoint_names": ["a", "b", "c"], "skeleton": [[0, 1]]})


def test_round_trip_keeps_every_field_and_loads_weights_only(tmp_path: Path) -> None:
    original = dense_checkpoint()
    path = original.save(tmp_path / "checkpoint.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION and raw["task"] == "keypoints"
    loaded = Checkpoint.load(path)
    assert (loaded.task, loaded.arch, loaded.arch_config, loaded.labels, loaded.extra, loaded.history) == (
        original.task, original.arch, original.arch_config, original.labels, original.extra, original.history)
    assert loaded.input_spec == original.input_spec
    model = loaded.build_model()
    assert not model.training and all(torch.equal(v, original.state_dict[k]) for k, v in model.state_dict().items())


def legacy_payloads() -> dict[str, dict]:
    """The layouts earlier releases wrote, reduced to the keys the upgrade reads."""
    weights = {"w": torch.zeros(1)}
    spec = get_arch("lenet5").default_input.model_dump(mode="json")
    return {
        "classifier format 1": {"format_version": 1, "arch": "lenet5", "arch_config": {}, "labels": ["0"],
                                "input_spec": spec, "state_dict": weights, "data": {"name": "digits"}},
        "dense": {"kind": "dense", "task": "detection", "model_config": {"task": "detection"}, "labels": ["a"],
                  "input_spec": spec, "state_dict": weights, "history": [{"epoch": 1}], "train_seconds": 3.0,
                  "train_images": 10, "data": "/data", "command": "python -m training train", "category_ids": [1],
                  "keypoint_names": [], "skeleton": []},
        "semantic": {"format_version": 1, "task": "semantic_segmentation", "arch": "unet", "arch_config": {},
                     "labels": ["background", "a"], "input_spec": spec, "state_dict": weights, "data": {}},
        "embedding": {"format_version": 1, "kind": "embedding", "config": {"width": 8, "dimension": 16},
                      "state_dict": weights, "history": []},
    }


@pytest.mark.parametrize(("name", "task", "arch"), [
    ("classifier format 1", "classification", "lenet5"),
    ("dense", "detection", "dense"),
    ("semantic", "semantic_segmentation", "unet"),
    ("embedding", "embedding", "embednet"),
])
def test_earlier_formats_upgrade_with_their_task(name: str, task: str, arch: str) -> None:
    upgraded = upgrade_payload(legacy_payloads()[name])
    assert (upgraded["format_version"], upgraded["task"], upgraded["arch"]) == (FORMAT_VERSION, task, arch)
    checkpoint = Checkpoint.from_payload(upgraded)
    assert checkpoint.task == task and torch.equal(checkpoint.state_dict["w"], torch.zeros(1))


def test_upgrade_command_writes_the_current_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.pt"
    torch.save(legacy_payloads()["dense"], old)
    assert main(["upgrade", str(old), "--out", str(tmp_path / "new.pt")]) == 0
    assert load_payload(tmp_path / "new.pt")["format_version"] == FORMAT_VERSION
    assert "task detection" in capsys.readouterr().out


@pytest.mark.parametrize("payload", [{}, {"format_version": 99, "state_dict": {}}, [1, 2]])
def test_unknown_files_are_refused_with_a_reason(payload: object) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        Checkpoint.from_payload(payload)
