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
