"""Issue 16's reproductions against the app: no 500 from any input, strict parameters, safe messages,
security headers, 499 for a client that goes away, a JSON 500 that closes the connection, the drain."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import errors
from service.errors import public_message
from tests.conftest import BUNDLED_MODELS, png_bytes

SCENE = (BUNDLED_MODELS.parent / "docs" / "samples" / "scene.png").read_bytes()
DENSE_MODELS = ("lenet5", "detector", "instance_seg", "segmenter", "keypoints")


def bundle_dir(path: Path) -> Path:
    """A models directory with one grey classifier and the four dense models (links to the bundled files)."""
    path.mkdir(exist_ok=True)
    for name in DENSE_MODELS:
        link = path / f"{name}.onnx"
        if not link.exists():
            link.symlink_to(BUNDLED_MODELS / f"{name}.onnx")
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_dir(tmp_path_factory.mktemp("bundle"))


@pytest.fixture
def app_client(make_client, bundle: Path) -> TestClient:
    return make_client(bundle, access_log=False)


def image_in_mode(mode: str, fmt: str) -> bytes:
    """A 40x30 gradient converted to `mode` and saved as `fmt`."""
    ramp = np.linspace(0, 255, 40 * 30, dtype=np.float64).reshape(30, 40).astype(np.uint8)
    rgb = Image.fromarray(np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], axis=-1), "RGB")
    if mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 0
        return png_bytes(image, fmt, transparency=0)
    if mode == "I;16":
        return png_bytes(Image.fromarray(ramp.astype(np.uint16) * 257), fmt)  # uint16 arrays open as I;16
    return png_bytes(rgb.convert(mode), fmt)


IMAGE_MODES = [
    ("LAB", "TIFF"), ("YCbCr", "TIFF"), ("CMYK", "TIFF"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("I;16", "TIFF"),
    ("I", "TIFF"), ("F", "TIFF"), ("1", "PNG"), ("P", "PNG"), ("P+transparency", "PNG"), ("P+transparency", "GIF"),
    ("LA", "PNG"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("L", "BMP"),
]


@pytest.mark.parametrize(("mode", "fmt"), IMAGE_MODES)
@pytest.mark.parametrize("path", ["/v1/classify?model=lenet5", "/v1/detect?model=detector"])
def test_every_image_mode_is_answered(app_client: TestClient, path: str, mode: str, fmt: str) -> None:
    data = image_in_mode(mode, fmt)
    response = app_client.post(path, content=data, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text


DEEP_JSON = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONG_NUMBER = b'{"image": "x", "n": 1' + b"1" * 5000 + b"}"

# (path, query, body, content type) -> (status, error code); the empty case is a plain good request.
REPRODUCTIONS = [
    ("/v1/detect", "model=detector", SCENE, "image/png", 200, None),
    ("/v1/detect", "model=detector&classes=²", SCENE, "image/png", 422, "invalid_parameter"),
    ("/v1/detect", "model=detector&classes=٣", SCENE, "image/png", 422, "invalid_parameter"),
    ("/v1/segment", "model=instance_seg&classes=1,²", SCENE, "image/png", 422, "invalid_parameter"),
    ("/v1/classify", "", DEEP_JSON, "application/json", 400, "invalid_json"),
    ("/v1/classify", "", LONG_NUMBER, "application/json", 400, "invalid_json"),
    ("/v1/classify", "modle=lenet5", SCENE, "image/png", 400, "unknown_parameter"),
    ("/v1/classify", "model=lenet5&topk=3", SCENE, "image/png", 400, "unknown_parameter"),
    ("/v1/segment", "model=segmenter&mask_fromat=rle", SCENE, "image/png", 400, "unknown_parameter"),
    ("/v1/keypoints", "model=keypoints&top_k=1", SCENE, "image/png", 400, "unknown_parameter"),
    ("/v1/models", "verbose=1", b"", "", 400, "unknown_parameter"),
    ("/health/ready", "x=1", b"", "", 400, "unknown_parameter"),
]


@pytest.mark.parametrize(("path", "query", "body", "content_type", "status", "code"), REPRODUCTIONS)
def test_reproductions_get_client_errors(app_client: TestClient, path: str, query: str, body: bytes,
                                         content_type: str, status: int, code: str | None) -> None:
    url = f"{path}?{query}" if query else path
    if body:
        response = app_client.post(url, content=body, headers={"content-type": content_type})
    else:
        response = app_client.get(url)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code


def test_unknown_parameters_are_named_with_the_accepted_ones(app_client: TestClient) -> None:
    response = app_client.post("/v1/classify?modle=lenet5&topk=3&top_k=2", content=SCENE,
                               headers={"content-type": "image/png"})
    message = response.json()["error"]["message"]
    assert response.status_code == 400
    assert "'modle'" in message and "'topk'" in message
    assert "model" in message.split("accepts:")[1] and "top_k" in message.split("accepts:")[1]


def test_user_markup_is_never_echoed(app_client: TestClient) -> None:
    response = app_client.post("/v1/detect?model=detector&classes=<script>alert(1)</script>", content=SCENE,
                               headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert "<" not in response.text and ">" not in response.text


@pytest.mark.parametrize(("message", "expected"), [
    ("", ""),
    ("model 'x': cannot read /tmp/models/x.onnx: bad", "model 'x': cannot read x.onnx: bad"),
    ("no route /v1/foo/bar; see /docs", "no route /v1/foo/bar; see /docs"),
    ("'<script>alert(1)</script>' is neither", "'alert(1)' is neither"),
    ("a" * 5000, "a" * (errors.MAX_MESSAGE_CHARS - 3) + "..."),
])
def test_public_messages_drop_markup_and_machine_paths(message: str, expected: str) -> None:
    assert public_message(message) == expected


def test_a_broken_model_is_reported_without_its_absolute_path(make_client, tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    client = make_client(tmp_path)
    response = client.post("/v1/classify?model=broken", content=SCENE, headers={"content-type": "image/png"})
    assert response.status_code == 503
    assert str(tmp_path) not in response.text


@pytest.mark.parametrize("path", ["/health/live", "/v1/models", "/no/such/route", "/openapi.json", "/docs",
                                  "/docs/assets/swagger-ui.css"])
def test_every_response_says_nosniff_and_names_no_server(app_client: TestClient, path: str) -> None:
    response = app_client.get(path)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "server" not in response.headers


def test_docs_load_swagger_ui_from_the_service_itself(app_client: TestClient) -> None:
    page = app_client.get("/docs")
    assert page.status_code == 200
    sources = [src for src in page.text.split('"') if src.endswith((".js", ".css", ".png"))]
    assert sources and all(src.startswith("/docs/assets/") for src in sources), sources
    for src in sources:
        assert app_client.get(src).status_code == 200, src
    assert "cdn" not in page.text.lower()


def test_an_unexpected_exception_is_a_json_500_that_closes_the_connection(app_client: TestClient) -> None:
    def explode() -> None:
        raise RuntimeError("/work/secret/path <b>")

    app_client.app.add_api_route("/test-only/explode", explode)  # type: ignore[attr-defined]
    response = app_client.get("/test-only/explode", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal_error", "request_id": "boom-1",
                                         "message": "an internal error occurred; it has been logged"}}
    assert response.headers["connection"] == "close"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_client_that_disconnects_mid_upload_is_counted_as_499(app_client: TestClient) -> None:
    app = app_client.app
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": SCENE[:100], "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"",
             "root_path": "", "server": ("test", 80), "client": ("test", 1),
             "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(SCENE)).encode())]}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 499
    metrics = app_client.get("/metrics").text
    assert 'status="499"' in metrics
    assert 'stride_errors_total{code="internal_error"}' not in metrics


def test_answers_during_the_drain_say_connection_close(app_client: TestClient) -> None:
    assert "close" not in app_client.get("/health/live").headers.get("connection", "")
    app_client.app.state.draining = True  # type: ignore[attr-defined]
    try:
        for response in (app_client.get("/health/live"), app_client.get("/health/ready"),
                         app_client.post("/v1/classify", content=SCENE, headers={"content-type": "image/png"})):
            assert response.headers["connection"] == "close"
    finally:
        app_client.app.state.draining = False  # type: ignore[attr-defined]


@pytest.mark.parametrize(("images", "status"), [(1, 200), (2, 200), (3, 413)])
def test_the_pixel_budget_covers_all_images_of_a_request(make_client, bundle: Path, images: int,
                                                         status: int) -> None:
    client = make_client(bundle, max_request_pixels=2 * 100 * 100, access_log=False)
    image = png_bytes(Image.new("L", (100, 100), 200))
    files = [("file", (f"{i}.png", image, "image/png")) for i in range(images)]
    response = client.post("/v1/classify?model=lenet5", files=files)
    assert response.status_code == status, response.text
    if status == 413:
        assert response.json()["error"]["code"] == "request_too_large"


def test_a_large_image_on_a_semantic_model_is_answered_from_the_working_map(app_client: TestClient) -> None:
    """Consistency of the scaled answer: rle masks, png map and fractions agree at the original size."""
    big = Image.open(io.BytesIO(SCENE)).convert("RGB").resize((2000, 1500), Image.Resampling.NEAREST)
    data = png_bytes(big)
    rle_answer = app_client.post("/v1/segment?model=segmenter&mask_format=rle", content=data,
                                 headers={"content-type": "image/png"}).json()
    png_answer = app_client.post("/v1/segment?model=segmenter", content=data,
                                 headers={"content-type": "image/png"}).json()
    from service.tasks import rle

    ids = np.asarray(Image.open(io.BytesIO(__import__("base64").b64decode(png_answer["segmentation"]["data"]))))
    assert ids.shape == (1500, 2000)
    for mask in rle_answer["segmentation"]["masks"]:
        decoded = rle.decode(mask["rle"]["size"], mask["rle"]["counts"])
        assert np.array_equal(decoded, ids == mask["class_id"])
    for presence in rle_answer["classes"]:
        assert presence["pixel_fraction"] == pytest.approx(float((ids == presence["class_id"]).mean()), abs=1e-6)
    assert json.dumps(rle_answer).count("counts") == len(rle_answer["segmentation"]["masks"])
