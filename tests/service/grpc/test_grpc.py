"""`inference.GRPCInferenceService` through the app's own gRPC server (started by the lifespan): health,
metadata, raw and typed tensors, the status codes of bad requests, API keys, admission and deadlines."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

Stub = pb_grpc.GRPCInferenceServiceStub


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


Serve = Callable[..., tuple[Stub, TestClient]]


@pytest.fixture
def serve(make_client: Callable[..., TestClient], tiny_model_dir: Path) -> Iterator[Serve]:
    """serve(**settings) -> (a stub talking to a started app's gRPC port, that app's HTTP client)."""
    channels: list[grpc.Channel] = []

    def start(**settings: Any) -> tuple[Stub, TestClient]:
        port = free_port()
        client = make_client(tiny_model_dir, grpc_port=port, **settings)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return Stub(channel), client

    yield start
    for channel in channels:
        channel.close()


def images(count: int) -> np.ndarray:
    return np.random.default_rng(count).uniform(-1, 1, (count, 1, 8, 8)).astype(np.float32)


def reference(models_dir: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(models_dir / "tiny.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch})[0]


def raw_request(batch: np.ndarray, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny", id="g-1")
    request.inputs.add(name="images", datatype="FP32", shape=list(batch.shape))
    request.raw_input_contents.append(batch.tobytes())
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def logits(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(output.shape))


def test_health_and_metadata(serve: Serve) -> None:
    stub, _ = serve()
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="tiny", version="test")).ready
    server = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (server.name, list(server.extensions)) == ("stride", ["binary_tensor_data"])
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"))
    assert (model.name, list(model.versions), model.platform) == ("tiny", ["test"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("images", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("logits", "FP32", [-1, 3])]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_raw_and_typed_inputs_equal_onnx_runtime(serve: Serve, tiny_model_dir: Path,
                                                 batch_size: int) -> None:
    stub, _ = serve()
    batch = images(batch_size)
    response = stub.ModelInfer(raw_request(batch))
    assert (response.model_name, response.model_version, response.id) == ("tiny", "test", "g-1")
    assert np.abs(logits(response) - reference(tiny_model_dir, batch)).max() <= 1e-5
    typed = pb.ModelInferRequest(model_name="tiny", model_version="test")
    typed.inputs.add(name="images", datatype="FP32", shape=list(batch.shape)).contents.fp32_contents.extend(
        batch.ravel().tolist())
    assert np.abs(logits(stub.ModelInfer(typed)) - reference(tiny_model_dir, batch)).max() <= 1e-5


def with_input(**changes: Any) -> pb.ModelInferRequest:
    request = raw_request(images(1))
    for name, value in changes.items():
        if name == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        else:
            setattr(request.inputs[0], name, value)
    return request


def with_raw(raw: list[bytes]) -> pb.ModelInferRequest:
    request = raw_request(images(1))
    del request.raw_input_contents[:]
    request.raw_input_contents.extend(raw)
    return request


def with_output(name: str, **parameters: pb.InferParameter) -> pb.ModelInferRequest:
    request = raw_request(images(1))
    output = request.outputs.add(name=name)
    for key, value in parameters.items():
        output.parameters[key].CopyFrom(value)
    return request


def empty_batch() -> pb.ModelInferRequest:
    request = with_raw([b""])
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([0, 1, 8, 8])
    return request


def fp16_typed() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="images", datatype="FP16", shape=[1, 1, 8, 8])
    return request


def image_request(data: bytes = b"\x89PNG") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
    return request


# (what is wrong, the request, the code, a phrase the details must contain)
BAD_CALLS: list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]] = [
    ("unknown model", raw_request(images(1), model_name="nope"), grpc.StatusCode.NOT_FOUND, "no model named"),
    ("unknown version", raw_request(images(1), model_version="7"), grpc.StatusCode.NOT_FOUND, "no version '7'"),
    ("no inputs", pb.ModelInferRequest(model_name="tiny"), grpc.StatusCode.INVALID_ARGUMENT, "exactly one input"),
    ("wrong name", with_input(name="pixels"), grpc.StatusCode.INVALID_ARGUMENT, "no input 'pixels'"),
    ("wrong datatype", with_input(datatype="INT32"), grpc.StatusCode.INVALID_ARGUMENT, "is FP32, not INT32"),
    ("size off the datatype's", with_input(datatype="FP64"), grpc.StatusCode.INVALID_ARGUMENT, "needs 512"),
    ("wrong shape", with_input(shape=[1, 1, 16, 4]), grpc.StatusCode.INVALID_ARGUMENT, "has shape [1, 1, 16, 4]"),
    ("no raw bytes", with_raw([b""]), grpc.StatusCode.INVALID_ARGUMENT, "needs 256"),
    ("empty batch", empty_batch(), grpc.StatusCode.INVALID_ARGUMENT, "batch size 0"),
    ("FP16 as typed contents", fp16_typed(), grpc.StatusCode.INVALID_ARGUMENT, "only as raw_input_contents"),
    ("raw too short", with_raw([images(1).tobytes()[:100]]), grpc.StatusCode.INVALID_ARGUMENT, "has 100 bytes"),
    ("raw count off", with_raw([b"", b""]), grpc.StatusCode.INVALID_ARGUMENT, "2 raw_input_contents"),
    ("unknown output", with_output("boxes"), grpc.StatusCode.INVALID_ARGUMENT, "no output 'boxes'"),
    ("classification", with_output("logits", classification=pb.InferParameter(int64_param=2)),
     grpc.StatusCode.INVALID_ARGUMENT, "classification extension"),
    ("a corrupt image", image_request(), grpc.StatusCode.INVALID_ARGUMENT, "image"),
]


@pytest.mark.parametrize(("wrong", "call", "code", "says"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_get_their_status_and_the_server_carries_on(serve: Serve, tiny_model_dir: Path,
                                                              wrong: str, call: pb.ModelInferRequest,
                                                              code: grpc.StatusCode, says: str) -> None:
    stub, _ = serve()
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(call)
    assert failure.value.code() == code and says in failure.value.details(), failure.value.details()
    batch = images(1)
    assert np.abs(logits(stub.ModelInfer(raw_request(batch))) - reference(tiny_model_dir, batch)).max() <= 1e-5


@pytest.mark.parametrize(
    ("metadata", "allowed"),
    [
        ((), False),
        ((("x-api-key", "wrong"),), False),
        ((("x-api-key", "k2"),), True),
        ((("authorization", "Bearer k1"),), True),
        ((("authorization", "Basic k1"),), False),
    ],
)
def test_api_keys_guard_all_but_health(serve: Serve, metadata: tuple, allowed: bool) -> None:
    stub, _ = serve(api_key="k1,k2")
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    calls = [lambda: stub.ModelInfer(raw_request(images(1)), metadata=metadata),
             lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="tiny"), metadata=metadata),
             lambda: stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata)]
    for call in calls:
        if allowed:
            call()
        else:
            with pytest.raises(grpc.RpcError) as failure:
                call()
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_full_model_is_unavailable(serve: Serve) -> None:
    stub, client = serve(max_batch_size=1, max_queue=1)
    request = raw_request(images(1))
    batcher = client.app.state.registry.entries["tiny"].batcher  # type: ignore[attr-defined]
    with batcher.admit(), pytest.raises(grpc.RpcError) as failure:  # the one place is taken
        stub.ModelInfer(request)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stub.ModelInfer(request).outputs[0].name == "logits"


def test_the_deadline_is_deadline_exceeded(serve: Serve) -> None:
    stub, _ = serve(request_timeout_s=1e-9)
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(raw_request(images(1)))
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_calls_are_counted_like_http(serve: Serve) -> None:
    stub, client = serve()
    stub.ModelInfer(raw_request(images(2)))
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(with_input(name="pixels"))
    metrics = client.get("/metrics").text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert f'stride_requests_total{{model="tiny",route="{route}",status="200"}} 1.0' in metrics
    assert f'stride_requests_total{{model="tiny",route="{route}",status="400"}} 1.0' in metrics
    assert 'stride_stage_duration_seconds_count{model="tiny",stage="queue"} 2.0' in metrics


def test_an_encoded_image_answers_the_classify_json(serve: Serve) -> None:
    """A BYTES input with a PNG takes the /v1 path; the 'answer' output is /v1/classify's JSON."""
    import json

    from PIL import Image

    from tests.conftest import png_bytes

    stub, _ = serve()
    response = stub.ModelInfer(image_request(png_bytes(Image.new("L", (40, 30), 250))))
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("answer", "BYTES", [1])
    raw = response.raw_output_contents[0]
    answer = json.loads(raw[4:4 + int.from_bytes(raw[:4], "little")])
    assert answer["predictions"][0]["label"] == "bright" and answer["image"]["width"] == 40
