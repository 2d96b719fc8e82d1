"""Pydantic models of every response body (errors: service.errors.ErrorResponse)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from service.contract import DetectionSpec, EmbeddingSpec, InputSpec, KeypointSpec, MaskSpec, OutputSpec, Task


class ImageInfo(BaseModel):
    width: int = Field(description="width of the upright image (EXIF orientation applied)")
    height: int = Field(description="height of the upright image")
    format: str = Field(description="the decoded file format, e.g. PNG or JPEG")


class ClassPrediction(BaseModel):
    class_id: int
    label: str
    score: float = Field(description="probability in [0, 1]")


class ClassifyResponse(BaseModel):
    model: str
    task: Task
    request_id: str
    image: ImageInfo
    predictions: list[ClassPrediction] = Field(description="sorted by score, highest first")


class ModelInfo(BaseModel):
    name: str
    task: Task | None
    status: str = Field(description="loading, ready, failed or unavailable (valid, but not for this host)")
    reason: str | None = Field(default=None, description="why the model is not ready")
    version: str | None = None
    architecture: str | None = None
    provider: str | None = Field(default=None, description="ONNX Runtime execution provider in use")
    input: InputSpec | None = None
    outputs: list[OutputSpec] | None = None
    labels: list[str] | None = None
    metrics: dict[str, float] | None = Field(default=None, description="held-out metrics from training")
    training_data: str | None = None
    precision: str | None = None
    detection: DetectionSpec | None = Field(default=None, description="detection-style heads: strides")
    masks: MaskSpec | None = Field(default=None, description="instance masks: prototype stride and count")
    keypoints: KeypointSpec | None = Field(default=None, description="joint names and skeleton")
    embedding: EmbeddingSpec | None = Field(
        default=None, description="embedding models: whether vectors are normalised, the identify threshold")
    file: str
    family: str | None = Field(default=None, description="how the file was understood: stride, ultralytics")
    metadata_source: str | None = Field(
        default=None, description="where the contract came from: embedded, ultralytics metadata, sidecar NAME.yaml")
    sha256: str | None = Field(default=None, description="SHA-256 of the model file this version was loaded from")
    description_sha256: str | None = Field(default=None, description="SHA-256 of its NAME.yaml, when it has one")
    loaded_at: datetime | None = Field(default=None, description="when this version was loaded (UTC)")
    load_seconds: float | None = Field(default=None, description="how long loading and verifying it took")
    pending_failure: PendingFailureInfo | None = Field(
        default=None, description="a changed file that failed to load or verify; the version above still serves")


class PendingFailureInfo(BaseModel):
    sha256: str = Field(description="SHA-256 of the file that failed")
    reason: str
    failed_at: datetime


class ModelList(BaseModel):
    models: list[ModelInfo]
    defaults: dict[str, str | None] = Field(description="the default model of each task")


class HealthResponse(BaseModel):
    status: str
    reason: str | None = None
    models: dict[str, str] = Field(default_factory=dict, description="model name -> status")


class GeometryInfo(BaseModel):
    """How the image was fitted to the model: input = original * scale + pad (per axis)."""

    exif_orientation: int = Field(description="EXIF orientation tag applied before anything else (1 = none)")
    resize: str = Field(description="stretch, letterbox or center_crop")
    scale_x: float
    scale_y: float
    pad_x: float = Field(description="offset added after scaling; negative for a centre crop")
    pad_y: float
    input_width: int
    input_height: int


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class RotatedBox(BaseModel):
    """An oriented box (models with rotated boxes, e.g. YOLO-OBB); `box` beside it encloses it."""

    cx: float
    cy: float
    width: float
    height: float
    angle: float = Field(description="radians, as the model gives it (rotation of width from the x axis)")
    corners: list[list[float]] = Field(description="the four corners as [x, y], in order around the box")


class Detection(BaseModel):
    class_id: int
    label: str
    score: float
    box: Box = Field(description="in pixels of the original, EXIF-upright image")
    obb: RotatedBox | None = Field(default=None, description="the rotated box, for models that give one")


class DetectResponse(BaseModel):
    model: str
    task: Task
    request_id: str
    image: ImageInfo
    geometry: GeometryInfo
    detections: list[Detection] = Field(description="sorted by score, highest first")


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE, column-major (pycocotools.mask.decode reads it)")


class Instance(Detection):
    mask: RLE | list[list[list[float]]] | str | None = Field(
        description="rle: COCO RLE; polygon: outer boundaries as lists of [x, y]; png: base64 1-bit PNG; "
        "null when masks were dropped to keep the response within its budget"
    )
    area: int = Field(description="mask area in original pixels")


class InstanceSegmentResponse(BaseModel):
    model: str
    task: Task
    request_id: str
    image: ImageInfo
    geometry: GeometryInfo
    mask_format: str = Field(description="the format the masks are in (may differ from the one asked for)")
    instances: list[Instance]
    notes: list[str] = Field(default_factory=list, description="e.g. why masks were re-encoded or dropped")


class ClassMask(BaseModel):
    class_id: int
    label: str
    rle: RLE


class SegmentationMap(BaseModel):
    format: str = Field(description="png: one class-id PNG; rle: one COCO RLE per present class")
    size: list[int] = Field(description="[height, width] of the original image")
    data: str | None = Field(default=None, description="png: base64 8-bit PNG whose pixel values are class ids")
    masks: list[ClassMask] | None = Field(default=None, description="rle: one mask per present class")


class ClassPresence(BaseModel):
    class_id: int
    label: str
    pixel_fraction: float


class SemanticSegmentResponse(BaseModel):
    model: str
    task: Task
    request_id: str
    image: ImageInfo
    geometry: GeometryInfo
    segmentation: SegmentationMap
    classes: list[ClassPresence] = Field(description="present classes, largest first")


class Joint(BaseModel):
    name: str
    x: float
    y: float
    score: float
    visible: bool = Field(description="score >= keypoint_confidence")


class PoseInstance(Detection):
    keypoints: list[Joint] = Field(description="every joint, in the model's order")


class KeypointsResponse(BaseModel):
    model: str
    task: Task
    request_id: str
    image: ImageInfo
    geometry: GeometryInfo
    instances: list[PoseInstance]
    skeleton: list[tuple[str, str]] = Field(description="edges between joints, by name")


class EmbeddedInstance(Detection):
    """A detected object and the vector of its crop (the box's pixels from the upright image)."""

    embedding: list[float]


class EmbedResponse(BaseModel):
    model: str
    task: Task
    request_id: str
    image: ImageInfo
    dimension: int = Field(description="length of each vector")
    normalized: bool = Field(description="true: the vectors are L2-normalised (cosine similarity = dot product)")
    embedding: list[float] = Field(description="the whole image's vector")
    detector: str | None = Field(default=None, description="the detection model whose boxes were embedded")
    instances: list[EmbeddedInstance] | None = Field(
        default=None, description="with detector=D: each detected object's box and vector, highest score first")


class CollectionInfo(BaseModel):
    name: str
    model: str = Field(description="the embedding model the collection was built with")
    model_sha256: str = Field(description="SHA-256 of that model's file when the collection was created")
    dimension: int
    size: int = Field(description="items stored")
    distance: str = Field(default="cosine", description="scores are cosine similarity, higher is better")


class CollectionCreated(CollectionInfo):
    created: bool = Field(description="false when it already existed with the same model (PUT is idempotent)")


class CollectionList(BaseModel):
    backend: str = Field(description="local (embedded store, one process) or server (Qdrant server)")
    collections: list[CollectionInfo]


class ItemAdded(BaseModel):
    collection: str
    model: str
    request_id: str
    id: str
    label: str | None
    metadata: dict[str, Any]
    replaced: bool = Field(description="true when an item with this id was replaced (replace=true)")


class MatchInfo(BaseModel):
    id: str
    label: str | None
    score: float = Field(description="cosine similarity to the query image, in [-1, 1]; higher is better")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    collection: str
    model: str
    request_id: str
    image: ImageInfo
    matches: list[MatchInfo] = Field(description="best first; empty when the collection is empty")


class IdentifyResponse(BaseModel):
    collection: str
    model: str
    request_id: str
    image: ImageInfo
    threshold: float = Field(description="the cosine similarity a match must exceed")
    match: MatchInfo | None = Field(description="the best match above the threshold, or null: unknown")


class Deleted(BaseModel):
    collection: str
    id: str | None = Field(default=None, description="the item deleted; null when the collection was deleted")
