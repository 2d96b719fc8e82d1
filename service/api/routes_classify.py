"""POST /v1/classify: an image in, the top-k classes with probabilities out."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, json_response, run_images
from service.api.context import request_id, tag_model
from service.api.inputs import read_image_sources
from service.contract import Task
from service.pipeline import Prepared
from service.schemas import ClassifyResponse, ClassPrediction, ImageInfo
from service.tasks.classification import ClassScore, top_k_classes

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post(
    "/classify",
    response_model=ClassifyResponse | list[ClassifyResponse],
    responses=ERROR_RESPONSES,
    openapi_extra=IMAGE_REQUEST_BODY,
    summary="Classify an image",
    description="Send the image as multipart field `file`, as the raw body with an `image/*` content type, "
    'or as JSON `{"image": "<base64 or data URI>"}`. Several `file` fields give a list of answers, in order.',
)
async def classify(
    request: Request,
    model: Annotated[str | None, Query(description="model name; default: the default classifier")] = None,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to return")] = 5,
) -> Response:
    entry = request.app.state.registry.resolve(model, Task.CLASSIFICATION)
    tag_model(request, entry.name)
    sources = await read_image_sources(request, request.app.state.settings.max_images_per_request)
    metadata = entry.metadata

    def decode_output(prepared: Prepared, outputs: list[np.ndarray]) -> list[ClassScore]:
        return top_k_classes(outputs[0], metadata, top_k)

    results, times = await run_images(request, entry, sources, decode_output)
    answers = [
        ClassifyResponse(
            model=entry.name,
            task=Task.CLASSIFICATION,
            request_id=request_id(request),
            image=ImageInfo(width=prepared.image.width, height=prepared.image.height, format=prepared.image.format),
            predictions=[ClassPrediction(class_id=s.class_id, label=s.label, score=s.score) for s in scores],
        )
        for prepared, scores in results
    ]
    return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)
