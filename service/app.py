"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.admission import AdmissionGate
from service.api import routes_classify, routes_collections, routes_dense, routes_embed, routes_health, routes_models
from service.api.admission import EarlyAdmission
from service.api.docs import install_docs
from service.api.error_handlers import install_error_handlers
from service.api.middleware import RequestContextMiddleware
from service.api.query_params import reject_unknown_query_parameters
from service.api.v2 import routes as v2_routes
from service.collections import open_collections_for
from service.config import Settings, get_settings
from service.engine import Engine
from service.grpc.server import start_grpc_server
from service.lifecycle import ModelWatcher
from service.logs import drain_logging
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.web import routes as web_routes
from service.web.security import HtmlSecurityHeaders


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, stats_for=metrics.batch_stats, events=metrics.model_events())
    registry.discover()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.draining = False  # a (re)started app serves; the end of the previous run drained it
        app.state.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="stride-worker")
        app.state.engine = Engine(settings, metrics, app.state.executor)
        # Load in the background so /health/live answers at once and /health/ready says "loading".
        loader = threading.Thread(target=registry.load_all, name="stride-loader", daemon=True)
        loader.start()
        app.state.watcher = ModelWatcher(registry, settings.models_dir, settings.watch_settle_ms)
        if settings.watch_models:  # syncs wait for the initial load: they share the registry's lock
            app.state.watcher.start()
        # Opening a local store reads its vectors into memory: a thread, so the loop stays free.
        app.state.collections = await asyncio.to_thread(open_collections_for, settings)
        grpc_server = None
        try:
            # After the pool exists (its handlers use it); a port it cannot bind fails the start, as HTTP's does.
            grpc_server = await start_grpc_server(app.state) if settings.grpc_port else None
            yield
        finally:
            app.state.draining = True
            if grpc_server is not None:  # in-flight calls finish before the pool and batchers go
                await grpc_server.stop(grace_s=settings.request_timeout_s)
            app.state.watcher.stop()
            registry.close()
            await asyncio.to_thread(app.state.collections.close)  # writes in flight finish first
            app.state.executor.shutdown(wait=False, cancel_futures=True)
            drain_logging()

    app = FastAPI(
        title="Stride",
        version=__version__,
        description="Image inference over HTTP: classification, detection, segmentation and keypoints.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_docs: the default page needs a CDN
        redoc_url=None,
        dependencies=[Depends(reject_unknown_query_parameters)],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.draining = False
    install_error_handlers(app, metrics)
    app.add_middleware(HtmlSecurityHeaders)  # inside the request context: pages get their CSP
    app.state.admission = AdmissionGate(target_floor_s=settings.admission_target_ms / 1000)
    # Inside the request context (keys, request id, metrics, access log apply), before any body is read.
    app.add_middleware(EarlyAdmission, registry=registry, metrics=metrics, gate=app.state.admission)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.access_log,
        api_keys=[key.get_secret_value() for key in settings.api_key],
        metrics_require_key=settings.metrics_require_key,
        body_read_timeout_s=settings.body_read_timeout_s,
        min_body_rate_bytes_s=settings.min_body_rate_bytes_s,
    )
    if settings.cors_origins:
        # Added last, so outermost: preflight requests are answered before the API-key check.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Server-Timing", "Retry-After"],
        )
    app.include_router(routes_health.router)
    app.include_router(routes_models.router)
    app.include_router(routes_classify.router)
    app.include_router(routes_dense.router)
    app.include_router(routes_embed.router)
    app.include_router(routes_collections.router)
    app.include_router(v2_routes.router)
    app.include_router(web_routes.router)
    install_docs(app)
    return app

