"""Shared route plumbing: the documented errors and request bodies, the JSON response with Server-Timing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request, Response
from pydantic import BaseModel, TypeAdapter

from service.api import annotate
from service.api.inputs import read_image_sources
from service.engine import Answer
from service.errors import ErrorResponse
from service.families import Query
from service.pipeline import StageTimes
from service.registry import ModelEntry

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
                               "type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"},
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


async def answer_images(request: Request, entry: ModelEntry, query: Query, to_answer: Callable[[Answer], BaseModel],
                        fmt: str = "json") -> Response:
    """Read the request's images, run them through the engine, answer JSON (one object, or a list for
    several images) or, with format=png|jpeg, the picture with the answer drawn."""
    annotate.check_format(fmt)
    settings = request.app.state.settings
    sources = await read_image_sources(request, settings.max_images_per_request)
    annotate.check_one_image(fmt, sources)
    engine = request.app.state.engine
    if fmt == "json":
        answers, times = await engine.infer(entry, sources, query, to_answer)
        return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)
    finish = annotate.drawing(sources[0], fmt, settings.max_image_pixels, to_answer)
    pictures, times = await engine.infer(entry, sources, query, finish)
    return Response(pictures[0], media_type=annotate.media_type(fmt), headers={"Server-Timing": times.server_timing()})


def json_response(request: Request, model_name: str, body: BaseModel | list[Any], times: StageTimes) -> Response:
    """Serialise with pydantic's own encoder (timed as a stage) and attach `Server-Timing`."""
    started = time.perf_counter()
    content = body.model_dump_json().encode() if isinstance(body, BaseModel) else _LIST_ADAPTER.dump_json(body)
    elapsed = time.perf_counter() - started
    times.add("serialize", elapsed)
    request.app.state.metrics.stage_latency.labels(model_name, "serialize").observe(elapsed)
    return Response(content, media_type="application/json", headers={"Server-Timing": times.server_timing()})


_LIST_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[Any])
