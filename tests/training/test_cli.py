"""`python -m training`: every command listed and each with its own --help; a clear word, not a traceback,
when the training extra is missing or a checkpoint is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("data", "train", "export", "evaluate", "bundle")

# argv before --help -> options its help must list (each command's own, not the top-level parser's)
HELPS = {
    ("data",): ["scenes"],
    ("data", "scenes"): ["--out", "--count", "--seed", "--width", "--height"],
    ("train",): ["--task", "--arch", "--data", "--epochs", "--resume"],
    ("train", "--task", "classification"): ["--arch", "--image-size"],
    ("train", "--task", "detection"): ["--data", "--epochs", "--max-minutes", "--init"],
    ("train", "--task", "instance_segmentation"): ["--data", "--epochs"],
    ("train", "--task", "keypoints"): ["--data", "--kpt-weight"],
    ("train", "--task", "semantic_segmentation"): ["--data", "--input-size"],
    ("train", "--task", "embedding"): ["--out"],
    ("export",): ["checkpoint", "--out", "--card", "--quantize"],
    ("evaluate",): ["model", "--json"],
    ("bundle",): ["--models-dir", "--only"],
}


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of([], capsys)
    listed = {line.split()[0] for line in text.split("positional arguments:")[1].splitlines()[2:] if line.strip()}
    assert set(COMMANDS) <= listed, text


@pytest.mark.parametrize("argv", list(HELPS), ids=["-".join(a).replace("--task-", "") for a in HELPS])
def test_each_command_has_its_own_help(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(list(argv), capsys)
    assert text.startswith(f"usage: python -m training {argv[0]}"), text
    for option in HELPS[argv]:
        assert option in text, (argv, option, text)


def test_every_train_task_has_a_help_entry() -> None:
    """A task added to `train --task` without a help check here fails this test."""
    import argparse

    from training.cli import build_parser

    train = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    tasks = next(a for a in train._actions if a.dest == "task").choices
    assert {argv[2] for argv in HELPS if len(argv) == 3} == set(tasks)


def test_data_scenes_writes_a_coco_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "scenes", "--out", str(tmp_path), "--count", "2", "--seed", "3"]) == 0
    assert (tmp_path / "instances.json").is_file() and len(list((tmp_path / "images").glob("*.png"))) == 2
    assert "2 scenes, seed 3" in capsys.readouterr().out


def without_torch(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m training ARGV` in a fresh interpreter where importing torch fails, as without the extra."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['training', *sys.argv[1:]]; "
            "runpy.run_module('training', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--task", "detection", "--help"],
                                  ["data", "scenes", "--out", "x", "--count", "1"]])
def test_without_the_training_extra_it_says_how_to_install_it(argv: list[str]) -> None:
    done = without_torch(*argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "torch is missing" in done.stderr
    assert "make install-dev" in done.stderr and "pip install -e '.[cpu,train]'" in done.stderr


def test_a_refused_checkpoint_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"format_version": 1, "summary": tmp_path}, path)  # a pathlib object: not weights-only
    with pytest.raises(SystemExit) as exited:
        main(["export", str(path), "--out", str(tmp_path / "model.onnx")])
    assert "refused" in str(exited.value.code) and "PosixPath" in str(exited.value.code)
