"""POST /v1/embed: one vector per image and, with `detector=D`, one per detected object (its box cropped)."""

from __future__ import annotations

import asyncio
import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from service.api import encode
from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, json_response
from service.api.context import request_id, tag_model
from service.api.inputs import read_image_sources
from service.api.params import Confidence, MaxDetections, ModelName
from service.contract import Task
from service.engine import Answer, detection_query
from service.families import EmbedQuery
from service.payload import ImageSource
from service.pipeline import StageTimes
from service.registry import ModelEntry
from service.results import Detections, Embeddings
from service.schemas import EmbedResponse

router = APIRouter(prefix="/v1", tags=["embeddings"])

DETECTOR_TASKS = (Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.KEYPOINTS)
# Crops go to the embedding model this many at a time: a request's crops can outnumber the model's
# admission queue (16 images x 100 boxes), and a chunk at a time keeps one request from filling it.
CROP_CHUNK = 32

Detector = Annotated[str | None, Query(description=(
    "a detection, instance segmentation or keypoints model: each box it finds is cropped from the image and "
    "embedded too (`instances`)"))]


@router.post("/embed", response_model=EmbedResponse | list[EmbedResponse], responses=ERROR_RESPONSES,
             openapi_extra=IMAGE_REQUEST_BODY, summary="Embed images (and detected objects) as feature vectors",
             description="Each image's answer has `embedding`, its feature vector; with `detector=D`, also "
             "`instances`: each box D finds, with the vector of that crop. Compare vectors by cosine similarity.")
async def embed(request: Request, model: ModelName = None, detector: Detector = None,
                confidence: Confidence = None, max_detections: MaxDetections = None) -> Response:
    registry = request.app.state.registry
    entry = registry.resolve(model, Task.EMBEDDING)
    tag_model(request, entry.name)
    meta, rid = entry.ready_model.metadata, request_id(request)
    sources = await read_image_sources(request, request.app.state.settings.max_images_per_request)
    engine = request.app.state.engine

    def whole(answer: Answer) -> EmbedResponse:
        return encode.embedding(entry.name, meta, rid, answer)

    if detector is None:
        answers, times = await engine.infer(entry, sources, EmbedQuery(), whole)
        return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)

    finder = registry.resolve(detector, *DETECTOR_TASKS)
    finder_meta = finder.ready_model.metadata
    query = detection_query(finder_meta, confidence=confidence, iou=None, max_detections=max_detections,
                            classes=None, agnostic=False)
    (answers, times), (found, found_times) = await asyncio.gather(
        engine.infer(entry, sources, EmbedQuery(), whole), engine.infer(finder, sources, query, crops_of))
    times.merge(found_times)
    vectors = await embed_crops(request, entry, [crop for _, crops in found for crop in crops], times)
    start = 0
    for answer, (detections, crops) in zip(answers, found, strict=True):
        answer.detector = finder.name
        answer.instances = encode.embedded_instances(detections, finder_meta.labels,
                                                     vectors[start:start + len(crops)])
        start += len(crops)
    return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)


def crops_of(answer: Answer) -> tuple[Detections, list[bytes]]:
    """Each detected box cut from the upright image (in the worker pool), as lossless PNG bytes for the
    embedding model's own decode and preprocessing. Boxes are in original pixels; a JPEG decoded at a
    reduced DCT scale is cropped at that scale."""
    found = answer.result
    assert isinstance(found, Detections)
    decoded = answer.prepared.image
    image = decoded.image
    sx, sy = image.width / decoded.width, image.height / decoded.height
    crops = []
    for x1, y1, x2, y2 in found.boxes.tolist():
        left, top = min(int(x1 * sx), image.width - 1), min(int(y1 * sy), image.height - 1)
        right, bottom = max(left + 1, round(x2 * sx)), max(top + 1, round(y2 * sy))
        buffer = io.BytesIO()
        image.crop((max(left, 0), max(top, 0), right, bottom)).save(buffer, format="PNG", compress_level=1)
        crops.append(buffer.getvalue())
    return found, crops


async def embed_crops(request: Request, entry: ModelEntry, crops: list[bytes],
                      times: StageTimes) -> list[np.ndarray]:
    """The vectors of every crop, in order, a chunk at a time through the engine."""
    engine, vectors = request.app.state.engine, []  # type: ignore[var-annotated]
    for start in range(0, len(crops), CROP_CHUNK):
        chunk = [ImageSource(data, "binary") for data in crops[start:start + CROP_CHUNK]]
        found, chunk_times = await engine.infer(entry, chunk, EmbedQuery(), first_vector)
        vectors.extend(found)
        times.merge(chunk_times)
    return vectors


def first_vector(answer: Answer) -> np.ndarray:
    assert isinstance(answer.result, Embeddings)
    return answer.result.vectors[0]
