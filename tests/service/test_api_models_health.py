"""Health, readiness, model listing, metrics and the OpenAPI document, through the app."""

import shutil
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings
from tests.conftest import png_bytes, tiny_classifier_graph, tiny_metadata, write_model


def test_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").json()["status"] == "alive"
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "reason": None, "models": {"tiny": "ready"}}


def test_not_ready_while_loading(tiny_model_dir: Path, monkeypatch) -> None:
    import threading

    from service.registry import ModelRegistry

    gate = threading.Event()
    original = ModelRegistry.load_all

    def held(self: ModelRegistry) -> None:
        gate.wait(10)
        original(self)

    monkeypatch.setattr(ModelRegistry, "load_all", held)
    app = create_app(Settings(models_dir=tiny_model_dir, providers=["CPUExecutionProvider"]))
    with TestClient(app) as client:
        assert client.get("/health/live").status_code == 200
        response = client.get("/health/ready")
        assert response.status_code == 503 and "loading" in response.json()["reason"]
        assert client.get("/v1/models").json()["models"][0]["status"] == "loading"
        classify = client.post("/v1/classify", content=b"x", headers={"content-type": "image/png"})
        assert classify.status_code == 503 and classify.json()["error"]["code"] == "not_ready"
        gate.set()


def test_not_ready_without_models(make_client, tmp_path: Path) -> None:
    client = make_client(tmp_path)
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert "no *.onnx" in response.json()["reason"]
    classify = client.post("/v1/classify", content=png_bytes(Image.new("L", (2, 2))),
                           headers={"content-type": "image/png"})
    assert classify.status_code == 404 and classify.json()["error"]["code"] == "model_not_found"


def test_failed_model_is_reported_and_others_serve(make_client, tiny_model_dir: Path) -> None:
    (tiny_model_dir / "broken.onnx").write_bytes(b"this is not an onnx file")
    client = make_client(tiny_model_dir)
    assert client.get("/health/ready").status_code == 200
    broken = client.get("/v1/models/broken").json()
    assert broken["status"] == "failed" and "ONNX Runtime could not load" in broken["reason"]
    response = client.post("/v1/classify?model=broken", content=b"x", headers={"content-type": "image/png"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"


def test_require_all_models_fails_readiness(make_client, tiny_model_dir: Path) -> None:
    (tiny_model_dir / "broken.onnx").write_bytes(b"garbage")
    client = make_client(tiny_model_dir, require_all_models=True)
    response = client.get("/health/ready")
    assert response.status_code == 503 and "broken" in response.json()["reason"]


def test_model_listing_and_detail(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["defaults"]["classification"] == "tiny"
    assert listing["defaults"]["detection"] is None
    (model,) = listing["models"]
    assert model["name"] == "tiny" and model["status"] == "ready"
    assert model["provider"] == "CPUExecutionProvider"
    assert model["labels"] == ["dark", "mid", "bright"]
    assert model["input"]["height"] == 8 and model["input"]["channels"] == 1
    assert client.get("/v1/models/tiny").json() == model
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_default_model_setting_and_first_by_name(make_client, tiny_model_dir: Path) -> None:
    shutil.copy(tiny_model_dir / "tiny.onnx", tiny_model_dir / "another.onnx")
    by_name = make_client(tiny_model_dir)
    assert by_name.get("/v1/models").json()["defaults"]["classification"] == "another"
    configured = make_client(tiny_model_dir, default_models={"classification": "tiny"})
    image = png_bytes(Image.new("L", (4, 4), 255))
    response = configured.post("/v1/classify", content=image, headers={"content-type": "image/png"})
    assert response.json()["model"] == "tiny"


def test_task_mismatch_is_a_clear_400(make_client, tmp_path: Path) -> None:
    write_model(tmp_path / "seg.onnx", tiny_classifier_graph(), tiny_metadata(task="semantic_segmentation"))
    client = make_client(tmp_path, verify_golden=False)
    response = client.post("/v1/classify?model=seg", content=png_bytes(Image.new("L", (4, 4))),
                           headers={"content-type": "image/png"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_task"
    assert "semantic_segmentation" in response.json()["error"]["message"]


def test_fp16_model_on_cpu_is_unavailable_without_failing_readiness(make_client, tiny_model_dir: Path) -> None:
    write_model(tiny_model_dir / "half.onnx", tiny_classifier_graph(), tiny_metadata(precision="fp16"))
    client = make_client(tiny_model_dir, require_all_models=True)
    assert client.get("/health/ready").status_code == 200
    half = client.get("/v1/models/half").json()
    assert half["status"] == "unavailable" and "GPU" in half["reason"]
    response = client.post("/v1/classify?model=half", content=png_bytes(Image.new("L", (4, 4))),
                           headers={"content-type": "image/png"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"


def test_metrics_count_requests_inference_decodes_and_errors(client: TestClient) -> None:
    image = png_bytes(Image.new("L", (4, 4), 255))
    client.post("/v1/classify", content=image, headers={"content-type": "image/png"})
    client.post("/v1/classify", content=b"junk", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'stride_requests_total{model="tiny",route="/v1/classify",status="200"} 1.0' in text
    assert 'stride_requests_total{model="tiny",route="/v1/classify",status="400"} 1.0' in text
    assert 'stride_request_duration_seconds_bucket{le="0.001",model="tiny",route="/v1/classify",status="200"}' \
        in text
    assert 'stride_inference_duration_seconds_count{model="tiny"} 1.0' in text
    assert 'stride_images_decoded_total{format="PNG"} 1.0' in text
    assert 'stride_errors_total{code="not_an_image"} 1.0' in text
    assert 'stride_model_ready{model="tiny",provider="CPUExecutionProvider",task="classification"} 1.0' in text


def test_openapi_documents_the_error_envelope(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    classify = spec["paths"]["/v1/classify"]["post"]
    for status in ("400", "404", "413", "415", "422", "503", "504"):
        schema = classify["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorResponse")
    assert set(classify["requestBody"]["content"]) == {"multipart/form-data", "image/*", "application/json"}
    assert client.get("/docs").status_code == 200
