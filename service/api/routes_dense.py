"""POST /v1/detect, /v1/segment and /v1/keypoints: boxes, masks, class maps and joints."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from service import errors
from service.api import encode
from service.api.annotate import Format
from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, answer_images
from service.api.context import request_id, tag_model
from service.api.params import Agnostic, Classes, Confidence, Iou, MaxDetections, ModelName, class_filter
from service.contract import ModelMetadata, Task
from service.engine import detection_query
from service.families import SemanticQuery
from service.registry import ModelEntry
from service.schemas import DetectResponse, InstanceSegmentResponse, KeypointsResponse, SemanticSegmentResponse
from service.tasks.detection import DetectionQuery

router = APIRouter(prefix="/v1", tags=["inference"])

MaskFormat = Literal["rle", "polygon", "png"]


def _query(metadata: ModelMetadata, confidence: float | None, iou: float | None, max_detections: int | None,
           classes: str | None, agnostic: bool) -> DetectionQuery:
    return detection_query(metadata, confidence=confidence, iou=iou, max_detections=max_detections,
                           classes=class_filter(classes, metadata.labels), agnostic=agnostic)


@router.post("/detect", response_model=DetectResponse | list[DetectResponse], responses=ERROR_RESPONSES,
             openapi_extra=IMAGE_REQUEST_BODY, summary="Detect objects: boxes (and rotated boxes), labels and scores")
async def detect(request: Request, model: ModelName = None, confidence: Confidence = None, iou: Iou = None,
                 max_detections: MaxDetections = None, classes: Classes = None,
                 agnostic: Agnostic = False, format: Format = "json") -> Response:
    entry = _resolve(request, model, Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.KEYPOINTS)
    meta, rid = entry.ready_model.metadata, request_id(request)
    query = _query(meta, confidence, iou, max_detections, classes, agnostic)
    return await answer_images(request, entry, query, lambda answer: encode.detect(entry.name, meta, rid, answer),
                               format)


@router.post("/segment",
             response_model=InstanceSegmentResponse | SemanticSegmentResponse | list[InstanceSegmentResponse]
             | list[SemanticSegmentResponse],
             responses=ERROR_RESPONSES, openapi_extra=IMAGE_REQUEST_BODY,
             summary="Segment: instance masks (instance model) or a class per pixel (semantic model)")
async def segment(request: Request, model: ModelName = None, confidence: Confidence = None, iou: Iou = None,
                  max_detections: MaxDetections = None, classes: Classes = None, agnostic: Agnostic = False,
                  mask_format: Annotated[MaskFormat | None, Query(
                      description="instance masks: rle (default), polygon or png; semantic maps: png (default) "
                      "or rle (one per present class)")] = None, format: Format = "json") -> Response:
    entry = _resolve(request, model, Task.INSTANCE_SEGMENTATION, Task.SEMANTIC_SEGMENTATION)
    meta, rid = entry.ready_model.metadata, request_id(request)
    if meta.task is Task.SEMANTIC_SEGMENTATION:
        if mask_format == "polygon":
            raise errors.invalid_parameter("mask_format", "a semantic model answers in png or rle")
        fmt = mask_format or "png"
        return await answer_images(request, entry, SemanticQuery(),
                                   lambda answer: encode.semantic(entry.name, meta, rid, answer, fmt), format)
    query = _query(meta, confidence, iou, max_detections, classes, agnostic)
    budget = request.app.state.settings.max_response_bytes
    return await answer_images(request, entry, query, lambda answer: encode.instances(
        entry.name, meta, rid, answer, mask_format or "rle", budget), format)


@router.post("/keypoints", response_model=KeypointsResponse | list[KeypointsResponse], responses=ERROR_RESPONSES,
             openapi_extra=IMAGE_REQUEST_BODY, summary="Find skeletons: boxes and named joints per instance")
async def keypoints(request: Request, model: ModelName = None, confidence: Confidence = None, iou: Iou = None,
                    max_detections: MaxDetections = None,
                    keypoint_confidence: Annotated[float, Query(ge=0.0, le=1.0, description=(
                        "joints scoring below it are still listed, with visible=false"))] = 0.5,
                    format: Format = "json") -> Response:
    entry = _resolve(request, model, Task.KEYPOINTS)
    meta, rid = entry.ready_model.metadata, request_id(request)
    query = _query(meta, confidence, iou, max_detections, None, False)
    return await answer_images(request, entry, query,
                               lambda answer: encode.keypoints(entry.name, meta, rid, answer, keypoint_confidence),
                               format)


def _resolve(request: Request, model: str | None, *tasks: Task) -> ModelEntry:
    entry = request.app.state.registry.resolve(model, *tasks)
    tag_model(request, entry.name)
    return entry


