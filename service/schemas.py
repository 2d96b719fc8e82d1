"""Pydantic models of every response body (errors: service.errors.ErrorResponse)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.contract import InputSpec, OutputSpec, Task


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
    file: str


class ModelList(BaseModel):
    models: list[ModelInfo]
    defaults: dict[str, str | None] = Field(description="the default model of each task")


class HealthResponse(BaseModel):
    status: str
    reason: str | None = None
    models: dict[str, str] = Field(default_factory=dict, description="model name -> status")
