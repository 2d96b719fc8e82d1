"""The model metadata contract: the only thing `training` and `service` share.

Every exported ONNX file carries its metadata in `metadata_props`, one key per top-level field of
`ModelMetadata`, each value a JSON document. The service reads this and nothing model-specific, so a
model trained anywhere is served correctly as long as it states its contract. Described for humans in
docs/model-contract.md; this module must stay free of torch, onnx and onnxruntime imports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONTRACT_VERSION = 1


class Task(StrEnum):
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    INSTANCE_SEGMENTATION = "instance_segmentation"
    SEMANTIC_SEGMENTATION = "semantic_segmentation"
    KEYPOINTS = "keypoints"
    EMBEDDING = "embedding"


class ResizePolicy(StrEnum):
    STRETCH = "stretch"  # resize both axes to the input size, aspect ratio not kept
    LETTERBOX = "letterbox"  # keep aspect ratio, pad the rest with pad_value, image centred
    CENTER_CROP = "center_crop"  # resize the short side (torchvision's Resize(int)), then crop the centre


class Interpolation(StrEnum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class ContractError(ValueError):
    """The metadata of a model file is missing or does not follow the contract."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """How an upright decoded image becomes the model's input tensor (NCHW float32)."""

    name: str = "images"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: Literal[1, 3]
    resize: ResizePolicy
    interpolation: Interpolation = Interpolation.BILINEAR
    antialias: bool = Field(
        default=True,
        description="true: Pillow's resampling (antialiased when shrinking, as torchvision on PIL images); "
        "false: OpenCV's cv2.resize (bilinear without antialiasing, as Ultralytics)",
    )
    channel_order: Literal["RGB", "BGR"] = Field(default="RGB", description="channel order of 3-channel inputs")
    pad_value: int = Field(default=0, ge=0, le=255, description="letterbox fill, in 8-bit pixel units")
    pad_to_stride: int | None = Field(
        default=None, gt=0,
        description="dynamic-shape letterbox: pad only to the next multiple of this stride, not to the full "
        "input size (Ultralytics' minimal rectangle); height and width are then the largest size",
    )
    crop_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description="center_crop: crop / resized size")
    scale: float = Field(default=1.0 / 255.0, description="multiplies 8-bit pixels before mean/std")
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dynamic_batch: bool = True

    @model_validator(mode="after")
    def _per_channel_normalisation(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values, one per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self

    @property
    def color_mode(self) -> Literal["L", "RGB"]:
        """The Pillow mode a decoded image is converted to before preprocessing."""
        return "L" if self.channels == 1 else "RGB"


OutputKind = Literal[
    "logits",  # classification [batch, class], or semantic segmentation [batch, class, height, width]
    "probabilities",  # classification [batch, class], already softmaxed
    "boxes",  # [batch, candidate, 4]: x1, y1, x2, y2 in model-input pixels
    "scores",  # [batch, candidate, class]: per-class probabilities (sigmoid applied in the graph)
    "mask_coefficients",  # [batch, candidate, prototype]
    "mask_prototypes",  # [batch, prototype, height / stride, width / stride]: mask = sigmoid(coeffs @ protos)
    "keypoints",  # [batch, candidate, joint, 3]: x, y in model-input pixels, visibility probability
    # Ultralytics YOLO layouts (family "ultralytics"; decoded as its predictor does):
    "yolo_candidates",  # [batch, 4 + classes (+ extra), candidate]: cx, cy, w, h, class scores, extra
    "yolo_end2end",  # [batch, max_det, 6 (+ extra)]: x1, y1, x2, y2, score, class, extra (NMS done in the graph)
    "embedding",  # [batch, dimension]: a feature vector per image, compared by cosine similarity
]


YOLO_KINDS = ("yolo_candidates", "yolo_end2end")


class OutputSpec(_Strict):
    """One output tensor. `layout` names its axes; `kind` says what the values mean."""

    name: str
    layout: str = Field(description="axis names, e.g. 'batch,class'")
    kind: OutputKind


class DetectionSpec(_Strict):
    """Detection-style heads (detection, instance segmentation, keypoints): one candidate per feature-map
    cell; the service filters by score, runs NMS and maps boxes back to the original image."""

    strides: list[int] = Field(default_factory=list, description="feature-map strides of the candidates, in order")
    candidates: int | None = Field(default=None, description="candidates per image at the input size")
    confidence: float = Field(default=0.25, ge=0, le=1, description="default score threshold of requests")
    iou: float = Field(default=0.45, ge=0, le=1, description="default NMS IoU threshold of requests")
    max_detections: int = Field(default=100, ge=1, le=1000, description="default cap on answers per image")
    rotated: bool = Field(default=False, description="oriented boxes: candidates carry an angle (radians)")


class MaskSpec(_Strict):
    """Instance masks from prototypes: sigmoid(coefficients @ prototypes), cropped to the box."""

    prototype_stride: int = Field(gt=0, description="input pixels per prototype pixel")
    prototypes: int = Field(gt=0)
    threshold: float = Field(default=0.5, gt=0, lt=1)


class KeypointSpec(_Strict):
    names: list[str] = Field(min_length=1, description="joint names, in output order")
    skeleton: list[tuple[int, int]] = Field(default_factory=list, description="edges as joint index pairs")


class EmbeddingSpec(_Strict):
    """Feature vectors compared by cosine similarity (retrieval, recognition of enrolled identities)."""

    normalized: bool = Field(default=False, description="the graph already L2-normalises its vectors")
    threshold: float | None = Field(
        default=None, ge=-1, le=1,
        description="cosine similarity above which two images show the same identity, measured at a 1% false "
        "accept rate on held-out identities; the default of /v1/collections/{name}/identify")


class GoldenSample(_Strict):
    """An input image as a user would send it, and the model's expected raw output for it."""

    image_png_base64: str
    expected: list[float] = Field(description="the first output tensor for this image, flattened")


class Golden(_Strict):
    """Train/serve parity check replayed by the service at load time."""

    atol: float = Field(gt=0)
    samples: list[GoldenSample] = Field(min_length=1)


class ModelMetadata(_Strict):
    contract_version: int = CONTRACT_VERSION
    task: Task
    labels: list[str] = Field(default_factory=list, description="class names; every task but embedding needs them")
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    model_version: str
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32", description="weights/compute precision; fp16 models need a GPU execution provider"
    )
    architecture: str
    training_data: str
    metrics: dict[str, float] = Field(default_factory=dict, description="held-out metrics")
    golden: Golden | None = None
    detection: DetectionSpec | None = None
    masks: MaskSpec | None = None
    keypoints: KeypointSpec | None = None
    embedding: EmbeddingSpec | None = None

    def output(self, kind: str) -> int:
        """Index of the output of this kind; ContractError if the model has none."""
        for index, spec in enumerate(self.outputs):
            if spec.kind == kind:
                return index
        raise ContractError(f"the {self.task} model declares no '{kind}' output")

    @model_validator(mode="after")
    def _task_requirements(self) -> ModelMetadata:
        needs: dict[Task, tuple[str, ...]] = {
            Task.CLASSIFICATION: (),
            Task.DETECTION: ("boxes", "scores"),
            Task.INSTANCE_SEGMENTATION: ("boxes", "scores", "mask_coefficients", "mask_prototypes"),
            Task.SEMANTIC_SEGMENTATION: ("logits",),
            Task.KEYPOINTS: ("boxes", "scores", "keypoints"),
            Task.EMBEDDING: ("embedding",),
        }
        kinds = {o.kind for o in self.outputs}
        if kinds & set(YOLO_KINDS):
            # One Ultralytics tensor carries boxes, scores and the extras; segmenters add the prototypes.
            needs = {task: ("mask_prototypes",) if task is Task.INSTANCE_SEGMENTATION else () for task in needs}
        missing = [kind for kind in needs[self.task] if kind not in kinds]
        if missing:
            raise ValueError(f"a {self.task} model needs outputs of kind {missing}")
        if self.task is Task.CLASSIFICATION and not kinds & {"logits", "probabilities"}:
            raise ValueError("a classification model needs a 'logits' or 'probabilities' output")
        if self.task in (Task.DETECTION, Task.INSTANCE_SEGMENTATION, Task.KEYPOINTS) and self.detection is None:
            raise ValueError(f"a {self.task} model needs the 'detection' section")
        if self.task is Task.INSTANCE_SEGMENTATION and self.masks is None:
            raise ValueError("an instance_segmentation model needs the 'masks' section")
        if self.task is Task.KEYPOINTS and self.keypoints is None:
            raise ValueError("a keypoints model needs the 'keypoints' section")
        if self.task is not Task.EMBEDDING and not self.labels:
            raise ValueError(f"a {self.task} model needs labels (at least one)")
        return self

    @model_validator(mode="after")
    def _supported_version(self) -> ModelMetadata:
        if self.contract_version > CONTRACT_VERSION:
            raise ValueError(
                f"contract_version {self.contract_version} is newer than this service understands "
                f"({CONTRACT_VERSION}); upgrade Stride"
            )
        return self


def to_metadata_props(meta: ModelMetadata) -> dict[str, str]:
    """One `metadata_props` entry per top-level field, each value JSON."""
    dumped = meta.model_dump(mode="json", exclude_none=True)
    return {key: json.dumps(value, separators=(",", ":")) for key, value in dumped.items()}


def from_metadata_props(props: Mapping[str, str]) -> ModelMetadata:
    """Parse the `metadata_props` of a model; raises ContractError naming what is wrong."""
    known = set(ModelMetadata.model_fields)
    fields: dict[str, object] = {}
    for key, raw in props.items():
        if key not in known:
            continue  # other tools' keys (producer notes, licences) are allowed and ignored
        try:
            fields[key] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ContractError(f"metadata key '{key}' is not valid JSON: {exc.msg}") from exc
    if "task" not in fields:
        raise ContractError(
            "the model has no Stride metadata ('task' key missing); export it with "
            "`python -m training export` or add the keys described in docs/model-contract.md"
        )
    try:
        return ModelMetadata.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ContractError(f"metadata does not follow the contract: {problems}") from exc
