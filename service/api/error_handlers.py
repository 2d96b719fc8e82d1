"""Every error, FastAPI's own 404/405/422 included, leaves in the one envelope of service.errors.

Unexpected exceptions are answered by service.api.middleware (a JSON 500 with `Connection: close`), so
that the answer still carries the request id and the security headers.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import errors
from service.api.context import request_id
from service.errors import StrideError
from service.metrics import Metrics

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "payload_too_large"}


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def envelope(request: Request, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(code).inc()
        return JSONResponse(errors.envelope(code, message, request_id(request)), status_code=status,
                            headers=headers)

    async def on_stride_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StrideError)
        return envelope(request, exc.status, exc.code, exc.message, exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "path"))
            problems.append(f"parameter '{location}': {error.get('msg')}")
        return envelope(request, 422, "invalid_parameter", "; ".join(problems) or "invalid parameters")

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return envelope(request, exc.status_code, code, message, dict(exc.headers or {}))

    async def on_client_disconnect(request: Request, exc: Exception) -> JSONResponse:
        # Nobody will read this answer; it exists so the access log and metrics say 499, not 500.
        log.info("client disconnected before the request was read", extra={"request_id": request_id(request)})
        gone = errors.client_disconnected()
        return envelope(request, gone.status, gone.code, gone.message, {"Connection": "close"})

    app.add_exception_handler(StrideError, on_stride_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
