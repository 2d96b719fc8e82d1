"""`format=png|jpeg` on the inference routes: the original image, at its size, with the answer drawn by
service.tasks.drawing exactly where the JSON answer says, and nowhere else."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import schemas
from service.app import create_app
from service.config import Settings
from service.tasks.drawing import UNPAINTED_LABELS, draw_answer, instance_mask, semantic_masks
from tests.conftest import REPO, wait_until_loaded
from tests.service.web.browser import SCENE

DIGIT = REPO / "docs" / "samples" / "digit-7.png"

# route, query, sample, response model
CASES: list[tuple[str, str, Path, type[Any]]] = [
    ("/v1/classify", "model=lenet5&top_k=3", DIGIT, schemas.ClassifyResponse),
    ("/v1/detect", "model=detector", SCENE, schemas.DetectResponse),
    ("/v1/segment", "model=instance_seg&mask_format=rle", SCENE, schemas.InstanceSegmentResponse),
    ("/v1/segment", "model=instance_seg&mask_format=polygon", SCENE, schemas.InstanceSegmentResponse),
    ("/v1/segment", "model=segmenter", SCENE, schemas.SemanticSegmentResponse),
    ("/v1/keypoints", "model=keypoints", SCENE, schemas.KeypointsResponse),
]
IDS = [query.split("&")[0].removeprefix("model=") + "-" + query.rsplit("=", 1)[-1] for _, query, _, _ in CASES]


@pytest.fixture(scope="module")
def bundled(page_models_dir: Path) -> Iterator[TestClient]:
    app = create_app(Settings(models_dir=page_models_dir, providers=["CPUExecutionProvider"], access_log=False))
    with TestClient(app) as client:
        wait_until_loaded(client)
        yield client


def post(client: TestClient, route: str, query: str, sample: Path, files: int = 1):  # type: ignore[no-untyped-def]
    return client.post(f"{route}?{query}", files=[("file", (sample.name, sample.read_bytes(), "image/png"))] * files)


def drawn_regions(answer: Any, height: int, width: int) -> np.ndarray:
    """Where drawing may change pixels: boxes with their label tag, masks, painted classes, joints, panels."""
    allowed = np.zeros((height, width), bool)
    for item in getattr(answer, "detections", None) or getattr(answer, "instances", None) or []:
        x0, y0 = int(item.box.x1), int(item.box.y1)
        x1, y1 = int(np.ceil(item.box.x2)), int(np.ceil(item.box.y2))
        allowed[max(0, y0 - 4):y1 + 4, max(0, x0 - 4):x1 + 4] = True  # the box, its joints' dots
        allowed[max(0, y0 - 16):y0 + 16, max(0, min(x0, width - 90)):] = True  # the label tag
        mask = instance_mask(getattr(item, "mask", None), height, width)
        if mask is not None:
            allowed |= mask
    if isinstance(answer, schemas.SemanticSegmentResponse):
        labels = {c.class_id: c.label for c in answer.classes}
        for class_id, mask in semantic_masks(answer):
            if labels[class_id] not in UNPAINTED_LABELS:
                allowed |= mask
        allowed[height - 16 * len(answer.classes) - 4:, :110] = True  # the legend
    if isinstance(answer, schemas.ClassifyResponse):
        allowed[: 16 * len(answer.predictions) + 4, :] = True  # the top-k panel
    return allowed


@pytest.mark.parametrize(("route", "query", "sample", "model"), CASES, ids=IDS)
def test_png_is_the_original_with_exactly_the_json_answer_drawn(bundled: TestClient, route: str, query: str,
                                                                sample: Path, model: type[Any]) -> None:
    answer = model.model_validate(post(bundled, route, query, sample).json())
    response = post(bundled, route, query + "&format=png", sample)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content)).convert("RGB")
    original = Image.open(sample)
    assert picture.size == original.size
    # the picture is the JSON drawn: the same module, from the same answer
    expected = draw_answer(original, answer)
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    # and independently: pixels changed where the answer is, and only there
    changed = (np.asarray(picture) != np.asarray(original.convert("RGB"))).any(axis=2)
    assert changed.any()
    assert not (changed & ~drawn_regions(answer, original.height, original.width)).any()


@pytest.mark.parametrize(("route", "query", "sample", "model"), CASES, ids=IDS)
def test_jpeg_is_the_picture_at_the_original_size(bundled: TestClient, route: str, query: str, sample: Path,
                                                  model: type[Any]) -> None:
    response = post(bundled, route, query + "&format=jpeg", sample)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.format == "JPEG" and picture.size == Image.open(sample).size


@pytest.mark.parametrize("fmt", ["gif", "PNG ", "svg", ""])
def test_a_bad_format_is_a_400_that_names_the_choices(bundled: TestClient, fmt: str) -> None:
    response = post(bundled, "/v1/detect", f"model=detector&format={fmt}", SCENE)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "png" in message and "jpeg" in message


def test_several_images_with_a_format_is_a_400_that_says_to_send_one(bundled: TestClient) -> None:
    response = post(bundled, "/v1/detect", "model=detector&format=png", SCENE, files=2)
    assert response.status_code == 400
    assert "one" in response.json()["error"]["message"]
