"""Shared route plumbing: the documented errors and request bodies, the JSON response with Server-Timing."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel, TypeAdapter

from service.errors import ErrorResponse
from service.pipeline import StageTimes

R = TypeVar("R")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "empty body, not an image, corrupt or truncated image"},
    401: {"model": ErrorResponse, "description": "API key missing or wrong (when STRIDE_API_KEY is set)"},
    408: {"model": ErrorResponse, "description": "the client stopped sending the body"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "body over the size limit or image over the pixel limit"},
    415: {"model": ErrorResponse, "description": "unsupported content type or image format"},
    422: {"model": ErrorResponse, "description": "invalid parameter"},
    503: {"model": ErrorResponse, "description": "not ready, model unavailable, overloaded or draining"},
    504: {"model": ErrorResponse, "description": "the request timed out"},
}

IMAGE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {
                               "type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "one image, or several (repeat the field) for a list answer"}}},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string",
                                                    "description": "base64 or data URI of the image"}}},
            },
        },
    }
}


def json_response(request: Request, model_name: str, body: BaseModel | list[Any], times: StageTimes) -> Response:
    """Serialise with pydantic's own encoder (timed as a stage) and attach `Server-Timing`."""
    started = time.perf_counter()
    content = body.model_dump_json().encode() if isinstance(body, BaseModel) else _LIST_ADAPTER.dump_json(body)
    elapsed = time.perf_counter() - started
    times.add("serialize", elapsed)
    request.app.state.metrics.stage_latency.labels(model_name, "serialize").observe(elapsed)
    return Response(content, media_type="application/json", headers={"Server-Timing": times.server_timing()})


_LIST_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[Any])
