"""POST /v1/detect, /v1/segment and /v1/keypoints: boxes, masks, class maps and joints."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from PIL import Image

from service import errors
from service.api.common import ERROR_RESPONSES, IMAGE_REQUEST_BODY, json_response, run_images
from service.api.context import request_id, tag_model
from service.api.inputs import read_image_sources
from service.contract import ModelMetadata, Task
from service.pipeline import Prepared
from service.registry import ModelEntry
from service.schemas import (
    RLE,
    Box,
    ClassMask,
    ClassPresence,
    Detection,
    DetectResponse,
    GeometryInfo,
    ImageInfo,
    Instance,
    InstanceSegmentResponse,
    Joint,
    KeypointsResponse,
    PoseInstance,
    SegmentationMap,
    SemanticSegmentResponse,
)
from service.tasks import masks as mask_formats
from service.tasks import rle
from service.tasks.detection import DetectionQuery, Detections, select_detections
from service.tasks.keypoints import joints_to_original
from service.tasks.semantic import class_map

router = APIRouter(prefix="/v1", tags=["inference"])

Confidence = Annotated[float, Query(ge=0.0, le=1.0, description="minimum score")]
Iou = Annotated[float, Query(ge=0.0, le=1.0, description="NMS IoU threshold")]
MaxDetections = Annotated[int, Query(ge=1, le=1000, description="at most this many results")]
Classes = Annotated[str | None, Query(description="comma-separated labels or class ids to keep")]
Agnostic = Annotated[bool, Query(description="NMS across classes")]
ModelName = Annotated[str | None, Query(description="model name; default: the task's default model")]
MaskFormat = Literal["rle", "polygon", "png"]


def _query(metadata: ModelMetadata, confidence: float, iou: float, max_detections: int, classes: str | None,
           agnostic: bool) -> DetectionQuery:
    return DetectionQuery(confidence, iou, max_detections, _class_filter(classes, metadata.labels), agnostic)


def _class_filter(raw: str | None, labels: list[str]) -> frozenset[int] | None:
    if raw is None or not raw.strip():
        return None
    chosen = set()
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        if item in labels:
            chosen.add(labels.index(item))
        elif item.isdigit() and int(item) < len(labels):
            chosen.add(int(item))
        else:
            raise errors.invalid_parameter("classes", f"'{item}' is neither a label nor a class id of this model "
                                           f"(labels: {', '.join(labels)})")
    return frozenset(chosen)


def _geometry_info(prepared: Prepared, metadata: ModelMetadata) -> GeometryInfo:
    g = prepared.geometry
    return GeometryInfo(exif_orientation=prepared.image.orientation, resize=metadata.input.resize.value,
                        scale_x=g.scale_x, scale_y=g.scale_y, pad_x=g.offset_x, pad_y=g.offset_y,
                        input_width=g.input_width, input_height=g.input_height)


def _image_info(prepared: Prepared) -> ImageInfo:
    return ImageInfo(width=prepared.image.width, height=prepared.image.height, format=prepared.image.format)


def _detections(found: Detections, labels: list[str]) -> list[Detection]:
    return [
        Detection(class_id=int(c), label=labels[c] if c < len(labels) else str(c), score=float(s),
                  box=Box(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3])))
        for c, s, b in zip(found.class_ids.tolist(), found.scores, found.boxes, strict=True)
    ]


def _select(entry: ModelEntry, prepared: Prepared, outputs: list[np.ndarray], query: DetectionQuery) -> Detections:
    meta = entry.metadata
    assert meta is not None
    return select_detections(outputs[meta.output("boxes")], outputs[meta.output("scores")], prepared.geometry,
                             query)


@router.post("/detect", response_model=DetectResponse | list[DetectResponse], responses=ERROR_RESPONSES,
             openapi_extra=IMAGE_REQUEST_BODY, summary="Detect objects: boxes, labels and scores")
async def detect(request: Request, model: ModelName = None, confidence: Confidence = 0.25, iou: Iou = 0.45,
                 max_detections: MaxDetections = 100, classes: Classes = None, agnostic: Agnostic = False) -> Response:
    entry = _resolve(request, model, Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.KEYPOINTS)
    meta = entry.metadata
    assert meta is not None
    query = _query(meta, confidence, iou, max_detections, classes, agnostic)
    sources = await read_image_sources(request, request.app.state.settings.max_images_per_request)

    def decode(prepared: Prepared, outputs: list[np.ndarray]) -> DetectResponse:
        found = _select(entry, prepared, outputs, query)
        return DetectResponse(model=entry.name, task=meta.task, request_id=request_id(request),
                              image=_image_info(prepared), geometry=_geometry_info(prepared, meta),
                              detections=_detections(found, meta.labels))

    return await _answer(request, entry, sources, decode)


@router.post("/segment",
             response_model=InstanceSegmentResponse | SemanticSegmentResponse | list[InstanceSegmentResponse]
             | list[SemanticSegmentResponse],
             responses=ERROR_RESPONSES, openapi_extra=IMAGE_REQUEST_BODY,
             summary="Segment: instance masks (instance model) or a class per pixel (semantic model)")
async def segment(request: Request, model: ModelName = None, confidence: Confidence = 0.25, iou: Iou = 0.45,
                  max_detections: MaxDetections = 100, classes: Classes = None, agnostic: Agnostic = False,
                  mask_format: Annotated[MaskFormat | None, Query(
                      description="instance masks: rle (default), polygon or png; semantic maps: png (default) "
                      "or rle (one per present class)")] = None) -> Response:
    entry = _resolve(request, model, Task.INSTANCE_SEGMENTATION, Task.SEMANTIC_SEGMENTATION)
    meta = entry.metadata
    assert meta is not None
    sources = await read_image_sources(request, request.app.state.settings.max_images_per_request)
    if meta.task is Task.SEMANTIC_SEGMENTATION:
        if mask_format == "polygon":
            raise errors.invalid_parameter("mask_format", "a semantic model answers in png or rle")
        fmt = mask_format or "png"

        def decode_semantic(prepared: Prepared, outputs: list[np.ndarray]) -> SemanticSegmentResponse:
            return _semantic_response(request, entry, prepared, outputs[meta.output("logits")], fmt)

        return await _answer(request, entry, sources, decode_semantic)

    query = _query(meta, confidence, iou, max_detections, classes, agnostic)
    budget = request.app.state.settings.max_response_bytes

    def decode_instances(prepared: Prepared, outputs: list[np.ndarray]) -> InstanceSegmentResponse:
        found = _select(entry, prepared, outputs, query)
        return _instance_response(request, entry, prepared, outputs, found, mask_format or "rle", budget)

    return await _answer(request, entry, sources, decode_instances)


@router.post("/keypoints", response_model=KeypointsResponse | list[KeypointsResponse], responses=ERROR_RESPONSES,
             openapi_extra=IMAGE_REQUEST_BODY, summary="Find skeletons: boxes and named joints per instance")
async def keypoints(request: Request, model: ModelName = None, confidence: Confidence = 0.25, iou: Iou = 0.45,
                    max_detections: MaxDetections = 100,
                    keypoint_confidence: Annotated[float, Query(ge=0.0, le=1.0, description=(
                        "joints scoring below it are still listed, with visible=false"))] = 0.5) -> Response:
    entry = _resolve(request, model, Task.KEYPOINTS)
    meta = entry.metadata
    assert meta is not None and meta.keypoints is not None
    names, query = meta.keypoints.names, _query(meta, confidence, iou, max_detections, None, False)
    skeleton = [(names[a], names[b]) for a, b in meta.keypoints.skeleton]
    sources = await read_image_sources(request, request.app.state.settings.max_images_per_request)

    def decode(prepared: Prepared, outputs: list[np.ndarray]) -> KeypointsResponse:
        found = _select(entry, prepared, outputs, query)
        joints = joints_to_original(outputs[meta.output("keypoints")][found.indices], prepared.geometry)
        instances = [
            PoseInstance(**detection.model_dump(), keypoints=[
                Joint(name=name, x=float(j[0]), y=float(j[1]), score=float(j[2]),
                      visible=bool(j[2] >= keypoint_confidence))
                for name, j in zip(names, person, strict=True)])
            for detection, person in zip(_detections(found, meta.labels), joints, strict=True)
        ]
        return KeypointsResponse(model=entry.name, task=meta.task, request_id=request_id(request),
                                 image=_image_info(prepared), geometry=_geometry_info(prepared, meta),
                                 instances=instances, skeleton=skeleton)

    return await _answer(request, entry, sources, decode)


def _resolve(request: Request, model: str | None, *tasks: Task) -> ModelEntry:
    entry = request.app.state.registry.resolve(model, *tasks)
    tag_model(request, entry.name)
    return entry


async def _answer(request: Request, entry: ModelEntry, sources, decode) -> Response:  # type: ignore[no-untyped-def]
    results, times = await run_images(request, entry, sources, decode)
    answers = [answer for _, answer in results]
    return json_response(request, entry.name, answers[0] if len(answers) == 1 else answers, times)


def _instance_response(request: Request, entry: ModelEntry, prepared: Prepared, outputs: list[np.ndarray],
                       found: Detections, fmt: str, budget: int) -> InstanceSegmentResponse:
    meta = entry.metadata
    assert meta is not None and meta.masks is not None
    height, width = prepared.image.height, prepared.image.width
    local = mask_formats.instance_masks(outputs[meta.output("mask_coefficients")][found.indices],
                                        outputs[meta.output("mask_prototypes")], found.boxes, prepared.geometry,
                                        meta.masks)
    notes: list[str] = []
    encoded, size = _encode_masks(local, fmt, height, width)
    if size > budget and fmt != "rle":
        notes.append(f"{fmt} masks would take {size} bytes, over the {budget}-byte response budget "
                     "(STRIDE_MAX_RESPONSE_BYTES): sent as rle instead")
        fmt = "rle"
        encoded, size = _encode_masks(local, fmt, height, width)
    if size > budget:
        notes.append(f"masks would take {size} bytes even as rle, over the {budget}-byte response budget: "
                     "masks dropped (mask is null); ask with a lower max_detections or a higher confidence")
        encoded = [None] * len(local)
    instances = [Instance(**d.model_dump(), mask=m, area=lm.area)
                 for d, m, lm in zip(_detections(found, meta.labels), encoded, local, strict=True)]
    return InstanceSegmentResponse(model=entry.name, task=meta.task, request_id=request_id(request),
                                   image=_image_info(prepared), geometry=_geometry_info(prepared, meta),
                                   mask_format=fmt, instances=instances, notes=notes)


def _encode_masks(local: list[mask_formats.LocalMask], fmt: str, height: int,
                  width: int) -> tuple[list[object], int]:
    """Masks in `fmt`, and roughly how many bytes they add to the JSON."""
    if fmt == "rle":
        encoded: list[object] = [RLE.model_validate(mask_formats.as_rle(m, height, width)) for m in local]
        return encoded, sum(len(e.counts) + 40 for e in encoded)  # type: ignore[attr-defined]
    if fmt == "polygon":
        polygons = [mask_formats.as_polygons(m) for m in local]
        return list(polygons), sum(12 * sum(len(p) for p in poly) for poly in polygons)
    pngs = [mask_formats.as_png(m, height, width) for m in local]
    return list(pngs), sum(len(p) for p in pngs)


def _semantic_response(request: Request, entry: ModelEntry, prepared: Prepared, logits: np.ndarray,
                       fmt: str) -> SemanticSegmentResponse:
    meta = entry.metadata
    assert meta is not None
    labels = meta.labels
    classes = class_map(logits, prepared.geometry)
    ids = classes.ids
    height, width = ids.shape
    fractions = classes.fractions(len(labels))
    present = [int(c) for c in np.argsort(-fractions, kind="stable") if fractions[c] > 0]
    presence = [ClassPresence(class_id=c, label=labels[c] if c < len(labels) else str(c),
                              pixel_fraction=float(fractions[c])) for c in present]
    if fmt == "png":
        segmentation = SegmentationMap(format="png", size=[height, width],
                                       data=mask_formats.png_base64(Image.fromarray(ids)))
    else:
        segmentation = SegmentationMap(format="rle", size=[height, width], masks=[
            ClassMask(class_id=c, label=p.label, rle=RLE.model_validate(rle.encode(ids == c)))
            for c, p in zip(present, presence, strict=True)])
    return SemanticSegmentResponse(model=entry.name, task=meta.task, request_id=request_id(request),
                                   image=_image_info(prepared), geometry=_geometry_info(prepared, meta),
                                   segmentation=segmentation, classes=presence)
