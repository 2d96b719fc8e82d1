"""/v1/collections against the app: create, add, search, identify, delete, and every refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import png_bytes, tiny_classifier_graph, tiny_metadata, write_model
from tests.service.embedding_models import (
    BLUE,
    GREEN,
    RED,
    THRESHOLD,
    cosine,
    expected_vector,
    solid,
    write_colour_embedder,
)

YELLOW, ORANGE, NEAR_RED = (255, 255, 0), (255, 200, 0), (250, 20, 10)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    write_colour_embedder(folder / "colours.onnx")
    write_colour_embedder(folder / "colours2.onnx", threshold=0.5)
    write_model(folder / "tiny.onnx", tiny_classifier_graph(), tiny_metadata())
    return folder


@pytest.fixture
def api(make_client: Callable[..., TestClient], models: Path, tmp_path: Path) -> TestClient:
    return make_client(models, workers=1, collections_dir=tmp_path / "collections", watch_models=False)


def image(colour: tuple[int, int, int]) -> dict[str, bytes]:
    return {"file": png_bytes(solid(colour))}


def enrol(api: TestClient, name: str = "people") -> None:
    assert api.put(f"/v1/collections/{name}?model=colours").status_code == 201
    for item_id, colour in (("r", RED), ("g", GREEN), ("b", BLUE)):
        response = api.post(f"/v1/collections/{name}/items?id={item_id}&label={item_id.upper()}", files=image(colour))
        assert response.status_code == 201, response.text


def test_put_creates_once_and_is_idempotent_for_the_same_model(api: TestClient) -> None:
    first = api.put("/v1/collections/people?model=colours")
    assert first.status_code == 201
    assert first.json() | {"model_sha256": None} == {"name": "people", "model": "colours", "model_sha256": None,
                                                     "dimension": 3, "size": 0, "distance": "cosine",
                                                     "created": True}
    again = api.put("/v1/collections/people?model=colours")
    assert again.status_code == 200 and again.json()["created"] is False


def test_list_shows_each_collection_with_its_size(api: TestClient) -> None:
    assert api.get("/v1/collections").json() == {"backend": "local", "collections": []}
    enrol(api, "people")
    api.put("/v1/collections/empty?model=colours2")
    listed = {c["name"]: (c["model"], c["size"]) for c in api.get("/v1/collections").json()["collections"]}
    assert listed == {"people": ("colours", 3), "empty": ("colours2", 0)}
    assert api.get("/v1/collections/people").json()["size"] == 3


@pytest.mark.parametrize(("colour", "expected"), [(NEAR_RED, ["r", "g", "b"]), ((20, 250, 60), ["g", "b", "r"]),
                                                  ((60, 20, 240), ["b", "r", "g"])])
def test_search_answers_matches_best_first(api: TestClient, colour: tuple[int, int, int],
                                           expected: list[str]) -> None:
    enrol(api)
    body = api.post("/v1/collections/people/search?top_k=3", files=image(colour)).json()
    assert [m["id"] for m in body["matches"]] == expected
    assert body["matches"][0]["label"] == expected[0].upper()
    enrolled = {"r": RED, "g": GREEN, "b": BLUE}
    exact = [cosine(expected_vector(colour), expected_vector(enrolled[i])) for i in expected]
    assert [m["score"] for m in body["matches"]] == pytest.approx(exact, abs=0.01)
    assert len(api.post("/v1/collections/people/search?top_k=1", files=image(colour)).json()["matches"]) == 1


def test_searching_an_empty_collection_answers_no_matches(api: TestClient) -> None:
    api.put("/v1/collections/people?model=colours")
    response = api.post("/v1/collections/people/search", files=image(RED))
    assert response.status_code == 200 and response.json()["matches"] == []
    identified = api.post("/v1/collections/people/identify", files=image(RED)).json()
    assert identified["match"] is None


@pytest.mark.parametrize(("colour", "threshold", "expected"), [
    (NEAR_RED, None, "r"),  # cosine ~0.9997 > the model's 0.9
    (YELLOW, None, None),  # [1, 1, -1]: cosine 1/3 to red and to green, under 0.9: unknown
    (ORANGE, 0.5, "r"),  # [1, 0.57, -1]: cosine 0.54 to red, 0.22 to green: above 0.5
    (ORANGE, 0.6, None),
    (NEAR_RED, 0.99999, None),
])
def test_identify_answers_the_match_above_the_threshold_or_null(api: TestClient, colour: tuple[int, int, int],
                                                                threshold: float | None, expected: str | None) -> None:
    enrol(api)
    query = "" if threshold is None else f"?threshold={threshold}"
    body = api.post(f"/v1/collections/people/identify{query}", files=image(colour)).json()
    assert body["threshold"] == (THRESHOLD if threshold is None else threshold)
    if expected is None:
        assert body["match"] is None
    else:
        assert body["match"]["id"] == expected


def test_items_carry_their_metadata(api: TestClient) -> None:
    api.put("/v1/collections/people?model=colours")
    meta = {"team": "blue", "badge": 7}
    added = api.post(f"/v1/collections/people/items?id=ann&metadata={json.dumps(meta)}", files=image(RED))
    assert added.json()["metadata"] == meta and added.json()["label"] is None
    [match] = api.post("/v1/collections/people/search", files=image(RED)).json()["matches"]
    assert match["metadata"] == meta


def test_duplicate_ids_answer_409_unless_replace(api: TestClient) -> None:
    enrol(api)
    again = api.post("/v1/collections/people/items?id=r", files=image(YELLOW))
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_id"
    assert "replace=true" in again.json()["error"]["message"]
    replaced = api.post("/v1/collections/people/items?id=r&label=Y&replace=true", files=image(YELLOW))
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True
    assert api.get("/v1/collections/people").json()["size"] == 3
    top = api.post("/v1/collections/people/search?top_k=1", files=image(YELLOW)).json()["matches"][0]
    assert (top["id"], top["label"]) == ("r", "Y")


def test_deleting_an_item_and_a_collection(api: TestClient) -> None:
    enrol(api)
    assert api.delete("/v1/collections/people/items/r").json() == {"collection": "people", "id": "r"}
    missing = api.delete("/v1/collections/people/items/r")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "item_not_found"
    left = api.post("/v1/collections/people/search", files=image(RED)).json()["matches"]
    assert [m["id"] for m in left] == ["b", "g"]  # equal scores (-1/3 each) go by id
    assert api.delete("/v1/collections/people").json() == {"collection": "people", "id": None}
    assert api.get("/v1/collections").json()["collections"] == []


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/v1/collections/nobody"), ("delete", "/v1/collections/nobody"),
    ("post", "/v1/collections/nobody/items?id=a"), ("post", "/v1/collections/nobody/search"),
    ("post", "/v1/collections/nobody/identify"), ("delete", "/v1/collections/nobody/items/a"),
])
def test_unknown_collections_answer_404(api: TestClient, method: str, path: str) -> None:
    kwargs = {"files": image(RED)} if method == "post" else {}
    response = getattr(api, method)(path, **kwargs)
    assert response.status_code == 404 and response.json()["error"]["code"] == "collection_not_found"
    assert "PUT /v1/collections/nobody" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/collections/people/items?id=x&model=colours2",
                                  "/v1/collections/people/search?model=colours2",
                                  "/v1/collections/people/identify?model=colours2"])
def test_asking_for_another_model_answers_409(api: TestClient, path: str) -> None:
    enrol(api)
    response = api.post(path, files=image(RED))
    assert response.status_code == 409 and response.json()["error"]["code"] == "model_mismatch"
    assert "'colours'" in response.json()["error"]["message"]


def test_put_with_another_model_answers_409(api: TestClient) -> None:
    enrol(api)
    response = api.put("/v1/collections/people?model=colours2")
    assert response.status_code == 409 and response.json()["error"]["code"] == "collection_exists"
    assert "DELETE" in response.json()["error"]["message"]


def test_a_changed_model_file_answers_409_with_what_to_do(api: TestClient, models: Path) -> None:
    enrol(api)
    write_colour_embedder(models / "colours.onnx", threshold=0.8)  # same name, other bytes
    assert api.post("/v1/models/colours/reload").status_code == 200  # the new version now serves
    for response in (api.post("/v1/collections/people/search", files=image(RED)),
                     api.post("/v1/collections/people/items?id=x", files=image(RED)),
                     api.put("/v1/collections/people?model=colours")):
        assert response.status_code == 409 and response.json()["error"]["code"] == "model_changed"
        assert "DELETE /v1/collections/people" in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("put", "/v1/collections/people?model=tiny", 400, "wrong_task"),
    ("put", "/v1/collections/people?model=nothing", 404, "model_not_found"),
    ("put", "/v1/collections/bad.name?model=colours", 422, "invalid_parameter"),
    ("post", "/v1/collections/people/items", 422, None),  # no id
    ("post", "/v1/collections/people/items?id=a&metadata=[1]", 422, "invalid_parameter"),
    ("post", "/v1/collections/people/items?id=a&metadata={oops", 422, "invalid_parameter"),
    ("post", "/v1/collections/people/search?top_k=0", 422, None),
    ("post", "/v1/collections/people/identify?threshold=2", 422, None),
    ("post", "/v1/collections/people/search?k=3", 400, "unknown_parameter"),
])
def test_bad_input_answers_4xx_saying_what_is_wrong(api: TestClient, method: str, path: str, status: int,
                                                    code: str | None) -> None:
    api.put("/v1/collections/people?model=colours")
    kwargs = {"files": image(RED)} if method == "post" else {}
    response = getattr(api, method)(path, **kwargs)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


def test_items_take_one_image(api: TestClient) -> None:
    api.put("/v1/collections/people?model=colours")
    response = api.post("/v1/collections/people/items?id=a", files=[("file", png_bytes(solid(RED)))] * 2)
    assert response.status_code in (400, 413, 422) and "error" in response.json()


def test_search_with_several_images_answers_one_list_entry_each(api: TestClient) -> None:
    enrol(api)
    files = [("file", png_bytes(solid(c))) for c in (BLUE, RED)]
    answers = api.post("/v1/collections/people/search?top_k=1", files=files).json()
    assert [a["matches"][0]["id"] for a in answers] == ["b", "r"]


def test_local_mode_with_several_workers_answers_503_with_the_reason(make_client: Callable[..., TestClient],
                                                                     models: Path, tmp_path: Path) -> None:
    client = make_client(models, workers=2, collections_dir=tmp_path / "collections")
    response = client.get("/v1/collections")
    assert response.status_code == 503 and response.json()["error"]["code"] == "collections_unavailable"
    assert "STRIDE_QDRANT_URL" in response.json()["error"]["message"]
    assert client.post("/v1/embed", files=image(RED)).status_code == 200  # inference is unaffected
