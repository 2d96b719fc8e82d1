"""The one boundary where result types (service.results) become pydantic responses (service.schemas)."""

from __future__ import annotations

import numpy as np

from service.contract import ModelMetadata
from service.engine import Answer
from service.results import Classification, ClassMap, Detections, Embeddings, rotated_corners
from service.schemas import (
    RLE,
    Box,
    ClassifyResponse,
    ClassMask,
    ClassPrediction,
    ClassPresence,
    Detection,
    DetectResponse,
    EmbeddedInstance,
    EmbedResponse,
    GeometryInfo,
    ImageInfo,
    Instance,
    InstanceSegmentResponse,
    Joint,
    KeypointsResponse,
    PoseInstance,
    RotatedBox,
    SegmentationMap,
    SemanticSegmentResponse,
)
from service.tasks import masks as mask_formats


def _label(labels: list[str], class_id: int) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else str(class_id)


def image_info(answer: Answer) -> ImageInfo:
    image = answer.prepared.image
    return ImageInfo(width=image.width, height=image.height, format=image.format)


def geometry_info(answer: Answer, metadata: ModelMetadata) -> GeometryInfo:
    g = answer.prepared.geometry
    return GeometryInfo(exif_orientation=answer.prepared.image.orientation, resize=metadata.input.resize.value,
                        scale_x=g.scale_x, scale_y=g.scale_y, pad_x=g.offset_x, pad_y=g.offset_y,
                        input_width=g.input_width, input_height=g.input_height)


def classification(model: str, metadata: ModelMetadata, request_id: str, answer: Answer) -> ClassifyResponse:
    result = answer.result
    assert isinstance(result, Classification)
    predictions = [ClassPrediction(class_id=c, label=_label(metadata.labels, c), score=s)
                   for c, s in zip(result.class_ids.tolist(), result.scores.tolist(), strict=True)]
    return ClassifyResponse(model=model, task=metadata.task, request_id=request_id, image=image_info(answer),
                            predictions=predictions)


def detections(found: Detections, labels: list[str]) -> list[Detection]:
    oriented = _rotated(found) if found.rotated is not None else [None] * len(found)
    return [
        Detection(class_id=c, label=_label(labels, c), score=s, box=Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), obb=o)
        for c, s, b, o in zip(found.class_ids.tolist(), found.scores.tolist(), found.boxes.tolist(), oriented,
                              strict=True)
    ]


def _rotated(found: Detections) -> list[RotatedBox]:
    assert found.rotated is not None
    corners = rotated_corners(found.rotated).tolist()
    return [RotatedBox(cx=r[0], cy=r[1], width=r[2], height=r[3], angle=r[4], corners=c)
            for r, c in zip(found.rotated.tolist(), corners, strict=True)]


def detect(model: str, metadata: ModelMetadata, request_id: str, answer: Answer) -> DetectResponse:
    assert isinstance(answer.result, Detections)
    return DetectResponse(model=model, task=metadata.task, request_id=request_id, image=image_info(answer),
                          geometry=geometry_info(answer, metadata),
                          detections=detections(answer.result, metadata.labels))


def keypoints(model: str, metadata: ModelMetadata, request_id: str, answer: Answer,
              keypoint_confidence: float) -> KeypointsResponse:
    found = answer.result
    assert isinstance(found, Detections) and found.keypoints is not None and metadata.keypoints is not None
    names = metadata.keypoints.names
    instances = [
        PoseInstance(**detection.model_dump(), keypoints=[
            Joint(name=name, x=j[0], y=j[1], score=j[2], visible=j[2] >= keypoint_confidence)
            for name, j in zip(names, person, strict=True)])
        for detection, person in zip(detections(found, metadata.labels), found.keypoints.tolist(), strict=True)
    ]
    skeleton = [(names[a], names[b]) for a, b in metadata.keypoints.skeleton]
    return KeypointsResponse(model=model, task=metadata.task, request_id=request_id, image=image_info(answer),
                             geometry=geometry_info(answer, metadata), instances=instances, skeleton=skeleton)


def instances(model: str, metadata: ModelMetadata, request_id: str, answer: Answer, fmt: str,
              budget: int) -> InstanceSegmentResponse:
    """Instance masks in `fmt`; over the response budget, re-encoded as RLE, then dropped (said in notes)."""
    found = answer.result
    assert isinstance(found, Detections) and found.masks is not None
    height, width = answer.prepared.image.height, answer.prepared.image.width
    notes = list(found.notes)
    encoded, size = _encode_masks(found.masks, fmt, height, width)
    if size > budget and fmt != "rle":
        notes.append(f"{fmt} masks would take {size} bytes, over the {budget}-byte response budget "
                     "(STRIDE_MAX_RESPONSE_BYTES): sent as rle instead")
        fmt = "rle"
        encoded, size = _encode_masks(found.masks, fmt, height, width)
    if size > budget:
        notes.append(f"masks would take {size} bytes even as rle, over the {budget}-byte response budget: "
                     "masks dropped (mask is null); ask with a lower max_detections or a higher confidence")
        encoded = [None] * len(found.masks)
    items = [Instance(**d.model_dump(), mask=m, area=lm.area)
             for d, m, lm in zip(detections(found, metadata.labels), encoded, found.masks, strict=True)]
    return InstanceSegmentResponse(model=model, task=metadata.task, request_id=request_id, image=image_info(answer),
                                   geometry=geometry_info(answer, metadata), mask_format=fmt, instances=items,
                                   notes=notes)


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


def semantic(model: str, metadata: ModelMetadata, request_id: str, answer: Answer,
             fmt: str) -> SemanticSegmentResponse:
    classes = answer.result
    assert isinstance(classes, ClassMap)
    labels = metadata.labels
    height, width = classes.shape
    fractions = classes.fractions(len(labels))
    present = [int(c) for c in np.argsort(-fractions, kind="stable") if fractions[c] > 0]
    presence = [ClassPresence(class_id=c, label=_label(labels, c), pixel_fraction=float(fractions[c]))
                for c in present]
    if fmt == "png":
        segmentation = SegmentationMap(format="png", size=[height, width], data=classes.png_base64())
    else:
        segmentation = SegmentationMap(format="rle", size=[height, width], masks=[
            ClassMask(class_id=c, label=p.label, rle=RLE.model_validate(classes.rle(c)))
            for c, p in zip(present, presence, strict=True)])
    return SemanticSegmentResponse(model=model, task=metadata.task, request_id=request_id, image=image_info(answer),
                                   geometry=geometry_info(answer, metadata), segmentation=segmentation,
                                   classes=presence)


def embedding(model: str, metadata: ModelMetadata, request_id: str, answer: Answer) -> EmbedResponse:
    """The whole image's vector; instances are added by the route when a detector was asked for."""
    found = answer.result
    assert isinstance(found, Embeddings)
    vector = found.vectors[0]
    return EmbedResponse(model=model, task=metadata.task, request_id=request_id, image=image_info(answer),
                         dimension=int(vector.size), normalized=found.normalized, embedding=vector.tolist())


def embedded_instances(found: Detections, labels: list[str], vectors: list[np.ndarray]) -> list[EmbeddedInstance]:
    """Each detection with the vector of its crop, in the detections' order."""
    return [EmbeddedInstance(**d.model_dump(), embedding=v.tolist())
            for d, v in zip(detections(found, labels), vectors, strict=True)]
