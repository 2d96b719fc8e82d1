"""`python -m training`: every command listed and each with its own --help; a clear word, not a traceback,
when the training extra is missing or a checkpoint is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.folder_images import write_dataset
from training.__main__ import main
from training.checkpoint import Checkpoint
from training.cli import parse_arch_options

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("data", "train", "export", "evaluate", "bundle", "archs", "upgrade")

# argv before --help -> options its help must list (each command's own, not the top-level parser's)
HELPS = {
    ("data",): ["scenes"],
    ("data", "scenes"): ["--out", "--count", "--seed", "--width", "--height"],
    ("train",): ["--task", "--arch", "--data", "--epochs", "--resume", "--patience", "--max-minutes"],
    ("train", "--task", "classification"): ["--arch", "--image-size", "--label-smoothing", "--augmentation"],
    ("train", "--task", "detection"): ["--data", "--epochs", "--max-minutes", "--init", "--image-size", "--count"],
    ("train", "--task", "instance_segmentation"): ["--data", "--epochs", "--image-size"],
    ("train", "--task", "keypoints"): ["--data", "--kpt-weight", "--image-size"],
    ("train", "--task", "semantic_segmentation"): ["--data", "--image-size", "--dice-weight", "--crop"],
    ("train", "--task", "embedding"): ["--out", "--identities", "--margin"],
    ("export",): ["checkpoint", "--out", "--card", "--quantize", "--fp16", "--seed"],
    ("evaluate",): ["model", "--json", "--data", "--seed", "--count"],
    ("bundle",): ["--models-dir", "--only"],
    ("archs",): ["--json"],
    ("upgrade",): ["checkpoint", "--out"],
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


def test_archs_lists_every_registered_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    from training.registry import ARCHS

    assert main(["archs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(ARCHS)


def test_an_architecture_of_another_task_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--task", "detection", "--arch", "lenet5", "--out", "x"])
    assert "invalid choice: 'lenet5'" in capsys.readouterr().err


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


def test_arch_options_are_typed() -> None:
    assert parse_arch_options(["c3_table=False", "activation=relu", "widths=[8, 16]", "c3_table=false"]) == {
        "c3_table": False, "activation": "relu", "widths": [8, 16]}


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("single") / "data", per_class=20)


def test_train_export_card_evaluate_on_a_folder(single: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--arch", "resnet", "--data", str(single), "--out", str(run), "--image-size", "12",
                 "--epochs", "2", "--threads", "1", "--no-progress", "--arch-option", "widths=[8, 16]"]) == 0
    assert "input 12x12 (--image-size 12; the architecture's default is 16x16)" in str(
        Checkpoint.load(run / "checkpoint.pt").summary["notes"])
    model = tmp_path / "mine.onnx"
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(model), "--card"]) == 0
    card = (tmp_path / "mine" / "README.md").read_text()
    assert "--image-size 12" in card and "python -m training train" in card  # size used and the command
    assert {p.name for p in (tmp_path / "mine").iterdir()} >= {"metrics.json", "split.json", "training_curves.png",
                                                               "confusion_matrix.png"}
    with pytest.raises(SystemExit, match="pass the data it was trained on with --data"):
        main(["evaluate", str(model)])  # the default held-out data is digits: not this model's
    capsys.readouterr()
    assert main(["evaluate", str(model), "--data", str(single)]) == 0
    assert "test_accuracy" in capsys.readouterr().out


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
