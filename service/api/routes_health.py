"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.metrics import CONTENT_TYPE
from service.schemas import HealthResponse
from service.workers import every_worker_ready

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=HealthResponse, summary="The process is up")
async def live() -> HealthResponse:
    return HealthResponse(status="alive")


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    summary="Ready to serve: loading finished and at least one model usable",
    responses={503: {"model": HealthResponse, "description": "loading, draining, or no usable model"}},
)
async def ready(request: Request) -> Response:
    state = request.app.state
    ok, reason = state.registry.readiness()
    if ok and state.draining:
        ok, reason = False, "draining: the server is shutting down"
    if ok:  # with several worker processes, ready only when every one of them is
        ok, reason = every_worker_ready(state)
    models = {e.name: e.status.value for e in state.registry.entries.values()}
    body = HealthResponse(status="ready" if ok else "not_ready", reason=None if ok else reason, models=models)
    headers = None if ok else {"Retry-After": "1"}
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503, headers=headers)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
