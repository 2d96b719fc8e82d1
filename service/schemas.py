"""Pydantic models of every response body (errors: service.errors.ErrorResponse)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.contract import DetectionSpec, InputSpec, KeypointSpec, MaskSpec, OutputSpec, Task


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
    status: str = Field(description="loading, ready or failed")
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
    file: str
    family: str | None = Field(default=None, description="how the file was understood: stride, ultralytics")
    metadata_source: str | None = Field(
        default=None, description="where the contract came from: embedded, ultralytics metadata, sidecar NAME.yaml")


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
