"""One protocol inference, independent of REST or gRPC: the request's input checked against the model,
split into items for the model's dynamic batcher (the same admission limit, deadline and metrics as /v1),
and the outputs stacked back and selected.

Protocol front ends decode their wire format into InputTensors (in the worker pool), call `infer`, and
encode the OutputTensors it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from service import errors
from service.api import encode
from service.api.v2 import datatypes
from service.api.v2.errors import fail
from service.api.v2.models import Signature, signature
from service.api.v2.tensors import InputTensor, OutputTensor
from service.contract import ModelMetadata, Task
from service.engine import Answer, detection_query
from service.families import ClassifyQuery, Query, SemanticQuery
from service.payload import ImageSource
from service.registry import ModelEntry


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready for the batcher: one [C, H, W] item per batch entry, and the outputs to answer."""

    items: np.ndarray  # [N, C, H, W]
    outputs: list[int]  # indexes into the model's outputs, in the order to answer them


@dataclass(frozen=True, slots=True)
class EncodedImages:
    """A request whose BYTES input holds encoded images (JPEG, PNG...): they take the /v1 path (guarded
    decoding, the model's own preprocessing, its family's decoder) and answer the /v1 JSON per image."""

    sources: list[ImageSource]


# The one output of an image request: per image, the JSON answer the model's /v1 route gives.
IMAGE_ANSWER_OUTPUT = "answer"


def prepare(entry: ModelEntry, inputs: list[InputTensor], requested: list[str] | None) -> Prepared | EncodedImages:
    """Check a decoded request against the model; BYTES inputs go to the image path. Runs in a worker."""
    described = signature(entry)
    images = [tensor for tensor in inputs if tensor.datatype == datatypes.BYTES]
    if images:
        return encoded_images(entry, inputs, requested)
    return Prepared(items=input_batch(entry.name, described, inputs), outputs=output_indexes(described, requested))


def encoded_images(entry: ModelEntry, inputs: list[InputTensor], requested: list[str] | None) -> EncodedImages:
    """A BYTES input of shape [N] or [N, 1], one encoded image file per element."""
    if len(inputs) != 1:
        fail(f"an image request to model '{entry.name}' has exactly one BYTES input (the encoded images); "
             f"this one has {len(inputs)} inputs")
    (tensor,) = inputs
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1) or tensor.shape[0] < 1:
        fail(f"input '{tensor.name}' holds encoded images: its shape is [N] or [N, 1] with N >= 1, "
             f"not {list(tensor.shape)}")
    if requested not in (None, [IMAGE_ANSWER_OUTPUT]):
        fail(f"an image request answers one BYTES output, '{IMAGE_ANSWER_OUTPUT}' (the /v1 JSON answer per image); "
             f"asked for {requested}")
    return EncodedImages([ImageSource(bytes(element), "binary") for element in tensor.values])


async def infer_images(state: Any, entry: ModelEntry, images: EncodedImages) -> list[OutputTensor]:
    """Each image through the engine with the model's default parameters; the answers as JSON text."""
    meta = entry.ready_model.metadata
    query, to_answer = _task_answer(entry.name, meta)
    answers, _ = await state.engine.infer(entry, images.sources, query,
                                          lambda answer: to_answer(answer).model_dump_json().encode())
    return [OutputTensor(IMAGE_ANSWER_OUTPUT, datatypes.BYTES, np.array(answers, dtype=object))]


def _task_answer(model: str, meta: ModelMetadata) -> tuple[Query, Callable[[Answer], BaseModel]]:
    """The query with the model's defaults, and the /v1 encoder of its task (as its /v1 route answers)."""
    if meta.task is Task.CLASSIFICATION:
        return ClassifyQuery(), lambda answer: encode.classification(model, meta, "", answer)
    if meta.task is Task.SEMANTIC_SEGMENTATION:
        return SemanticQuery(), lambda answer: encode.semantic(model, meta, "", answer, "png")
    query = detection_query(meta, confidence=None, iou=None, max_detections=None, classes=None, agnostic=False)
    if meta.task is Task.INSTANCE_SEGMENTATION:
        return query, lambda answer: encode.instances(model, meta, "", answer, "rle", 1 << 62)
    if meta.task is Task.KEYPOINTS:
        return query, lambda answer: encode.keypoints(model, meta, "", answer, 0.5)
    return query, lambda answer: encode.detect(model, meta, "", answer)


