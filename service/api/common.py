"""Shared route plumbing: the per-image pipeline across threads and batcher, and the documented errors."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from typing import Any, Generic, TypeVar

import numpy as np
from fastapi import Request, Response
from pydantic import BaseModel, TypeAdapter

from service import errors
from service.errors import ErrorResponse
from service.payload import ImageSource
from service.pipeline import Prepared, StageTimes, decode_and_prepare, postprocess
from service.registry import ModelEntry

R = TypeVar("R")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "empty body, not an image, corrupt or truncated image"},
    401: {"model": ErrorResponse, "description": "API key missing or wrong (when STRIDE_API_KEY is set)"},
    408: {"model": ErrorResponse, "description": "the client stopped sending the body"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "body over the size limit or image over the pixel limit"},
    415: {"model": ErrorResponse, "description": "unsupported content type or image format"},
    422: {"model": ErrorResponse, "description": "invalid parameter"},
    503: {"model": ErrorResponse, "description": "not ready, model unavailable, overloaded or draining"},
    504: {"model": ErrorResponse, "description": "the request timed out"},
}

IMAGE_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {
                               "type": "array", "items": {"type": "string", "format": "binary"},
                               "description": "one image, or several (repeat the field) for a list answer"}}},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string",
                                                    "description": "base64 or data URI of the image"}}},
            },
        },
    }
}


async def run_images(
    request: Request,
    entry: ModelEntry,
    sources: list[ImageSource],
    decode_output: Callable[[Prepared, list[np.ndarray]], R],
) -> tuple[list[tuple[Prepared, R]], StageTimes]:
    """Every image through decode -> preprocess -> batched inference -> task decoding, in order.

    The stages hand over thread to thread (worker pool -> batcher thread -> worker pool) and the event
    loop wakes once per image, when its answer is ready. The whole request shares one deadline (504 after
    it); each image holds a place in the model's admission budget from before decoding until its chain
    ends (503 when the budget is full).
    """
    state = request.app.state
    assert entry.batcher is not None and entry.metadata is not None
    settings = state.settings
    timeout = settings.request_timeout_s
    deadline = time.perf_counter() + timeout
    pipeline = _Pipeline(entry, state.executor, state.metrics, settings.max_image_pixels, settings.jpeg_draft,
                         deadline, decode_output)
    try:
        async with asyncio.timeout(timeout):
            if len(sources) == 1:
                done = [await pipeline.run(sources[0])]
            else:
                done = await _all_in_order([pipeline.run(source) for source in sources])
    except TimeoutError as exc:
        raise errors.timed_out(timeout) from exc

    total = StageTimes()
    stage_latency = state.metrics.stage_latency
    for _, _, times in done:
        for stage, seconds in times.seconds.items():
            stage_latency.labels(entry.name, stage).observe(seconds)
        total.merge(times)
    return [(prepared, result) for prepared, result, _ in done], total


class _Pipeline(Generic[R]):
    """One request's images through the stages; each image's chain reports back to the loop once."""

    def __init__(self, entry: ModelEntry, executor: Executor, metrics: Any, max_pixels: int, jpeg_draft: bool,
                 deadline: float, decode_output: Callable[[Prepared, list[np.ndarray]], R]) -> None:
        assert entry.batcher is not None and entry.metadata is not None
        self.batcher, self.metadata = entry.batcher, entry.metadata
        self.executor, self.metrics = executor, metrics
        self.max_pixels, self.jpeg_draft, self.deadline = max_pixels, jpeg_draft, deadline
        self.decode_output = decode_output

    async def run(self, source: ImageSource) -> tuple[Prepared, R, StageTimes]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[Prepared, R, StageTimes]] = loop.create_future()
        admission = self.batcher.admit()
        times = StageTimes()

        def settle(value: Any = None, error: BaseException | None = None) -> None:
            admission.__exit__(None, None, None)
            loop.call_soon_threadsafe(_settle, answer, value, error)

        def decode_stage() -> None:
            try:
                prepared = decode_and_prepare(source, self.metadata, max_pixels=self.max_pixels,
                                              jpeg_draft=self.jpeg_draft, times=times)
                self.metrics.images_decoded.labels(prepared.image.format).inc()
                inferred = self.batcher.submit(admission, prepared.tensor, self.deadline)
                inferred.add_done_callback(lambda f: self._submit(post_stage, prepared, f, settle=settle))
            except BaseException as exc:  # every failure travels to the awaiting request
                settle(error=exc)

        def post_stage(prepared: Prepared, inferred: Future) -> None:
            try:
                outputs, queued, ran = inferred.result()
                times.add("queue", queued)
                times.add("inference", ran)
                result = postprocess(functools.partial(self.decode_output, prepared, outputs), times)
                settle((prepared, result, times))
            except BaseException as exc:
                settle(error=exc)

        self._submit(decode_stage, settle=settle)
        return await answer

    def _submit(self, fn: Callable[..., None], *args: Any, settle: Callable[..., None]) -> None:
        try:
            self.executor.submit(fn, *args)
        except RuntimeError as exc:  # the pool is shut down: the server is stopping
            settle(error=errors.not_ready(f"shutting down ({exc})"))


def _settle(answer: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if answer.done():  # the request timed out or was cancelled meanwhile
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(value)


async def _all_in_order(coroutines: list[Coroutine[Any, Any, R]]) -> list[R]:
    """Run concurrently; the first failure cancels the rest and is raised as itself (not as a group)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coroutines]
    except ExceptionGroup as failure:
        raise _first_leaf(failure) from None
    return [task.result() for task in tasks]


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def json_response(request: Request, model_name: str, body: BaseModel | list[Any], times: StageTimes) -> Response:
    """Serialise with pydantic's own encoder (timed as a stage) and attach `Server-Timing`."""
    started = time.perf_counter()
    content = body.model_dump_json().encode() if isinstance(body, BaseModel) else _LIST_ADAPTER.dump_json(body)
    elapsed = time.perf_counter() - started
    times.add("serialize", elapsed)
    request.app.state.metrics.stage_latency.labels(model_name, "serialize").observe(elapsed)
    return Response(content, media_type="application/json", headers={"Server-Timing": times.server_timing()})


_LIST_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(list[Any])
