"""The bundled models through the HTTP API, as the README shows them."""

import json
import re

import pytest

from tests.conftest import BUNDLED_MODELS, REPO


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings
    from tests.conftest import wait_until_loaded

    app = create_app(Settings(models_dir=BUNDLED_MODELS, providers=["CPUExecutionProvider"], access_log=False))
    with TestClient(app) as client:
        wait_until_loaded(client)
        yield client


def test_every_bundled_model_loads_and_passes_its_golden_check(bundled) -> None:
    models = bundled.get("/v1/models").json()["models"]
    assert models, "no bundled models"
    not_ready = {m["name"]: m["reason"] for m in models if m["status"] not in ("ready", "unavailable")}
    assert not not_ready
    assert bundled.get("/health/ready").status_code == 200


def test_the_readme_example_answers_as_documented(bundled) -> None:
    readme = (REPO / "README.md").read_text()
    documented = json.loads(re.search(r"```json\n(\{.*?\})\n```", readme, re.DOTALL).group(1))
    sample = REPO / "docs" / "samples" / "digit-7.png"
    response = bundled.post("/v1/classify?model=lenet5&top_k=3", files={"file": ("digit-7.png", sample.read_bytes(),
                                                                                  "image/png")})
    body = response.json()
    assert response.status_code == 200
    assert body["image"] == documented["image"]
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in documented["predictions"]]
    for got, shown in zip(body["predictions"], documented["predictions"], strict=True):
        assert got["score"] == pytest.approx(shown["score"], abs=1e-5)


def test_lenet5_reads_held_out_digits_over_http(bundled) -> None:
    import io

    from training.data.digits import load_digits_splits

    test = load_digits_splits().test
    correct = 0
    for image, target in list(zip(test.images, test.targets, strict=True))[:40]:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        response = bundled.post("/v1/classify?model=lenet5&top_k=1", content=buffer.getvalue(),
                                headers={"content-type": "image/png"})
        correct += response.json()["predictions"][0]["class_id"] == int(target)
    assert correct >= 39


def scenes(count: int, seed: int = 4242):
    import io

    import numpy as np

    from training.data.scenes import render_scene

    rng = np.random.default_rng(seed)
    for _ in range(count):
        image, annotations, semantic = render_scene(rng, 160, 120)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        yield buffer.getvalue(), annotations, semantic


def iou(a: dict, b: list[float]) -> float:
    x1, y1, x2, y2 = max(a["x1"], b[0]), max(a["y1"], b[1]), min(a["x2"], b[0] + b[2]), min(a["y2"], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a["x2"] - a["x1"]) * (a["y2"] - a["y1"]) + b[2] * b[3] - inter
    return inter / union if union else 0.0


def test_detector_finds_the_objects_of_generated_scenes(bundled) -> None:
    labels = ["circle", "square", "triangle", "person"]
    found = total = 0
    for data, annotations, _ in scenes(12):
        detections = bundled.post("/v1/detect?model=detector", content=data,
                                  headers={"content-type": "image/png"}).json()["detections"]
        for annotation in annotations:
            total += 1
            label = labels[annotation["category_id"] - 1]
            found += any(d["label"] == label and iou(d["box"], annotation["bbox"]) >= 0.5 for d in detections)
    assert total > 20 and found / total >= 0.85, f"{found}/{total}"


def test_instance_masks_and_semantic_maps_match_generated_ground_truth(bundled) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image
    from pycocotools import mask as coco_mask

    accuracies, mask_ious = [], []
    for data, annotations, semantic in scenes(6, seed=77):
        body = bundled.post("/v1/segment?model=segmenter", content=data, headers={"content-type": "image/png"}).json()
        ids = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["segmentation"]["data"]))))
        accuracies.append(float((ids == semantic).mean()))
        instances = bundled.post("/v1/segment?model=instance_seg", content=data,
                                 headers={"content-type": "image/png"}).json()["instances"]
        for annotation in annotations:
            truth = semantic == annotation["category_id"]  # this class's visible pixels in the scene
            best = 0.0
            for instance in instances:
                mask = coco_mask.decode({"size": instance["mask"]["size"],
                                         "counts": instance["mask"]["counts"].encode()}).astype(bool)
                inside = np.zeros_like(truth)
                x, y, w, h = (round(v) for v in annotation["bbox"])
                inside[y : y + h, x : x + w] = True
                best = max(best, float((mask & truth & inside).sum() / max(1, ((mask | truth) & inside).sum())))
            mask_ious.append(best)
    assert np.mean(accuracies) >= 0.97
    assert np.median(mask_ious) >= 0.6


def test_keypoints_of_generated_figures_land_near_their_joints(bundled) -> None:
    import numpy as np

    errors = []
    for data, annotations, _ in scenes(10, seed=99):
        people = bundled.post("/v1/keypoints?model=keypoints", content=data,
                              headers={"content-type": "image/png"}).json()["instances"]
        for annotation in (a for a in annotations if a.get("num_keypoints", 0) >= 10):
            truth = np.asarray(annotation["keypoints"], dtype=float).reshape(-1, 3)
            visible = truth[:, 2] == 2
            best = min((np.linalg.norm(np.asarray([[j["x"], j["y"]] for j in p["keypoints"]])[visible]
                                       - truth[visible, :2], axis=1).mean() for p in people), default=np.inf)
            errors.append(best)
    assert len(errors) >= 5 and np.median(errors) <= 4.0, errors
