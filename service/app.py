"""The FastAPI application factory."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api import routes_classify, routes_dense, routes_health, routes_models
from service.api.error_handlers import install_error_handlers
from service.api.middleware import RequestContextMiddleware
from service.config import Settings, get_settings
from service.logs import drain_logging
from service.metrics import Metrics
from service.registry import ModelRegistry, ModelStatus


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, stats_for=metrics.batch_stats)
    registry.discover()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="stride-worker")
        # Load in the background so /health/live answers at once and /health/ready says "loading".
        loader = threading.Thread(target=_load_models, args=(registry, metrics), name="stride-loader", daemon=True)
        loader.start()
        try:
            yield
        finally:
            app.state.draining = True
            registry.close()
            app.state.executor.shutdown(wait=False, cancel_futures=True)
            drain_logging()

    app = FastAPI(
        title="Stride",
        version=__version__,
        description="Image inference over HTTP: classification, detection, segmentation and keypoints.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.draining = False
    install_error_handlers(app, metrics)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        log_requests=settings.access_log,
        api_keys=[key.get_secret_value() for key in settings.api_key],
        metrics_require_key=settings.metrics_require_key,
        body_read_timeout_s=settings.body_read_timeout_s,
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
    return app


def _load_models(registry: ModelRegistry, metrics: Metrics) -> None:
    registry.load_all()
    for entry in registry.entries.values():
        ready = 1.0 if entry.status is ModelStatus.READY else 0.0
        task = entry.task.value if entry.task else ""
        metrics.model_ready.labels(entry.name, task, entry.provider or "").set(ready)
        if entry.batcher is not None:
            metrics.inflight.labels(entry.name).set_function(lambda b=entry.batcher: b.in_flight)
