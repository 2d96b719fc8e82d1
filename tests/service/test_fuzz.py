"""Property-based fuzzing (hypothesis) of every route with real images, random parameters and random
bodies: every answer is 2xx or 4xx, and every 4xx is the documented error envelope. Never a 5xx."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import ErrorResponse
from tests.service.test_hardening import IMAGE_MODES, SCENE, bundle_dir, image_in_mode

ROUTES = {
    "/v1/classify": ["model", "top_k"],
    "/v1/detect": ["model", "confidence", "iou", "max_detections", "classes", "agnostic"],
    "/v1/segment": ["model", "confidence", "iou", "max_detections", "classes", "agnostic", "mask_format"],
    "/v1/keypoints": ["model", "confidence", "iou", "max_detections", "keypoint_confidence"],
}
MODELS = ["lenet5", "detector", "instance_seg", "segmenter", "keypoints", "nope", ""]
REAL_IMAGES = [SCENE] + [image_in_mode(mode, fmt) for mode, fmt in IMAGE_MODES]

values = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "0.5", "1e999", "nan", "true", "rle", "polygon", "png", "²", "٣",
                     "<script>", "circle,square", "1,²", "9" * 400]),
    st.text(max_size=20),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
names = st.one_of(st.sampled_from(sorted({n for ns in ROUTES.values() for n in ns} | {"modle", "topk"})),
                  st.text(min_size=1, max_size=8))
bodies = st.one_of(
    st.sampled_from(REAL_IMAGES).map(lambda b: ("image/png", b)),
    st.sampled_from(REAL_IMAGES).map(lambda b: ("application/json",
                                                json.dumps({"image": base64.b64encode(b).decode()}).encode())),
    st.sampled_from(REAL_IMAGES).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: ("image/png", b[:n]))),
    st.binary(max_size=300).map(lambda b: ("application/octet-stream", b)),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=20).map(lambda doc: ("application/json", json.dumps(doc).encode())),
    st.sampled_from(["text/plain", "multipart/form-data", "", "image/png"]).map(lambda t: (t, b"")),
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory):
    from service.app import create_app
    from service.config import Settings
    from tests.conftest import wait_until_loaded

    models = bundle_dir(tmp_path_factory.mktemp("bundle"))
    app = create_app(Settings(models_dir=models, providers=["CPUExecutionProvider"], access_log=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until_loaded(client)
        yield client


def assert_documented(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        ErrorResponse.model_validate(response.json())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(route=st.sampled_from(sorted(ROUTES)), model=st.sampled_from(MODELS),
       params=st.lists(st.tuples(names, values), max_size=4), body=bodies, multipart=st.booleans())
def test_every_route_answers_2xx_or_a_documented_4xx(fuzz_client: TestClient, route: str, model: str,
                                                     params: list[tuple[str, str]], body: tuple[str, bytes],
                                                     multipart: bool) -> None:
    query = ([("model", model)] if model else []) + params
    content_type, content = body
    if multipart:
        response = fuzz_client.post(route, params=query, files=[("file", ("f", content, content_type))])
    else:
        response = fuzz_client.post(route, params=query, content=content,
                                    headers={"content-type": content_type} if content_type else {})
    assert_documented(response)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/health/live", "/health/ready", "/v1/models", "/metrics", "/docs", "/openapi.json"]),
       params=st.lists(st.tuples(names, values), max_size=2))
def test_every_get_route_answers_2xx_or_a_documented_4xx(fuzz_client: TestClient, path: str,
                                                         params: list[tuple[str, str]]) -> None:
    assert_documented(fuzz_client.get(path, params=params))


def test_the_fuzzed_models_are_the_bundled_ones() -> None:
    assert all((Path(__file__).resolve().parents[2] / "models" / f"{m}.onnx").exists() for m in MODELS[:5])
