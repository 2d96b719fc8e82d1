"""A user's own class-per-folder images -> `train` -> `export` -> served by the app with no code change."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings
from tests.conftest import wait_until_loaded
from tests.training.folder_images import CLASSES, draw_sample, write_dataset
from training.checkpoint import Checkpoint
from training.cli import main


def mime(body: bytes) -> str:
    if body.startswith(b"\x89PNG"):
        return "image/png"
    return "image/bmp" if body.startswith(b"BM") else "image/jpeg"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("userdata")
    data = write_dataset(tmp / "shapes", per_class=50)
    run, models = tmp / "run", tmp / "models"
    args = ["train", "--arch", "resnet", "--data", str(data), "--out", str(run), "--epochs", "12",
            "--image-size", "16", "--threads", "1", "--batch-size", "32", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(models / "shapes.onnx"), "--card"]) == 0
    return run, models


def test_checkpoint_records_input_spec_labels_and_split(served: tuple[Path, Path]) -> None:
    run, _ = served
    checkpoint = Checkpoint.load(run / "checkpoint.pt")
    assert checkpoint.labels == list(CLASSES)  # from the folder names
    spec = checkpoint.input_spec
    assert (spec.channels, spec.height, spec.width) == (3, 16, 16)  # colour data -> RGB
    assert all(0.0 < m < 1.0 for m in spec.mean) and all(0.0 < s < 1.0 for s in spec.std)  # measured
    split = checkpoint.data["split"]
    assert sum(len(split[p]) for p in ("train", "val", "test")) == 150
    assert len((run / "metrics.jsonl").read_text().splitlines()) == checkpoint.summary["epochs_run"]
    card = run.parent / "models" / "shapes"  # the model card written by `export --card`
    assert json.loads((card / "split.json").read_text())["layout"] == "single"
    assert (card / "training_curves.png").stat().st_size > 1000
    assert (card / "confusion_matrix.png").stat().st_size > 1000


def test_served_model_labels_held_out_images(served: tuple[Path, Path]) -> None:
    run, models = served
    test_files = Checkpoint.load(run / "checkpoint.pt").data["split"]["test"]
    fresh = np.random.default_rng(123)  # plus never-seen images drawn the same way
    uploads = [(Path(f).parent.name, (run.parent / "shapes" / f).read_bytes()) for f in test_files]
    for label in CLASSES:
        buffer = io.BytesIO()
        draw_sample(label, fresh).save(buffer, format="JPEG")
        uploads.append((label, buffer.getvalue()))
    app = create_app(Settings(models_dir=models, providers=["CPUExecutionProvider"]))
    with TestClient(app) as client:
        wait_until_loaded(client)
        assert client.get("/v1/models").status_code == 200
        right = 0
        for label, body in uploads:
            response = client.post("/v1/classify?model=shapes&top_k=1", files={"file": ("x", body, mime(body))})
            assert response.status_code == 200, response.text
            right += response.json()["predictions"][0]["label"] == label
    assert right / len(uploads) >= 0.9, f"{right}/{len(uploads)} right"
    assert Image.open(io.BytesIO(uploads[0][1])).size[0] >= 32
