"""Shared route plumbing: running CPU work off the event loop, and the documented error responses."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Request

from service import errors
from service.errors import ErrorResponse

T = TypeVar("T")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "empty body, not an image, corrupt or truncated image"},
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
                           "properties": {"file": {"type": "string", "format": "binary"}}},
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


async def run_in_worker(request: Request, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run CPU work on the app's thread pool, bounded by the request timeout (504 after it)."""
    state = request.app.state
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(state.executor, functools.partial(fn, *args, **kwargs))
    timeout = state.settings.request_timeout_s
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError as exc:
        raise errors.timed_out(timeout) from exc
