"""POST /v1/embed against the app: vectors known in closed form (tests/service/embedding_models.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import png_bytes, tiny_classifier_graph, tiny_metadata, write_model
from tests.service.embedding_models import (
    BLUE,
    GREEN,
    RED,
    colour_embedder_graph,
    expected_vector,
    solid,
    write_colour_embedder,
    write_fixed_box_detector,
)


@pytest.fixture
def embed_dir(tmp_path: Path) -> Path:
    write_colour_embedder(tmp_path / "colours.onnx")
    write_fixed_box_detector(tmp_path / "finder.onnx", (0, 0, 4, 8))  # the left half of an 8 x 8 input
    write_model(tmp_path / "tiny.onnx", tiny_classifier_graph(), tiny_metadata())
    return tmp_path


@pytest.fixture
def api(make_client: Callable[..., TestClient], embed_dir: Path, tmp_path: Path) -> TestClient:
    return make_client(embed_dir, workers=1, collections_dir=tmp_path / "collections")


def half_and_half(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = solid(right, (16, 16))
    image.paste(solid(left, (8, 16)), (0, 0))
    return image


@pytest.mark.parametrize(("colour", "size"), [(RED, (16, 16)), (GREEN, (5, 40)), (BLUE, (64, 64)),
                                              ((128, 64, 32), (9, 9))])
def test_embed_answers_the_model_vector_of_each_image(api: TestClient, colour: tuple[int, int, int],
                                                      size: tuple[int, int]) -> None:
    response = api.post("/v1/embed", files={"file": png_bytes(solid(colour, size))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "colours" and body["task"] == "embedding"
    assert body["dimension"] == 3 and body["normalized"] is False
    assert body["image"] == {"width": size[0], "height": size[1], "format": "PNG"}
    np.testing.assert_allclose(body["embedding"], expected_vector(colour), atol=1e-2)
    assert body["instances"] is None and body["detector"] is None


def test_several_images_answer_a_list_in_order(api: TestClient) -> None:
    files = [("file", png_bytes(solid(c))) for c in (RED, GREEN, BLUE)]
    answers = api.post("/v1/embed", files=files).json()
    assert [np.argmax(a["embedding"]) for a in answers] == [0, 1, 2]


@pytest.mark.parametrize(("left", "right"), [(RED, BLUE), (GREEN, RED), (BLUE, BLUE)])
def test_detector_crops_each_box_and_embeds_it(api: TestClient, left: tuple[int, int, int],
                                               right: tuple[int, int, int]) -> None:
    body = api.post("/v1/embed?detector=finder", files={"file": png_bytes(half_and_half(left, right))}).json()
    assert body["detector"] == "finder"
    whole = (expected_vector(left) + expected_vector(right)) / 2
    np.testing.assert_allclose(body["embedding"], whole, atol=1e-2)
    [instance] = body["instances"]
    assert instance["label"] == "thing" and instance["box"] == {"x1": 0.0, "y1": 0.0, "x2": 8.0, "y2": 16.0}
    np.testing.assert_allclose(instance["embedding"], expected_vector(left), atol=1e-2)


def test_detector_that_finds_nothing_gives_an_empty_instance_list(api: TestClient) -> None:
    body = api.post("/v1/embed?detector=finder&confidence=0.95", files={"file": png_bytes(solid(RED))}).json()
    assert body["instances"] == []
    np.testing.assert_allclose(body["embedding"], expected_vector(RED), atol=1e-2)


def test_detector_with_several_images_keeps_each_images_instances(api: TestClient) -> None:
    files = [("file", png_bytes(half_and_half(c, BLUE))) for c in (RED, GREEN)]
    answers = api.post("/v1/embed?detector=finder", files=files).json()
    assert [np.argmax(a["instances"][0]["embedding"]) for a in answers] == [0, 1]


@pytest.mark.parametrize(("query", "status", "code"), [
    ("model=tiny", 400, "wrong_task"),
    ("model=nothing", 404, "model_not_found"),
    ("detector=tiny", 400, "wrong_task"),
    ("detector=colours", 400, "wrong_task"),
    ("detector=nothing", 404, "model_not_found"),
    ("detector=finder&confidence=2", 422, None),
    ("topk=3", 400, "unknown_parameter"),
])
def test_bad_requests_say_what_is_wrong(api: TestClient, query: str, status: int, code: str | None) -> None:
    response = api.post(f"/v1/embed?{query}", files={"file": png_bytes(solid(RED))})
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


def test_an_empty_body_is_a_400(api: TestClient) -> None:
    response = api.post("/v1/embed", content=b"", headers={"Content-Type": "image/png"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "empty_body"


def test_a_described_onnx_file_is_an_embedding_model_too(make_client: Callable[..., TestClient],
                                                         tmp_path: Path) -> None:
    """Any ONNX file with a description beside it stating task embedding and an embedding output."""
    models = tmp_path / "models"
    models.mkdir()
    write_model(models / "features.onnx", colour_embedder_graph(), None)
    (models / "features.yaml").write_text(yaml.safe_dump({
        "task": "embedding",
        "input": {"height": 8, "width": 8, "channels": 3, "resize": "stretch", "mean": [0.5] * 3, "std": [0.5] * 3},
        "outputs": [{"name": "embedding", "layout": "batch,dimension", "kind": "embedding"}],
    }))
    client = make_client(models, workers=1, collections_dir=tmp_path / "collections")
    body = client.post("/v1/embed", files={"file": png_bytes(solid(GREEN))}).json()
    assert body["model"] == "features"
    np.testing.assert_allclose(body["embedding"], expected_vector(GREEN), atol=1e-2)


def test_models_list_shows_the_embedding_section(api: TestClient) -> None:
    [info] = [m for m in api.get("/v1/models").json()["models"] if m["name"] == "colours"]
    assert info["task"] == "embedding" and info["embedding"] == {"normalized": False, "threshold": 0.9}
    assert api.get("/v1/models").json()["defaults"]["embedding"] == "colours"
