"""HTTP tests of POST /v1/classify through the app: every input form and every error."""

import base64
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import png_bytes

BRIGHT = png_bytes(Image.new("RGB", (30, 20), (250, 250, 250)))
DARK = png_bytes(Image.new("L", (5, 5), 0), "JPEG")


def error(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


def test_multipart_upload(client: TestClient) -> None:
    response = client.post("/v1/classify", files={"file": ("x.png", BRIGHT, "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "tiny" and body["task"] == "classification"
    assert body["image"] == {"width": 30, "height": 20, "format": "PNG"}
    assert body["request_id"] == response.headers["x-request-id"]
    predictions = body["predictions"]
    assert [p["label"] for p in predictions] == ["bright", "mid", "dark"]
    assert [p["class_id"] for p in predictions] == [2, 1, 0]
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0)
    assert predictions[0]["score"] > 0.9


def test_raw_body_with_image_content_type(client: TestClient) -> None:
    response = client.post("/v1/classify?top_k=1", content=DARK, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == ["dark"]


@pytest.mark.parametrize("prefix", ["", "data:image/png;base64,"])
def test_json_base64_and_data_uri(client: TestClient, prefix: str) -> None:
    payload = {"image": prefix + base64.b64encode(BRIGHT).decode()}
    response = client.post("/v1/classify?top_k=2", json=payload)
    assert response.status_code == 200
    assert [p["label"] for p in response.json()["predictions"]] == ["bright", "mid"]


def test_top_k_larger_than_classes_returns_all(client: TestClient) -> None:
    response = client.post("/v1/classify?top_k=50", content=BRIGHT, headers={"content-type": "image/png"})
    assert len(response.json()["predictions"]) == 3


def test_explicit_model_and_request_id_echo(client: TestClient) -> None:
    response = client.post("/v1/classify?model=tiny", content=BRIGHT,
                           headers={"content-type": "image/png", "x-request-id": "abc-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "abc-123" == response.json()["request_id"]


def test_unsafe_request_id_is_replaced(client: TestClient) -> None:
    response = client.post("/v1/classify", content=BRIGHT,
                           headers={"content-type": "image/png", "x-request-id": "bad id\twith spaces"})
    assert response.headers["x-request-id"] != "bad id\twith spaces"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, (400, "empty_body")),
        ({"content": b""}, (400, "empty_body")),
        ({"files": {"file": ("x.png", b"", "image/png")}}, (400, "empty_body")),
        ({"files": {"other": ("x.png", BRIGHT, "image/png")}}, (400, "missing_file")),
        ({"json": {"image": ""}}, (400, "empty_body")),
        ({"json": {"picture": "abc"}}, (422, "invalid_parameter")),
        ({"json": {"image": "***not base64***"}}, (400, "invalid_base64")),
        ({"json": {"image": "data:image/png,rawdata"}}, (400, "invalid_base64")),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, (400, "invalid_json")),
        ({"content": b"plain words", "headers": {"content-type": "image/png"}}, (400, "not_an_image")),
        ({"content": BRIGHT[:60], "headers": {"content-type": "image/png"}}, (400, "corrupt_image")),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, (415, "unsupported_media_type")),
        ({"content": BRIGHT}, (415, "unsupported_media_type")),
        ({"content": png_bytes(Image.new("RGB", (8, 8)), "ICO"), "headers": {"content-type": "image/x-icon"}},
         (415, "unsupported_image_format")),
    ],
)
def test_bad_input_gets_a_4xx_envelope(client: TestClient, kwargs: dict, expected: tuple[int, str]) -> None:
    assert error(client.post("/v1/classify", **kwargs)) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("model=nope", (404, "model_not_found")),
        ("top_k=0", (422, "invalid_parameter")),
        ("top_k=abc", (422, "invalid_parameter")),
        ("top_k=100000", (422, "invalid_parameter")),
    ],
)
def test_bad_parameters(client: TestClient, query: str, expected: tuple[int, str]) -> None:
    response = client.post(f"/v1/classify?{query}", content=BRIGHT, headers={"content-type": "image/png"})
    assert error(response) == expected


def test_unknown_model_lists_the_available_ones(client: TestClient) -> None:
    response = client.post("/v1/classify?model=nope", content=BRIGHT, headers={"content-type": "image/png"})
    assert "tiny" in response.json()["error"]["message"]


def test_body_over_the_limit_is_413_from_the_header(make_client, tiny_model_dir) -> None:
    small = make_client(tiny_model_dir, max_body_bytes=1000)
    response = small.post("/v1/classify", content=b"\0" * 5000, headers={"content-type": "image/png"})
    assert error(response) == (413, "payload_too_large")


def test_streamed_body_over_the_limit_is_413(make_client, tiny_model_dir) -> None:
    small = make_client(tiny_model_dir, max_body_bytes=1000)

    def chunks():
        for _ in range(10):
            yield b"\0" * 500

    response = small.post("/v1/classify", content=chunks(), headers={"content-type": "image/png"})
    assert error(response) == (413, "payload_too_large")


def test_multipart_over_the_limit_is_413(make_client, tiny_model_dir) -> None:
    small = make_client(tiny_model_dir, max_body_bytes=1000)
    response = small.post("/v1/classify", files={"file": ("x.png", b"\0" * 5000, "image/png")})
    assert error(response) == (413, "payload_too_large")


def test_image_over_the_pixel_limit_is_413(make_client, tiny_model_dir) -> None:
    small = make_client(tiny_model_dir, max_image_pixels=100)
    response = small.post("/v1/classify", content=BRIGHT, headers={"content-type": "image/png"})
    assert error(response) == (413, "image_too_large")


def test_slow_request_is_504(make_client, tiny_model_dir, monkeypatch) -> None:
    import service.engine as common

    original = common.decode_and_prepare

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(common, "decode_and_prepare", slow)
    impatient = make_client(tiny_model_dir, request_timeout_s=0.05)
    response = impatient.post("/v1/classify", content=BRIGHT, headers={"content-type": "image/png"})
    assert error(response) == (504, "timeout")


def test_wrong_method_and_unknown_route(client: TestClient) -> None:
    assert error(client.get("/v1/classify")) == (405, "method_not_allowed")
    assert error(client.get("/v1/nothing-here")) == (404, "not_found")


def test_server_survives_a_burst_of_garbage(client: TestClient) -> None:
    for payload in (b"\xff\xd8\xff" + b"\0" * 100, b"\x89PNG\r\n\x1a\n" + b"\0" * 50, b"GIF89a", b"BM" + b"\1" * 40):
        status, _ = error(client.post("/v1/classify", content=payload, headers={"content-type": "image/png"}))
        assert 400 <= status < 500
    assert client.post("/v1/classify", content=BRIGHT, headers={"content-type": "image/png"}).status_code == 200
