"""Pure ASGI middleware: request id, body size limit, request metrics and the access log.

Written against ASGI directly (not BaseHTTPMiddleware) so that streaming bodies are counted as they
arrive and an oversized upload is refused without buffering it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.metrics import Metrics

access_log = logging.getLogger("stride.access")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = _request_id_from(headers)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            declared = _declared_length(headers)
            if declared is not None and declared > self.max_body_bytes:
                error = errors.payload_too_large(self.max_body_bytes)
                await _send_error(send_with_id, error, rid)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except errors.StrideError as error:  # raised before routing, e.g. a malformed Content-Length
            await _send_error(send_with_id, error, rid)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _limited(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise errors.payload_too_large(limit)
            return message

        return receive_limited

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        state = scope.get("state", {})
        model = state.get("model", "")
        labels = (route, model, str(status))
        self.metrics.requests.labels(*labels).inc()
        self.metrics.request_latency.labels(*labels).observe(seconds)
        if self.log_requests:
            access_log.info(
                "%s %s %d %.1fms", scope.get("method"), scope.get("path"), status, seconds * 1000,
                extra={"request_id": state.get("request_id"), "route": route, "model": model,
                       "status": status, "latency_ms": round(seconds * 1000, 2)},
            )


def _request_id_from(headers: Headers) -> str:
    """Honour a caller's X-Request-ID when it is safe to echo and log; otherwise make one."""
    given = headers.get("x-request-id", "")
    return given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex


def _declared_length(headers: Headers) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise errors.bad_request("invalid_content_length", f"Content-Length '{raw}' is not a byte count")
    return int(raw)


async def _send_error(send: Send, error: errors.StrideError, rid: str) -> None:
    body = json.dumps({"error": {"code": error.code, "message": error.message, "request_id": rid}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
