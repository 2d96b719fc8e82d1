"""Query parameters shared by the inference routes, and their parsing into engine queries."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from service import errors

ModelName = Annotated[str | None, Query(description="model name; default: the task's default model")]
Confidence = Annotated[float | None, Query(ge=0.0, le=1.0, description=(
    "minimum score; default: the model's own (0.25 for Stride and Ultralytics models, see /v1/models)"))]
Iou = Annotated[float | None, Query(ge=0.0, le=1.0, description=(
    "NMS IoU threshold; default: the model's own (Stride 0.45, Ultralytics 0.7)"))]
MaxDetections = Annotated[int | None, Query(ge=1, le=1000, description=(
    "at most this many results per image; default: the model's own (Stride 100, Ultralytics 300)"))]
Classes = Annotated[str | None, Query(description="comma-separated labels or class ids to keep")]
Agnostic = Annotated[bool, Query(description="NMS across classes")]


def class_filter(raw: str | None, labels: list[str]) -> frozenset[int] | None:
    """`classes=car,2` -> {index of "car", 2}; None keeps every class."""
    if raw is None or not raw.strip():
        return None
    chosen = set()
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        if item in labels:
            chosen.add(labels.index(item))
        elif item.isascii() and item.isdigit() and int(item) < len(labels):
            chosen.add(int(item))
        else:
            raise errors.invalid_parameter("classes", f"'{item}' is neither a label nor a class id of this model "
                                           f"({len(labels)} classes: see /v1/models for its labels)")
    return frozenset(chosen)
