"""API keys, CORS and the request-id header, through the app."""

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import png_bytes

IMAGE = png_bytes(Image.new("L", (8, 8), 255))


@pytest.fixture
def keyed(make_client, tiny_model_dir: Path):
    return make_client(tiny_model_dir, api_key=["first-key", "second-key"])


def classify(client, **headers: str):
    return client.post("/v1/classify", content=IMAGE, headers={"content-type": "image/png", **headers})


def test_no_key_is_401_in_the_envelope(keyed) -> None:
    response = classify(keyed)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-api-key": "first-key"}, 200),
        ({"x-api-key": "second-key"}, 200),
        ({"authorization": "Bearer second-key"}, 200),
        ({"authorization": "bearer first-key"}, 200),
        ({"x-api-key": "wrong"}, 401),
        ({"x-api-key": "first-key-but-longer"}, 401),
        ({"authorization": "Basic first-key"}, 401),
        ({"authorization": "Bearer "}, 401),
    ],
)
def test_keys_by_header_or_bearer(keyed, headers: dict, status: int) -> None:
    assert classify(keyed, **headers).status_code == status


def test_model_listing_needs_the_key_too(keyed) -> None:
    assert keyed.get("/v1/models").status_code == 401
    assert keyed.get("/v1/models", headers={"x-api-key": "first-key"}).status_code == 200


def test_health_docs_and_metrics_stay_open(keyed) -> None:
    for path in ("/health/live", "/health/ready", "/metrics", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_metrics_can_require_the_key(make_client, tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, api_key=["k"], metrics_require_key=True)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"x-api-key": "k"}).status_code == 200
    assert client.get("/health/ready").status_code == 200


def test_without_keys_everything_is_open(client) -> None:
    assert classify(client).status_code == 200


def test_api_keys_come_from_the_environment_comma_separated(monkeypatch) -> None:
    from service.config import Settings

    monkeypatch.setenv("STRIDE_API_KEY", "sekrit-one, sekrit-two")
    monkeypatch.setenv("STRIDE_CORS_ORIGINS", "https://x.example")
    settings = Settings()
    assert [key.get_secret_value() for key in settings.api_key] == ["sekrit-one", "sekrit-two"]
    assert "sekrit" not in repr(settings)
    assert settings.cors_origins == ["https://x.example"]


def test_cors_is_off_by_default(client) -> None:
    response = client.options("/v1/classify", headers={"origin": "https://app.example",
                                                       "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_configured_origins_before_auth(make_client, tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, cors_origins=["https://app.example"], api_key=["k"])
    preflight = client.options("/v1/classify", headers={"origin": "https://app.example",
                                                        "access-control-request-method": "POST",
                                                        "access-control-request-headers": "x-api-key"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = client.options("/v1/classify", headers={"origin": "https://evil.example",
                                                    "access-control-request-method": "POST"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    response = classify(client, origin="https://app.example", **{"x-api-key": "k"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_server_timing_header_names_every_stage(client) -> None:
    response = classify(client)
    stages = [part.split(";")[0].strip() for part in response.headers["server-timing"].split(",")]
    assert stages == ["decode", "preprocess", "queue", "inference", "postprocess", "serialize"]


def test_several_files_get_a_list_in_order(client) -> None:
    files = [("file", (f"{i}.png", png_bytes(Image.new("L", (8, 8), v)), "image/png"))
             for i, v in enumerate((255, 0, 128))]
    response = client.post("/v1/classify?top_k=1", files=files)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [item["predictions"][0]["label"] for item in body] == ["bright", "dark", "mid"]


def test_too_many_files_is_a_4xx(make_client, tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, max_images_per_request=2)
    files = [("file", (f"{i}.png", IMAGE, "image/png")) for i in range(3)]
    response = client.post("/v1/classify", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_multipart"


def test_one_bad_file_among_several_fails_the_request_with_a_4xx(client) -> None:
    files = [("file", ("a.png", IMAGE, "image/png")), ("file", ("b.png", b"junk", "image/png"))]
    response = client.post("/v1/classify", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "not_an_image"


def test_overloaded_model_answers_503_with_retry_after(make_client, tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, max_queue=1, max_batch_size=1)
    batcher = client.app.state.registry.get("tiny").batcher
    held = batcher.admit()  # another request holds the only place
    try:
        response = classify(client)
    finally:
        held.__exit__(None, None, None)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded" and response.headers["retry-after"] == "1"
    assert classify(client).status_code == 200
