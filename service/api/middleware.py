"""Pure ASGI middleware: request id, API-key check, body size, read-time and rate limits, security
headers, `Connection: close` while draining, the JSON 500 of last resort, request metrics and the access log.

Written against ASGI directly (not BaseHTTPMiddleware) so that streaming bodies are counted as they
arrive and an oversized or stalled upload is refused without buffering it.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.metrics import Metrics
from service.web import ASSET_PREFIX as WEB_ASSET_PREFIX

access_log = logging.getLogger("stride.access")
log = logging.getLogger(__name__)

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# Paths open without an API key: probes must work unauthenticated, and the API description is public.
_OPEN_PREFIXES = ("/health/", "/v2/health/", "/docs", "/redoc", "/openapi.json", WEB_ASSET_PREFIX)
_OPEN_PATHS = ("/",)  # the web page: it asks for the key itself, for its API calls

# Every response says this: browsers must not guess a type (a JSON error is never run as a page or script).
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}

# A body must keep up the minimum rate on average, but only after this start: TCP slow start and a client's
# first write can be bursty.
BODY_RATE_GRACE_S = 2.0


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, log_requests: bool,
                 api_keys: list[str] | None = None, metrics_require_key: bool = False,
                 body_read_timeout_s: float = 30.0, min_body_rate_bytes_s: int = 0) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests
        self.api_keys = [key.encode() for key in api_keys or [] if key]
        self.metrics_require_key = metrics_require_key
        self.body_read_timeout_s = body_read_timeout_s
        self.min_body_rate_bytes_s = min_body_rate_bytes_s

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
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = rid
                headers.update(_SECURITY_HEADERS)
                if _draining(scope):  # the client reconnects elsewhere instead of meeting a reset
                    headers["Connection"] = "close"
            await send(message)

        try:
            if self.api_keys and self._needs_key(scope["path"]) and not self._authorised(headers):
                await _send_error(send_with_id, errors.unauthorized(), rid, self.metrics, scope["path"])
                return
            declared = _declared_length(headers)
            if declared is not None and declared > self.max_body_bytes:
                error = errors.payload_too_large(self.max_body_bytes)
                await _send_error(send_with_id, error, rid, self.metrics, scope["path"])
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except errors.StrideError as error:  # raised before routing, e.g. a malformed Content-Length
            await _send_error(send_with_id, error, rid, self.metrics, scope["path"])
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            if response_started:
                raise  # half an answer is out: only closing the connection can tell the client
            await _send_error(send_with_id, errors.internal_error(), rid, self.metrics, scope["path"])
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _needs_key(self, path: str) -> bool:
        if path == "/metrics":
            return self.metrics_require_key
        return path not in _OPEN_PATHS and not path.startswith(_OPEN_PREFIXES)

    def _authorised(self, headers: Headers) -> bool:
        offered = headers.get("x-api-key", "")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if not offered and scheme.lower() == "bearer":
            offered = token.strip()
        if not offered:
            return False
        # Compare with every key in constant time, so timing reveals neither a key nor which one matched.
        matches = [hmac.compare_digest(offered.encode(), key) for key in self.api_keys]
        return any(matches)

    def _limited(self, receive: Receive) -> Receive:
        received = 0
        complete = False
        limit, read_timeout, min_rate = self.max_body_bytes, self.body_read_timeout_s, self.min_body_rate_bytes_s
        started = time.monotonic()

        async def receive_limited() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()  # after the body: waiting for a disconnect is not a slow upload
            # A client that has sent `received` bytes keeps up the minimum rate until this moment.
            rate_wait = started + BODY_RATE_GRACE_S + received / min_rate - time.monotonic() if min_rate else None
            try:
                message = await asyncio.wait_for(receive(), _shorter(read_timeout, rate_wait))
            except TimeoutError:
                if rate_wait is not None and rate_wait < read_timeout:
                    raise errors.body_too_slow(min_rate) from None
                raise errors.body_timeout(read_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
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


# Made ids are a random per-process prefix plus a counter: unique across replicas for practical purposes,
# and far cheaper than a uuid4 (an os.urandom call) per request.
_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def _request_id_from(headers: Headers) -> str:
    """Honour a caller's X-Request-ID when it is safe to echo and log; otherwise make one."""
    given = headers.get("x-request-id", "")
    return given if _SAFE_REQUEST_ID.match(given) else f"{_ID_PREFIX}{next(_id_counter):012x}"


def _shorter(timeout: float, other: float | None) -> float:
    return timeout if other is None else max(0.0, min(timeout, other))


def _draining(scope: Scope) -> bool:
    app = scope.get("app")
    return bool(getattr(getattr(app, "state", None), "draining", False))


def _declared_length(headers: Headers) -> int | None:
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not (raw.strip().isascii() and raw.strip().isdigit()):
        raise errors.bad_request("invalid_content_length", f"Content-Length '{raw}' is not a byte count")
    return int(raw)


async def _send_error(send: Send, error: errors.StrideError, rid: str, metrics: Metrics, path: str) -> None:
    metrics.errors.labels(error.code).inc()
    body = errors.body_for_path(path, error.code, error.message, rid)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items() if k.lower() != "connection"]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
