"""The gRPC server of the Open Inference Protocol, `inference.GRPCInferenceService`, on STRIDE_GRPC_PORT.

It runs in a thread of its own with its own asyncio loop (grpc.aio), started and stopped by the app's
lifespan, so it starts with the HTTP server and stops after the HTTP drain, letting in-flight calls finish.
Calls share everything with REST /v2 and /v1: the registry, the worker pool (tensors are decoded and
encoded there), each model's dynamic batcher (admission limit, deadline), the metrics and the API keys.
Errors map to gRPC codes: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND, 503 UNAVAILABLE,
504 DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from service import errors
from service.api.v2 import inference
from service.api.v2.models import check_version, is_ready, model_metadata, servable_model
from service.api.v2.server import server_metadata, server_ready
from service.errors import StrideError, public_message
from service.grpc import codec
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from service.grpc.auth import is_authorised, offered_key
from service.registry import ModelEntry

log = logging.getLogger(__name__)
access_log = logging.getLogger("stride.access")

T = TypeVar("T")
Handler = Callable[[Any, Message, grpc.aio.ServicerContext], Awaitable[Message]]

SERVICE = "inference.GRPCInferenceService"

STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# How long start-up waits for the server thread to bind before giving up.
START_TIMEOUT_S = 30.0


def rpc(*, open_access: bool = False) -> Callable[[Handler], Handler]:
    """Wraps a servicer method: API key (unless open, like /v2/health/*), StrideError -> gRPC status,
    request metrics under the HTTP-equivalent status, and the access log line."""

    def decorate(method: Handler) -> Handler:
        route = f"/{SERVICE}/{method.__name__}"

        @functools.wraps(method)
        async def call(self: InferenceServicer, request: Message, context: grpc.aio.ServicerContext) -> Message:
            started, recorded = time.perf_counter(), False
            model = getattr(request, "model_name", "") or getattr(request, "name", "")

            def record(status: int) -> None:
                # Before an abort: the client has its answer as soon as abort sends it, so a metric recorded
                # after it could be missing when the client looks.
                nonlocal recorded
                if not recorded:
                    recorded = True
                    self.record(route, model, status, time.perf_counter() - started)

            try:
                if not open_access and self.api_keys and not is_authorised(
                        offered_key(context.invocation_metadata() or ()), self.api_keys):
                    raise errors.unauthorized()
                answer = await method(self, request, context)
                record(200)
                return answer
            except StrideError as error:
                self.state.metrics.errors.labels(error.code).inc()
                record(error.status)
                await context.abort(STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL),
                                    public_message(error.message))
                raise  # abort raises; this line only satisfies the type checker
            except asyncio.CancelledError:
                record(499)
                raise
            except Exception:
                if context.code() is not None:  # an abort already under way
                    raise
                record(500)
                log.exception("unhandled error in %s", route)
                await context.abort(grpc.StatusCode.INTERNAL, "an internal error occurred; it has been logged")
                raise

        return call

    return decorate


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: Any) -> None:
        self.state = state
        settings = state.settings
        self.api_keys = [key.get_secret_value().encode() for key in settings.api_key if key.get_secret_value()]
        self.log_requests = settings.access_log

    @rpc(open_access=True)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Message:
        return pb.ServerLiveResponse(live=True)

    @rpc(open_access=True)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        return pb.ServerReadyResponse(ready=server_ready(self.state))

    @rpc()
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        return codec.server_metadata_message(server_metadata())

    @rpc()
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Message:
        entry = self.state.registry.get(request.name)
        check_version(entry, request.version)
        return pb.ModelReadyResponse(ready=is_ready(entry))

    @rpc()
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Message:
        entry = servable_model(self.state.registry, request.name, request.version)
        return codec.model_metadata_message(model_metadata(entry))

    @rpc()
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Message:
        entry = servable_model(self.state.registry, request.model_name, request.model_version)
        assert entry.metadata is not None
        prepared = await self.in_worker(_decode_and_prepare, entry, request)
        outputs = await inference.infer(self.state, entry, prepared, self.timeout_s(context))
        return await self.in_worker(codec.infer_response, request, entry.name, entry.metadata.model_version, outputs)

    def timeout_s(self, context: grpc.aio.ServicerContext) -> float:
        """The server's request deadline, or the client's when that comes first."""
        limit = self.state.settings.request_timeout_s
        remaining = context.time_remaining()
        return limit if remaining is None else max(0.0, min(limit, remaining))

    async def in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            future = self.state.executor.submit(fn, *args)
        except RuntimeError as exc:  # the pool is shut down: the server is stopping
            raise errors.not_ready(f"shutting down ({exc})") from exc
        return await asyncio.wrap_future(future)

    def record(self, route: str, model: str, status: int, seconds: float) -> None:
        labels = (route, model, str(status))
        self.state.metrics.requests.labels(*labels).inc()
        self.state.metrics.request_latency.labels(*labels).observe(seconds)
        if self.log_requests:
            access_log.info("gRPC %s %d %.1fms", route, status, seconds * 1000,
                            extra={"route": route, "model": model, "status": status,
                                   "latency_ms": round(seconds * 1000, 2)})


def _decode_and_prepare(entry: ModelEntry, request: pb.ModelInferRequest) -> inference.Prepared:
    return inference.prepare(entry, codec.decode_inputs(request), codec.requested_outputs(request))


class GrpcServer:
    """grpc.aio in a thread and loop of its own: the HTTP server's loop (uvloop or not) stays untouched."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = asyncio.Event()  # set in the server's loop once stop() has finished

    async def start(self) -> int:
        """Bind and start; returns the bound port. Raises when the port cannot be bound."""
        started: Future[int] = Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="stride-grpc", daemon=True)
        self._thread.start()
        self.port = await asyncio.wait_for(asyncio.wrap_future(started), START_TIMEOUT_S)
        log.info("gRPC (Open Inference Protocol) listening on port %d", self.port)
        return self.port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let in-flight ones finish for up to `grace_s`, then end the thread."""
        if self._loop is None or self._server is None or self._thread is None:
            return
        stopped = asyncio.run_coroutine_threadsafe(self._shutdown(grace_s), self._loop)
        await asyncio.wrap_future(stopped)
        await asyncio.to_thread(self._thread.join, grace_s + 5)

    def _run(self, started: Future[int]) -> None:
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(self._serve(started))

    async def _serve(self, started: Future[int]) -> None:
        settings = self.state.settings
        try:
            server = grpc.aio.server(options=[
                # Another process on the port must be an error, not a silent share of the traffic; with
                # several workers they do share it (the supervisor checked it was free: service/workers.py).
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                ("grpc.max_receive_message_length", settings.max_body_bytes),
            ])
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.state), server)
            port = server.add_insecure_port(_address(settings.host, settings.grpc_port))
            if port == 0:
                raise OSError(f"cannot bind the gRPC port {settings.grpc_port} on {settings.host}")
            await server.start()
        except BaseException as exc:  # the start-up waits on this future: it must always be settled
            started.set_exception(exc)
            return
        self._server, self._loop = server, asyncio.get_running_loop()
        started.set_result(port)
        # Not server.wait_for_termination(): the loop must outlive stop() itself, whose caller awaits it.
        await self._stopped.wait()

    async def _shutdown(self, grace_s: float) -> None:
        assert self._server is not None
        try:
            await self._server.stop(grace_s)
        finally:
            self._stopped.set()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc_server(state: Any) -> GrpcServer:
    server = GrpcServer(state)
    await server.start()
    return server
