"""Triton's own clients (tritonclient HTTP and gRPC) against a real `python -m service` serving the bundled
lenet5 (a classifier) and detector: every answer equals ONNX Runtime run in-process on the same tensor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import BUNDLED_MODELS
from tests.service.test_server_process import free_port

MODELS = {"lenet5": (1, 32, 32), "detector": (3, 128, 128)}
TOLERANCE = 1e-5


@dataclass
class Server:
    http_url: str  # host:port, as tritonclient takes it
    grpc_url: str
    process: subprocess.Popen


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("oip-models")
    for name in MODELS:
        (models / f"{name}.onnx").symlink_to(BUNDLED_MODELS / f"{name}.onnx")
    http_port, grpc_port = free_port(), free_port()
    environment = os.environ | {"STRIDE_PORT": str(http_port), "STRIDE_GRPC_PORT": str(grpc_port),
                                "STRIDE_HOST": "127.0.0.1", "STRIDE_MODELS_DIR": str(models),
                                "STRIDE_PROVIDERS": "CPUExecutionProvider", "STRIDE_DRAIN_DELAY_S": "0",
                                "STRIDE_ACCESS_LOG": "false"}
    process = subprocess.Popen([sys.executable, "-m", "service"], env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if http_status(f"http://127.0.0.1:{http_port}/v2/health/ready") == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not become ready:\n{process.communicate()[0]}")
        time.sleep(0.1)
    try:
        yield Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", process)
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def tensor(model: str, batch: int) -> np.ndarray:
    return np.random.default_rng(batch).uniform(-1, 1, (batch, *MODELS[model])).astype(np.float32)


def onnx_runtime(model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(BUNDLED_MODELS / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"images": batch}), strict=True))


def assert_equal_to_onnx_runtime(model: str, batch: np.ndarray, result: object) -> None:
    for name, expected in onnx_runtime(model, batch).items():
        got = result.as_numpy(name)  # type: ignore[attr-defined]
        assert got is not None and got.shape == expected.shape, name
        assert np.abs(got - expected).max() <= TOLERANCE, name


def test_health_and_metadata_over_http_and_grpc(http: httpclient.InferenceServerClient,
                                                grpc_client: grpcclient.InferenceServerClient) -> None:
    for client in (http, grpc_client):
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("lenet5") and client.is_model_ready("detector")
    metadata = http.get_model_metadata("detector")
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 128, 128]}]
    assert [o["name"] for o in metadata["outputs"]] == ["boxes", "scores"]
    over_grpc = grpc_client.get_model_metadata("lenet5")
    assert [list(t.shape) for t in over_grpc.inputs] == [[-1, 1, 32, 32]]
    assert grpc_client.get_server_metadata().extensions == ["binary_tensor_data"]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_infer_equals_onnx_runtime(http: httpclient.InferenceServerClient, model: str, batch_size: int,
                                        binary: bool) -> None:
    batch = tensor(model, batch_size)
    given = httpclient.InferInput("images", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in onnx_runtime(model, batch)]
    assert_equal_to_onnx_runtime(model, batch, http.infer(model, [given], outputs=outputs))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("batch_size", [1, 4])
def test_grpc_infer_equals_onnx_runtime(grpc_client: grpcclient.InferenceServerClient, model: str,
                                        batch_size: int) -> None:
    batch = tensor(model, batch_size)
    given = grpcclient.InferInput("images", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch)
    assert_equal_to_onnx_runtime(model, batch, grpc_client.infer(model, [given]))


def http_input(shape: list[int], datatype: str = "FP32", name: str = "images") -> httpclient.InferInput:
    given = httpclient.InferInput(name, shape, datatype)
    dtype = {"FP32": np.float32, "INT32": np.int32, "FP64": np.float64}[datatype]
    given.set_data_from_numpy(np.zeros(shape, dtype))
    return given


# (what is wrong, model, inputs, outputs, a phrase the error must contain)
BAD_INFERS = [
    ("wrong shape", "lenet5", lambda m: [m([1, 1, 28, 28])], None, "has shape [1, 1, 28, 28]"),
    ("wrong datatype", "lenet5", lambda m: [m([1, 1, 32, 32], "INT32")], None, "is FP32, not INT32"),
    ("wrong name", "detector", lambda m: [m([1, 3, 128, 128], name="pixels")], None, "no input 'pixels'"),
    ("unknown output", "detector", lambda m: [m([1, 3, 128, 128])], "masks", "no output 'masks'"),
    ("unknown model", "nope", lambda m: [m([1, 1, 32, 32])], None, "no model named 'nope'"),
]


@pytest.mark.parametrize(("wrong", "model", "inputs", "output", "says"), BAD_INFERS, ids=[b[0] for b in BAD_INFERS])
def test_bad_requests_get_the_protocol_error_over_http_and_grpc(
        http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient, wrong: str,
        model: str, inputs: object, output: str | None, says: str) -> None:
    expected_http = "404" if model == "nope" else "400"
    expected_grpc = "StatusCode.NOT_FOUND" if model == "nope" else "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as over_http:
        http.infer(model, inputs(http_input),  # type: ignore[operator]
                   outputs=[httpclient.InferRequestedOutput(output)] if output else None)
    assert over_http.value.status() == expected_http and says in over_http.value.message()

    def grpc_input(shape: list[int], datatype: str = "FP32", name: str = "images") -> grpcclient.InferInput:
        given = grpcclient.InferInput(name, shape, datatype)
        given.set_data_from_numpy(np.zeros(shape, {"FP32": np.float32, "INT32": np.int32}[datatype]))
        return given

    with pytest.raises(InferenceServerException) as over_grpc:
        grpc_client.infer(model, inputs(grpc_input),  # type: ignore[operator]
                          outputs=[grpcclient.InferRequestedOutput(output)] if output else None)
    assert over_grpc.value.status() == expected_grpc and says in over_grpc.value.message()


def post_raw(server: Server, body: bytes, header_length: int) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/lenet5/infer", data=body,
                                     headers={"Inference-Header-Content-Length": str(header_length),
                                              "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def binary_header(size: int) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 32, 32],
                                   "parameters": {"binary_data_size": size}}]}).encode()


@pytest.mark.parametrize(
    ("wrong", "body", "header_length", "says"),
    [
        ("truncated binary body", binary_header(4096) + bytes(1000), len(binary_header(4096)), "truncated"),
        ("header length past the body", binary_header(4096) + bytes(4096), 10**6, "the body has only"),
        ("empty body", b"", 0, "not valid"),
    ],
)
def test_malformed_binary_bodies_get_400_then_the_server_still_serves(
        server: Server, http: httpclient.InferenceServerClient, wrong: str, body: bytes, header_length: int,
        says: str) -> None:
    status, answer = post_raw(server, body, header_length)
    assert status == 400 and set(answer) == {"error"} and says in answer["error"], answer
    batch = tensor("lenet5", 1)
    given = httpclient.InferInput("images", list(batch.shape), "FP32")
    given.set_data_from_numpy(batch)
    assert_equal_to_onnx_runtime("lenet5", batch, http.infer("lenet5", [given]))
    assert server.process.poll() is None


SCENE = BUNDLED_MODELS.parent / "docs" / "samples" / "scene.png"


def image_input(client_module, images: list[bytes]):  # type: ignore[no-untyped-def]
    given = client_module.InferInput("image", [len(images)], "BYTES")
    given.set_data_from_numpy(np.array(images, dtype=object))
    return given


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_encoded_image_gives_the_v1_answer(server: Server, http: httpclient.InferenceServerClient,
                                              grpc_client: grpcclient.InferenceServerClient, protocol: str) -> None:
    """A BYTES input holding a PNG takes the /v1 path: the 'answer' output is /v1/detect's JSON, per image."""
    picture = SCENE.read_bytes()
    request = urllib.request.Request(f"http://{server.http_url}/v1/detect?model=detector", data=picture,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        expected = json.load(response)
    client, module = (http, httpclient) if protocol == "http" else (grpc_client, grpcclient)
    result = client.infer("detector", [image_input(module, [picture, picture])])
    answers = [json.loads(element) for element in result.as_numpy("answer")]
    assert len(answers) == 2 and expected["detections"]
    for answer in answers:
        assert answer["detections"] == expected["detections"]
        assert answer["image"] == expected["image"] and answer["model"] == "detector"
