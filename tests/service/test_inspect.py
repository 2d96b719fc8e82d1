"""`python -m service [serve|inspect]`: each command's help, and inspect on a Stride export, an Ultralytics
export, an undescribed file (template, --write) and a file that is not a model."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from service.__main__ import main
from service.contract import InputSpec, ModelMetadata, ResizePolicy
from service.inspect import inspect_file
from tests.conftest import BUNDLED_MODELS, REPO, constant_outputs_graph, write_model

ULTRALYTICS = REPO / "tests" / "fixtures" / "ultralytics"


def run_inspect(path: Path, write: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    return inspect_file(path, write=write, out=out), out.getvalue()


@pytest.mark.parametrize(("args", "says"), [
    (["--help"], "{serve,inspect}"),
    (["serve", "--help"], "--models-dir"),
    (["inspect", "--help"], "--write"),
])
def test_help_of_each_command(args: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0 and says in done.stdout


def test_a_stride_export() -> None:
    code, text = run_inspect(BUNDLED_MODELS / "lenet5.onnx")
    assert code == 0
    assert "images: tensor(float) [batch (dynamic), 1, 32, 32]" in text
    assert "family: stride (contract from embedded)" in text and "golden:" in text


def test_an_ultralytics_export() -> None:
    code, text = run_inspect(ULTRALYTICS / "detect.onnx")
    assert code == 0 and "family: ultralytics" in text
    contract = yaml.safe_load(text.split("contract the service applies:\n", 1)[1])
    assert contract["task"] == "detection" and contract["input"]["pad_value"] == 114
    assert contract["detection"]["iou"] == 0.7 and contract["outputs"][0]["kind"] == "yolo_candidates"


def undescribed(folder: Path) -> Path:
    spec = InputSpec(height=224, width=224, channels=3, resize=ResizePolicy.STRETCH, mean=(0, 0, 0), std=(1, 1, 1))
    return write_model(folder / "mystery.onnx", constant_outputs_graph(spec, {"logits": np.zeros((1, 5))}), None)


def test_an_undescribed_file_gets_a_template_that_validates(tmp_path: Path) -> None:
    path = undescribed(tmp_path)
    code, text = run_inspect(path)
    assert code == 1 and "family: none recognised" in text and "mystery.yaml" in text
    assert not (tmp_path / "mystery.yaml").exists()  # printing changes nothing
    template = yaml.safe_load(text.split("(write it with --write):\n", 1)[1])
    assert template["task"] == "classification" and len(template["labels"]) == 5
    ModelMetadata.model_validate(template | {"model_version": "1", "architecture": "x", "training_data": "x"})


def test_write_saves_the_template_once_and_the_file_then_serves(tmp_path: Path) -> None:
    path = undescribed(tmp_path)
    assert run_inspect(path, write=True)[0] == 1
    written = (tmp_path / "mystery.yaml").read_text()
    assert written.startswith("# Description of mystery.onnx")
    code, text = run_inspect(path, write=True)
    assert code == 0 and "sidecar mystery.yaml" in text  # now described: recognised, nothing overwritten
    assert (tmp_path / "mystery.yaml").read_text() == written


@pytest.mark.parametrize("content", [b"", b"not a model at all"])
def test_a_file_that_is_not_a_model(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    code, text = run_inspect(path)
    assert code == 2 and "cannot open broken.onnx" in text


def test_main_dispatches_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(BUNDLED_MODELS / "lenet5.onnx", tmp_path / "copy.onnx")
    assert main(["inspect", str(tmp_path / "copy.onnx")]) == 0
    assert "family: stride" in capsys.readouterr().out
