"""POST /v1/classify: an image in, the top-k classes with probabilities out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, run_in_worker
from service.api.context import request_id, tag_model
from service.api.inputs import read_image_source
from service.contract import Task
from service.pipeline import classify as classify_image
from service.schemas import ClassifyResponse, ClassPrediction, ImageInfo

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_REQUEST_BODY,
    summary="Classify an image",
    description="Send the image as multipart field `file`, as the raw body with an `image/*` content type, "
    'or as JSON `{"image": "<base64 or data URI>"}`.',
)
async def classify(
    request: Request,
    model: Annotated[str | None, Query(description="model name; default: the default classifier")] = None,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to return")] = 5,
) -> ClassifyResponse:
    state = request.app.state
    entry = state.registry.resolve(model, Task.CLASSIFICATION)
    tag_model(request, entry.name)
    source = await read_image_source(request)
    decoded, scores = await run_in_worker(
        request, classify_image, entry, source,
        top_k=top_k, max_pixels=state.settings.max_image_pixels, metrics=state.metrics,
    )
    return ClassifyResponse(
        model=entry.name,
        task=Task.CLASSIFICATION,
        request_id=request_id(request),
        image=ImageInfo(width=decoded.width, height=decoded.height, format=decoded.format),
        predictions=[ClassPrediction(class_id=s.class_id, label=s.label, score=s.score) for s in scores],
    )