def input_batch(model: str, described: Signature, inputs: list[InputTensor]) -> np.ndarray:
    wanted = described.input
    expected = f"'{wanted.name}' ({wanted.datatype}, shape {wanted.shape})"
    if len(inputs) != 1:
        names = ", ".join(f"'{t.name}'" for t in inputs) or "none"
        fail(f"model '{model}' takes exactly one input, {expected}; the request has {names}")
    (tensor,) = inputs
    if tensor.name != wanted.name:
        fail(f"model '{model}' has no input '{tensor.name}'; its input is {expected}")
    if tensor.datatype != wanted.datatype:
        fail(f"input '{tensor.name}' of model '{model}' is {wanted.datatype}, not {tensor.datatype}")
    assert isinstance(tensor.values, np.ndarray)
    item_shape = tuple(wanted.shape[1:])
    if len(tensor.shape) != len(wanted.shape) or tensor.shape[1:] != item_shape:
        fail(f"input '{tensor.name}' of model '{model}' has shape {list(tensor.shape)}; it takes "
             f"{wanted.shape} (-1: any batch size from 1)")
    if tensor.shape[0] == 0:
        fail(f"input '{tensor.name}' has batch size 0; send at least one item")
    return tensor.values


def output_indexes(described: Signature, requested: list[str] | None) -> list[int]:
    names = described.output_names
    if requested is None:
        return list(range(len(names)))
    unknown = [name for name in requested if name not in names]
    if unknown:
        fail(f"the model has no output {', '.join(repr(n) for n in unknown)}; its outputs are {', '.join(names)}")
    if len(set(requested)) != len(requested):
        fail("an output is requested twice")
    return [names.index(name) for name in requested]


async def infer(state: Any, entry: ModelEntry, prepared: Prepared | EncodedImages,
                timeout_s: float) -> list[OutputTensor]:
    """Run every item through the model's batcher; 503 when its admission budget cannot hold them all,
    504 when the deadline passes. Awaits only: the work happens in the batcher thread."""
    if isinstance(prepared, EncodedImages):
        return await infer_images(state, entry, prepared)
    batcher = entry.batcher
    assert batcher is not None
    count = len(prepared.items)
    if count > batcher.policy.max_queue:
        fail(f"a batch of {count} is more than model '{entry.name}' admits at once "
             f"({batcher.policy.max_queue}, STRIDE_MAX_QUEUE); split it")
    deadline = time.perf_counter() + timeout_s
    with ExitStack() as admissions:
        # All items or none: a refusal releases the places already taken.
        places = [admissions.enter_context(batcher.admit()) for _ in range(count)]
        futures = [batcher.submit(place, item, deadline) for place, item in zip(places, prepared.items, strict=True)]
        try:
            async with asyncio.timeout(timeout_s):
                results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except TimeoutError as exc:
            raise errors.timed_out(timeout_s) from exc
        finally:
            for future in futures:
                future.cancel()  # the batcher skips items whose request has given up
    _observe_stages(state, entry.name, results)
    names = signature(entry).output_names
    outputs = []
    for index in prepared.outputs:
        stacked = np.stack([item_outputs[index] for item_outputs, _, _ in results])
        outputs.append(OutputTensor(names[index], datatypes.from_numpy(stacked.dtype), stacked))
    return outputs


def _observe_stages(state: Any, model: str, results: list[tuple[list[np.ndarray], float, float]]) -> None:
    stage_latency = state.metrics.stage_latency
    for _, queued, ran in results:
        stage_latency.labels(model, "queue").observe(queued)
        stage_latency.labels(model, "inference").observe(ran)
