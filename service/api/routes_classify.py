"""POST /v1/classify: an image in, the top-k classes with probabilities out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.api import encode
from service.api.annotate import Format
from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, answer_images
from service.api.context import request_id, tag_model
from service.api.params import ModelName
from service.contract import Task
from service.families import ClassifyQuery
from service.schemas import ClassifyResponse

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
    model: ModelName = None,
    top_k: Annotated[int, Query(ge=1, le=1000, description="how many classes to return")] = 5,
    format: Format = "json",
) -> Response:
    entry = request.app.state.registry.resolve(model, Task.CLASSIFICATION)
    tag_model(request, entry.name)
    metadata, rid = entry.ready_model.metadata, request_id(request)
    return await answer_images(request, entry, ClassifyQuery(top_k),
                               lambda answer: encode.classification(entry.name, metadata, rid, answer), format)
