"""What is loaded: every model file with its status, task, provider and input contract."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.common import ERROR_RESPONSES
from service.contract import Task
from service.registry import ModelEntry
from service.schemas import ModelInfo, ModelList

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
        file=entry.path.name,
        family=entry.family,
        metadata_source=entry.metadata_source,
    )


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
