"""Ultralytics exports served over HTTP give Ultralytics' own answers.

The references in tests/fixtures/ultralytics/*.json were recorded by Ultralytics' predictor on the same
ONNX files and images (tools/ultralytics_fixtures.py, in its own venv). Boxes are matched to same-class
answers with IoU >= 0.9; over each file, recall and precision >= 0.99, mean |score difference| <= 0.005,
mean mask IoU >= 0.95, mean distance of visible keypoints <= 1 px; classification: the same top-1 and
every probability within 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils

from service.tasks.geometry import box_iou

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ultralytics"
REFERENCES = sorted(p for p in FIXTURES.glob("*.json") if p.stem != "VERSIONS")
ROUTES = {"detect": "/v1/detect", "obb": "/v1/detect", "segment": "/v1/segment?mask_format=rle",
          "pose": "/v1/keypoints", "classify": "/v1/classify"}
# What each task's references must hold at least, so a comparison cannot pass on empty answers.
MINIMUM = {"detect": 100, "segment": 50, "pose": 50, "obb": 20}
# The tiny YOLO26 NMS-free model learned less in its budget (30 boxes): enough to check the end-to-end path.
MINIMUM_OF_FILE = {"detect_e2e": 20}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    from service.app import create_app
    from service.config import Settings
    from tests.conftest import wait_until_loaded

    # The fixture folder as it is: every *.onnx in it, default settings (JPEG draft on: the family turns it off).
    app = create_app(Settings(models_dir=FIXTURES, providers=["CPUExecutionProvider"]))
    with TestClient(app) as client:
        wait_until_loaded(client)
        yield client


def reference(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def ask(client: TestClient, model: str, task: str, image: Path, nc: int) -> dict[str, Any]:
    route = ROUTES[task]
    extra = f"&top_k={nc}" if task == "classify" else ""
    separator = "&" if "?" in route else "?"
    response = client.post(f"{route}{separator}model={model}{extra}", files={"file": (image.name, image.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()


def reference_boxes(task: str, entry: dict[str, Any]) -> np.ndarray:
    if task == "obb":
        corners = np.asarray(entry["xyxyxyxy"], dtype=np.float64).reshape(-1, 4, 2)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1) if len(corners) else np.zeros((0, 4))
    return np.asarray(entry["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)


def answered(task: str, answer: dict[str, Any]) -> list[dict[str, Any]]:
    return answer["detections"] if task in ("detect", "obb") else answer["instances"]


def answer_boxes(got: list[dict[str, Any]]) -> np.ndarray:
    """x1, y1, x2, y2 per answer; for a rotated box, its corners' extent (the `box` beside it is clipped to
    the image, while Ultralytics' corners may reach past its edge)."""
    if got and got[0].get("obb"):
        corners = np.asarray([d["obb"]["corners"] for d in got], dtype=np.float64)
        return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return np.asarray([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in got], dtype=np.float64)


def match(ref_boxes: np.ndarray, ref_classes: list[int], got: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of reference boxes (in reference order) to same-class answers, IoU >= 0.9."""
    got_boxes = answer_boxes(got)
    pairs, used = [], set()
    if not len(ref_boxes) or not len(got_boxes):
        return pairs
    ious = box_iou(ref_boxes, got_boxes.reshape(-1, 4))
    for r, cls in enumerate(ref_classes):
        candidates = [(ious[r, g], g) for g in range(len(got)) if g not in used and got[g]["class_id"] == cls]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= 0.9:
            pairs.append((r, best[1]))
            used.add(best[1])
    return pairs


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


@pytest.mark.parametrize("path", REFERENCES, ids=[p.stem for p in REFERENCES])
def test_answers_equal_ultralytics_own(served: TestClient, path: Path) -> None:
    ref = reference(path)
    task, model = ref["meta"]["task"], path.stem
    nc = len(ref["meta"]["names"])
    info = served.get(f"/v1/models/{model}").json()
    assert info["status"] == "ready" and info["family"] == "ultralytics", info
    if task == "classify":
        for name, entry in ref["images"].items():
            answer = ask(served, model, task, FIXTURES / "images" / name, nc)
            probabilities = {p["class_id"]: p["score"] for p in answer["predictions"]}
            assert answer["predictions"][0]["class_id"] == entry["top1"], name
            assert max(abs(probabilities[i] - p) for i, p in enumerate(entry["probs"])) <= 1e-3, name
        return

    total = found = matched = 0
    score_gaps, mask_ious, joint_gaps, corner_gaps = [], [], [], []
    for name, entry in ref["images"].items():
        answer = ask(served, model, task, FIXTURES / "images" / name, nc)
        got = answered(task, answer)
        boxes = reference_boxes(task, entry)
        pairs = match(boxes, entry["class_ids"], got)
        total, found, matched = total + len(boxes), found + len(got), matched + len(pairs)
        for r, g in pairs:
            score_gaps.append(abs(entry["confidences"][r] - got[g]["score"]))
            if task == "segment":
                expected, mine = decode_rle(entry["masks_rle"][r]), decode_rle(got[g]["mask"])
                mask_ious.append((expected & mine).sum() / max(1, (expected | mine).sum()))
            if task == "pose":
                for (x, y, visibility), joint in zip(entry["keypoints"][r], got[g]["keypoints"], strict=True):
                    assert joint["score"] == pytest.approx(visibility, abs=0.01)
                    if visibility >= 0.5:
                        joint_gaps.append(float(np.hypot(joint["x"] - x, joint["y"] - y)))
            if task == "obb":
                corners = np.asarray(entry["xyxyxyxy"][r])
                corner_gaps.append(float(np.abs(np.asarray(got[g]["obb"]["corners"]) - corners).max()))
    assert total >= MINIMUM_OF_FILE.get(model, MINIMUM[task]), f"the references hold only {total} instances"
    assert matched / total >= 0.99, f"recall {matched}/{total}"
    assert matched / max(1, found) >= 0.99, f"precision {matched}/{found}"
    assert np.mean(score_gaps) <= 0.005
    if task == "segment":
        assert np.mean(mask_ious) >= 0.95, np.mean(mask_ious)
    if task == "pose":
        assert joint_gaps and np.mean(joint_gaps) <= 1.0, np.mean(joint_gaps)
    if task == "obb":
        assert np.mean(corner_gaps) <= 1.0, np.mean(corner_gaps)


def test_every_fixture_model_has_its_reference() -> None:
    assert {p.stem for p in FIXTURES.glob("*.onnx")} == {p.stem for p in REFERENCES}
