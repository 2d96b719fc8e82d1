"""The Open Inference Protocol's REST routes (/v2) through the app: health, metadata, JSON and binary
tensors, the protocol's errors, and the same admission, deadline, metrics and API keys as /v1."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TINY_LABELS

HEADER = "Inference-Header-Content-Length"
INFER = "/v2/models/tiny/infer"


def tiny_reference(models_dir: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models_dir / "tiny.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch})[0]


def some_images(count: int) -> np.ndarray:
    return np.random.default_rng(count).uniform(-1, 1, (count, 1, 8, 8)).astype(np.float32)


def json_input(batch: np.ndarray, **changes: Any) -> dict[str, Any]:
    tensor = {"name": "images", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}
    return {"inputs": [tensor | changes]}


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(chunks), {HEADER: str(len(encoded)), "Content-Type": "application/octet-stream"}


def binary_request(batch: np.ndarray, **parameters: Any) -> tuple[bytes, dict[str, str]]:
    raw = batch.tobytes()
    tensor = {"name": "images", "datatype": "FP32", "shape": list(batch.shape),
              "parameters": {"binary_data_size": len(raw)}}
    return binary_body({"inputs": [tensor], "parameters": parameters}, raw)


def read_binary_answer(response: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    length = int(response.headers[HEADER])
    header, tail = json.loads(response.content[:length]), response.content[length:]
    arrays, offset = {}, 0
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        arrays[output["name"]] = np.frombuffer(tail[offset:offset + size], np.float32).reshape(output["shape"])
        offset += size
    assert offset == len(tail)
    return header, arrays


def test_server_metadata_health_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2").json() == {"name": "stride", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    expected = {"name": "tiny", "versions": ["test"], "platform": "onnxruntime_onnx",
                "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(TINY_LABELS)]}]}
    assert client.get("/v2/models/tiny").json() == expected
    assert client.get("/v2/models/tiny/versions/test").json() == expected
    assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    assert client.get("/v2/models/tiny/versions/test/ready").status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/v2/models/nope", 404, "no model named 'nope'"),
        ("/v2/models/nope/ready", 404, "no model named 'nope'"),
        ("/v2/models/tiny/versions/2", 404, "has no version '2'"),
        ("/v2/models/tiny/versions/2/ready", 404, "has no version '2'"),
        ("/v2/models/tiny/versions/%20/ready", 404, "has no version ' '"),
    ],
)
def test_unknown_model_or_version_is_404_in_the_protocol_shape(client: TestClient, path: str, status: int,
                                                               says: str) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and says in response.json()["error"]


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("path", [INFER, "/v2/models/tiny/versions/test/infer"])
def test_json_infer_equals_onnx_runtime(client: TestClient, tiny_model_dir: Path, batch_size: int,
                                        path: str) -> None:
    batch = some_images(batch_size)
    response = client.post(path, json=json_input(batch) | {"id": "r-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("tiny", "test", "r-1")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [batch_size, 3])
    got = np.array(output["data"], np.float32).reshape(output["shape"])
    assert np.abs(got - tiny_reference(tiny_model_dir, batch)).max() <= 1e-5


def test_json_infer_takes_nested_data(client: TestClient, tiny_model_dir: Path) -> None:
    batch = some_images(2)
    response = client.post(INFER, json=json_input(batch, data=batch.tolist()))
    got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
    assert np.abs(got - tiny_reference(tiny_model_dir, batch)).max() <= 1e-5


@pytest.mark.parametrize("batch_size", [1, 4])
def test_binary_infer_answers_binary_outputs(client: TestClient, tiny_model_dir: Path, batch_size: int) -> None:
    batch = some_images(batch_size)
    body, headers = binary_request(batch, binary_data_output=True)
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, arrays = read_binary_answer(response)
    assert "data" not in header["outputs"][0]
    assert np.abs(arrays["logits"] - tiny_reference(tiny_model_dir, batch)).max() <= 1e-5


@pytest.mark.parametrize(
    ("request_parameters", "output_parameters", "binary"),
    [
        ({}, None, False),  # nothing asked: JSON
        ({"binary_data_output": True}, None, True),
        ({}, {"binary_data": True}, True),
        ({"binary_data_output": True}, {"binary_data": False}, False),  # the output's own choice wins
    ],
)
def test_binary_outputs_when_asked(client: TestClient, request_parameters: dict, output_parameters: dict | None,
                                   binary: bool) -> None:
    body = json_input(some_images(1)) | {"parameters": request_parameters}
    if output_parameters is not None:
        body["outputs"] = [{"name": "logits", "parameters": output_parameters}]
    response = client.post(INFER, json=body)
    assert response.status_code == 200
    assert (HEADER in response.headers) is binary
    assert ("data" in json.loads(response.content[: int(response.headers.get(HEADER, len(response.content)))])
            ["outputs"][0]) is not binary


def tensor(**changes: Any) -> dict[str, Any]:
    return json_input(some_images(1), **changes)


def bytes_element(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


RAW = some_images(1).tobytes()
BINARY_INPUT = {"name": "images", "datatype": "FP32", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": 256}}

# (what is wrong, JSON body or (raw body, headers), a phrase the error must contain)
BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("no inputs", {"inputs": []}, "takes exactly one input"),
    ("two inputs", {"inputs": tensor()["inputs"] * 2}, "takes exactly one input"),
    ("wrong name", tensor(name="pixels"), "no input 'pixels'"),
    ("wrong datatype", tensor(datatype="INT32", data=[1] * 64), "is FP32, not INT32"),
    ("fractions in an integer tensor", tensor(datatype="INT32"), "holds fractional numbers"),
    ("unknown datatype", tensor(datatype="FLOAT"), "datatype 'FLOAT'"),
    ("wrong shape", tensor(shape=[1, 1, 4, 16]), "has shape [1, 1, 4, 16]"),
    ("wrong rank", tensor(shape=[64]), "has shape [64]"),
    ("negative dimension", tensor(shape=[-1, 1, 8, 8]), "whole number, 0 or more"),
    ("empty batch", tensor(shape=[0, 1, 8, 8], data=[]), "batch size 0"),
    ("too few values", tensor(data=[0.5] * 63), "has 63 values"),
    ("strings as numbers", tensor(data=["0.5"] * 64), "holds non-numbers"),
    ("ragged data", tensor(data=[[0.5] * 3, [0.5]]), "not a regular array"),
    ("no data", tensor(data=None), "has no data"),
    ("unknown output", tensor() | {"outputs": [{"name": "boxes"}]}, "no output 'boxes'"),
    ("classification extension", tensor() | {"outputs": [{"name": "logits", "parameters": {"classification": 2}}]},
     "classification extension"),
    ("shared memory", tensor(parameters={"shared_memory_region": "r"}), "shared-memory extension"),
    ("not JSON", (b"{not json", {}), "not valid"),
    ("inputs missing", {"id": "x"}, "inputs"),
    ("binary flag not a bool", tensor() | {"parameters": {"binary_data_output": "yes"}}, "true or false"),
    ("image bytes, not an image", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                               "data": ["\x89PNG"]}]}, "image"),
    ("image bytes, binary, truncated file",
     binary_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                              "parameters": {"binary_data_size": 8}}]}, bytes_element(b"\x89PNG")), "image"),
    ("image bytes, wrong shape", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 2],
                                              "data": ["a", "b"]}]}, "[N] or [N, 1]"),
    ("image bytes beside a tensor", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"]},
                                                {"name": "images", "datatype": "FP32", "shape": [1], "data": [0.5]}]},
     "exactly one BYTES input"),
    ("truncated BYTES element", binary_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                        "parameters": {"binary_data_size": 6}}]},
                                            bytes_element(b"\x89PNG")[:6]), "is truncated"),
    ("truncated binary body", binary_body({"inputs": [BINARY_INPUT]}, RAW[:100]), "binary data is truncated"),
    ("binary size off the tensor's", binary_body({"inputs": [BINARY_INPUT | {"parameters": {"binary_data_size": 128}}]},
                                                 RAW[:128]), "needs 256"),
    ("bytes no input declares", binary_body({"inputs": [BINARY_INPUT]}, RAW + b"xx"), "no input declares"),
    ("header length past the body", (json.dumps(tensor()).encode(), {HEADER: "100000"}), "the body has only"),
    ("header length not a number", (json.dumps(tensor()).encode(), {HEADER: "ten"}), "not a byte count"),
    ("binary data without the header", (json.dumps({"inputs": [BINARY_INPUT]}).encode() + RAW, {}), "not valid"),
    ("binary size not a count", tensor(data=None, parameters={"binary_data_size": "256"}), "byte count"),
    ("data and binary data", binary_body({"inputs": [BINARY_INPUT | {"data": [0.0] * 64}]}, RAW), "both"),
]


@pytest.mark.parametrize(("wrong", "request_body", "says"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_400_in_the_protocol_shape_and_the_server_carries_on(
        client: TestClient, tiny_model_dir: Path, wrong: str, request_body: Any, says: str) -> None:
    if isinstance(request_body, tuple):
        content, headers = request_body
        response = client.post(INFER, content=content, headers=headers)
    else:
        response = client.post(INFER, json=request_body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and says in response.json()["error"], response.json()
    batch = some_images(1)
    still = client.post(INFER, json=json_input(batch))
    assert still.status_code == 200
    got = np.array(still.json()["outputs"][0]["data"], np.float32).reshape(1, 3)
    assert np.abs(got - tiny_reference(tiny_model_dir, batch)).max() <= 1e-5


def test_a_full_model_answers_503_with_retry_after(make_client: Callable[..., TestClient],
                                                   tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, max_batch_size=1, max_queue=1)
    batcher = client.app.state.registry.entries["tiny"].batcher  # type: ignore[attr-defined]
    with batcher.admit():  # the one place is taken
        response = client.post(INFER, json=json_input(some_images(1)))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "requests in flight" in response.json()["error"]
    assert client.post(INFER, json=json_input(some_images(1))).status_code == 200
    too_big = client.post(INFER, json=json_input(some_images(2)))
    assert too_big.status_code == 400 and "split it" in too_big.json()["error"]


def test_the_request_deadline_answers_504(make_client: Callable[..., TestClient], tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, request_timeout_s=1e-9)
    response = client.post(INFER, json=json_input(some_images(1)))
    assert response.status_code == 504 and set(response.json()) == {"error"}


def test_api_key_guards_all_but_health(make_client: Callable[..., TestClient], tiny_model_dir: Path) -> None:
    client = make_client(tiny_model_dir, api_key="k1,k2")
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"X-API-Key": "k2"}).status_code == 200
    refused = client.post(INFER, json=json_input(some_images(1)))
    assert refused.status_code == 401 and set(refused.json()) == {"error"}  # the protocol's shape, even here
    answered = client.post(INFER, json=json_input(some_images(1)), headers={"Authorization": "Bearer k1"})
    assert answered.status_code == 200


def test_requests_are_counted_like_v1(client: TestClient) -> None:
    client.post(INFER, json=json_input(some_images(4)))
    client.post(INFER, json=tensor(name="pixels"))
    metrics = client.get("/metrics").text
    assert 'stride_requests_total{model="tiny",route="/v2/models/{name}/infer",status="200"} 1.0' in metrics
    assert 'stride_requests_total{model="tiny",route="/v2/models/{name}/infer",status="400"} 1.0' in metrics
    assert 'stride_errors_total{code="invalid_inference_request"} 1.0' in metrics
    assert 'stride_stage_duration_seconds_count{model="tiny",stage="inference"} 4.0' in metrics
    assert 'stride_batch_size_count{model="tiny"}' in metrics


def test_the_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
            "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"} <= set(paths)
