"""What is loaded: every model file with its status, task, provider and input contract; reloads on demand."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service import errors
from service.api.common import ERROR_RESPONSES
from service.contract import Task
from service.registry import Change, ChangeKind, ModelEntry, ModelRegistry
from service.schemas import ModelInfo, ModelList, PendingFailureInfo
from service.workers import tell_other_workers_to_reload

router = APIRouter(prefix="/v1", tags=["models"])


def model_info(entry: ModelEntry) -> ModelInfo:
    meta = entry.metadata
    return ModelInfo(
        name=entry.name,
        task=entry.task,
        status=entry.status.value,
        reason=entry.reason,
        version=meta.model_version if meta else None,
        architecture=meta.architecture if meta else None,
        provider=entry.provider,
        input=meta.input if meta else None,
        outputs=meta.outputs if meta else None,
        labels=meta.labels if meta else None,
        metrics=meta.metrics if meta else None,
        training_data=meta.training_data if meta else None,
        precision=meta.precision if meta else None,
        detection=meta.detection if meta else None,
        masks=meta.masks if meta else None,
        keypoints=meta.keypoints if meta else None,
        embedding=meta.embedding if meta else None,
        file=entry.path.name,
        family=entry.family,
        metadata_source=entry.metadata_source,
        sha256=entry.sha256,
        description_sha256=entry.files.description_sha256 if entry.files else None,
        loaded_at=entry.loaded_at,
        load_seconds=entry.load_seconds,
        pending_failure=pending_failure_info(entry),
    )


def pending_failure_info(entry: ModelEntry) -> PendingFailureInfo | None:
    pending = entry.pending_failure
    if pending is None:
        return None
    return PendingFailureInfo(sha256=pending.files.model_sha256, reason=pending.reason, failed_at=pending.failed_at)


class ModelChange(BaseModel):
    model: str
    change: ChangeKind = Field(description="added, replaced, kept_previous (the new file failed; the previous "
                               "version still serves), removed, unchanged")
    status: str | None = Field(default=None, description="status of what now serves under the name; null if removed")
    reason: str | None = Field(default=None, description="why the model, or its replacement, is not served")


class ReloadResponse(BaseModel):
    changes: list[ModelChange] = Field(description="what the reload did, one entry per model it looked at")


def change_info(change: Change) -> ModelChange:
    status = change.status.value if change.status else None
    return ModelChange(model=change.model, change=change.kind, status=status, reason=change.reason)


@router.get("/models", response_model=ModelList, summary="All model files and their status")
async def list_models(request: Request) -> ModelList:
    registry = request.app.state.registry
    entries = [registry.entries[name] for name in registry.names()]
    return ModelList(
        models=[model_info(e) for e in entries],
        defaults={task.value: registry.default_name(task) for task in Task},
    )


@router.get("/models/{name}", response_model=ModelInfo, responses=ERROR_RESPONSES,
            summary="One model's status, task, provider, input contract and labels")
async def get_model(name: str, request: Request) -> ModelInfo:
    return model_info(request.app.state.registry.get(name))


@router.post("/models/reload", response_model=ReloadResponse, responses=ERROR_RESPONSES,
             summary="Load new and changed model files and retire removed ones, now")
async def reload_models(request: Request) -> ReloadResponse:
    changes = await _sync(request.app.state.registry, None)
    tell_other_workers_to_reload(request.app.state)  # STRIDE_WORKERS > 1: every worker reloads
    return ReloadResponse(changes=[change_info(c) for c in changes])


@router.post("/models/{name}/reload", response_model=ReloadResponse, responses=ERROR_RESPONSES,
             summary="Load this model's file again if it changed (or retire it if it is gone), now")
async def reload_model(name: str, request: Request) -> ReloadResponse:
    registry: ModelRegistry = request.app.state.registry
    changes = await _sync(registry, name)
    tell_other_workers_to_reload(request.app.state)  # STRIDE_WORKERS > 1: every worker reloads
    if changes[0].kind is ChangeKind.ABSENT:
        raise errors.model_not_found(name, registry.names())
    return ReloadResponse(changes=[change_info(c) for c in changes])


async def _sync(registry: ModelRegistry, name: str | None) -> list[Change]:
    if registry.loading:
        raise errors.not_ready("models are still loading; reload once /health/ready answers")
    # Loading is CPU and disk work: a thread of its own, never the event loop.
    return await asyncio.to_thread(registry.sync, name)
