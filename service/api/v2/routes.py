"""The Open Inference Protocol's REST routes (KServe v2 / Triton) under /v2.

Errors leave in the protocol's shape, `{"error": "..."}`, with the same statuses as /v1 (400 bad tensors,
404 unknown model or version, 503 not ready or overloaded, 504 deadline). The event loop only reads the
body and awaits: decoding, checking and encoding tensors run in the worker pool, inference in the batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service import errors
from service.api.context import tag_model
from service.api.v2 import codec, inference
from service.api.v2.errors import ProtocolError, error_body, invalid_request
from service.api.v2.models import check_version, is_ready, model_metadata, servable_model
from service.api.v2.schemas import Liveness, ModelMetadataResponse, ModelReadiness, Readiness, ServerMetadataResponse
from service.api.v2.server import server_metadata, server_ready
from service.errors import StrideError
from service.registry import ModelEntry

T = TypeVar("T")

PROTOCOL_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ProtocolError, "description": "wrong input name, datatype, shape or size; bad binary data"},
    401: {"description": "API key missing or wrong (when STRIDE_API_KEY is set); Stride's error envelope"},
    404: {"model": ProtocolError, "description": "unknown model, output or version"},
    503: {"model": ProtocolError, "description": "not ready, model unavailable, overloaded or draining"},
    504: {"model": ProtocolError, "description": "the request timed out"},
}

INFER_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            codec.JSON_CONTENT_TYPE: {"schema": {"type": "object", "description": "an inference request "
                                                 "(docs/oip.md): id, parameters, inputs, outputs"}},
            codec.BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary", "description":
                                                   f"the JSON request, then binary tensor data; "
                                                   f"{codec.HEADER_LENGTH} gives the JSON's length"}},
        },
    }
}


class ProtocolRoute(APIRoute):
    """Answers StrideErrors and parameter errors of its routes in the protocol's `{"error": "..."}` shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                problems = "; ".join(str(e.get("msg")) for e in exc.errors())
                return protocol_error(request, invalid_request(f"invalid parameter: {problems}"))
            except StrideError as exc:
                return protocol_error(request, exc)

        return handle


def protocol_error(request: Request, error: StrideError) -> JSONResponse:
    request.app.state.metrics.errors.labels(error.code).inc()
    return JSONResponse(error_body(error).model_dump(), status_code=error.status, headers=error.headers)


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=ProtocolRoute,
                   responses=PROTOCOL_ERRORS)


@router.get("", response_model=ServerMetadataResponse, summary="Server name, version and protocol extensions")
async def get_server_metadata() -> ServerMetadataResponse:
    return server_metadata()


@router.get("/health/live", response_model=Liveness, summary="The process is up (open without an API key)")
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/health/ready", response_model=Readiness,
            summary="Ready to serve, as /health/ready (open without an API key); 503 otherwise")
async def ready(request: Request) -> JSONResponse:
    ok = server_ready(request.app.state)
    return JSONResponse(Readiness(ready=ok).model_dump(), status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "1"})


@router.get("/models/{name}", response_model=ModelMetadataResponse, summary="A model's inputs and outputs")
async def get_model_metadata(request: Request, name: str) -> ModelMetadataResponse:
    return _model_metadata(request, name, None)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadataResponse,
            summary="A model's inputs and outputs; the version must be the model's")
async def get_model_version_metadata(request: Request, name: str, version: str) -> ModelMetadataResponse:
    return _model_metadata(request, name, version)


@router.get("/models/{name}/ready", response_model=ModelReadiness, summary="The model is loaded and usable")
async def model_ready(request: Request, name: str) -> JSONResponse:
    return _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReadiness,
            summary="The model is loaded and usable; the version must be the model's")
async def model_version_ready(request: Request, name: str, version: str) -> JSONResponse:
    return _model_ready(request, name, version)


@router.post("/models/{name}/infer", response_model=None, openapi_extra=INFER_REQUEST_BODY,
             summary="Inference on tensors: JSON, or JSON then binary data (Triton's binary extension)")
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", response_model=None, openapi_extra=INFER_REQUEST_BODY,
             summary="Inference on tensors; the version must be the model's")
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


def _model_metadata(request: Request, name: str, version: str | None) -> ModelMetadataResponse:
    entry = servable_model(request.app.state.registry, name, version)
    tag_model(request, entry.name)
    return model_metadata(entry)


def _model_ready(request: Request, name: str, version: str | None) -> JSONResponse:
    entry = request.app.state.registry.get(name)
    check_version(entry, version)
    tag_model(request, entry.name)
    ok = is_ready(entry)
    return JSONResponse(ModelReadiness(name=entry.name, ready=ok).model_dump(), status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "1"})


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = request.app.state
    entry = servable_model(state.registry, name, version)
    tag_model(request, entry.name)
    assert entry.metadata is not None
    body = await request.body()
    header_length = request.headers.get(codec.HEADER_LENGTH)
    decoded, prepared = await in_worker(request, _decode_and_prepare, entry, body, header_length)
    outputs = await inference.infer(state, entry, prepared, state.settings.request_timeout_s)
    encoded = await in_worker(request, codec.encode_response, entry.name, entry.metadata.model_version, decoded,
                              outputs)
    headers = {} if encoded.header_length is None else {codec.HEADER_LENGTH: str(encoded.header_length)}
    return Response(encoded.body, media_type=encoded.content_type, headers=headers)


def _decode_and_prepare(entry: ModelEntry, body: bytes,
                        header_length: str | None) -> tuple[codec.DecodedRequest, inference.Prepared]:
    decoded = codec.decode_request(body, header_length)
    return decoded, inference.prepare(entry, decoded.inputs, decoded.requested)


async def in_worker(request: Request, fn: Callable[..., T], *args: Any) -> T:
    try:
        future = request.app.state.executor.submit(fn, *args)
    except RuntimeError as exc:  # the pool is shut down: the server is stopping
        raise errors.not_ready(f"shutting down ({exc})") from exc
    return await asyncio.wrap_future(future)
