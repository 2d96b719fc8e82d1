"""Pure ASGI middleware: admit or refuse an inference request from its route, model and Content-Length,
before its body is read.

Under overload most requests must be refused, and a refusal is only cheap before the body is read and
parsed (multipart, base64, tensors): here it costs the header parse and a short 503 with `Retry-After`,
and the event loop stays free for the requests that were accepted. It sits inside the request-context
middleware, so the API-key check, the request id, the metrics and the access log apply to refusals too.

A request whose model cannot be told from its route and query (unknown model, wrong task, still loading)
passes through: the route answers it with the precise error.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, unquote

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service import errors
from service.admission import AdmissionGate
from service.contract import Task
from service.metrics import Metrics
from service.registry import ModelEntry, ModelRegistry

# The tasks each image route serves, in the order its default model is chosen (as the routes resolve).
IMAGE_ROUTES: dict[str, tuple[Task, ...]] = {
    "/v1/classify": (Task.CLASSIFICATION,),
    "/v1/detect": (Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.KEYPOINTS),
    "/v1/segment": (Task.INSTANCE_SEGMENTATION, Task.SEMANTIC_SEGMENTATION),
    "/v1/keypoints": (Task.KEYPOINTS,),
    "/v1/embed": (Task.EMBEDDING,),  # gated by its embedding model (a `detector` it may also use is not)
}
TENSOR_ROUTE = re.compile(r"^/v2/models/(?P<name>[^/]+)(?P<versioned>/versions/[^/]+)?/infer$")

# A refused request whose body is at most this big keeps its connection: the server discards the unread
# rest, which has most likely arrived with the headers. A bigger one is cut off, so the client stops sending.
KEEP_ALIVE_MAX_UNREAD_BYTES = 64 * 1024


class _RouteLabel(NamedTuple):
    path: str  # what the metrics and the access log read as the route (the request is refused before routing)


class EarlyAdmission:
    def __init__(self, app: ASGIApp, *, registry: ModelRegistry, metrics: Metrics,
                 gate: AdmissionGate | None = None) -> None:
        self.app = app
        self.registry = registry
        self.metrics = metrics
        self.gate = gate or AdmissionGate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        target = self._target(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        entry, route = target
        max_limit = entry.batcher.policy.max_queue if entry.batcher else 0
        started = self.gate.try_admit(entry.name, max_limit)
        if started is None:
            await self._refuse(scope, send, entry.name, self.gate.limit(entry.name) or max_limit, route)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            limit_before = self.gate.limit(entry.name)
            self.gate.release(entry.name, started, max_limit)
            if self.gate.limit(entry.name) != limit_before:
                self.metrics.admission_limit.labels(entry.name).set(self.gate.limit(entry.name) or 0)

    def _target(self, scope: Scope) -> tuple[ModelEntry, str] | None:
        """The ready model the request is for and its route template, or None to let the route decide."""
        path: str = scope["path"]
        tasks = IMAGE_ROUTES.get(path)
        if tasks is not None:
            name, route = _model_parameter(scope), path
        else:
            match = TENSOR_ROUTE.match(path)
            if match is None:
                return None
            tasks, name = tuple(Task), unquote(match["name"])
            route = "/v2/models/{name}/versions/{version}/infer" if match["versioned"] else "/v2/models/{name}/infer"
        try:
            return self.registry.resolve(name, *tasks), route
        except errors.StrideError:
            return None

    async def _refuse(self, scope: Scope, send: Send, model: str, limit: int, route: str) -> None:
        error = errors.overloaded(model, limit)
        state = scope.setdefault("state", {})
        state["model"] = model
        scope["route"] = _RouteLabel(route)
        self.metrics.errors.labels(error.code).inc()
        self.metrics.admission_refusals.labels(model, "in_flight_limit").inc()
        body = errors.body_for_path(scope["path"], error.code, error.message, state.get("request_id", ""))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        if _unread_body_too_big(scope):
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _model_parameter(scope: Scope) -> str | None:
    query = scope.get("query_string", b"")
    if b"model=" not in query:  # the common case costs no parsing
        return None
    values = parse_qs(query.decode("latin-1")).get("model")
    return values[0] if values else None


def _unread_body_too_big(scope: Scope) -> bool:
    length = Headers(scope=scope).get("content-length")
    if length is None:
        return True  # chunked: no telling how much is still coming
    return not (length.isdigit() and int(length) <= KEEP_ALIVE_MAX_UNREAD_BYTES)
