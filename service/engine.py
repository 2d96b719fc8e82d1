"""The engine: one request's images through every stage, outside the HTTP layer.

bytes -> decoded image -> tensor (the model family's preprocessing) -> the model's dynamic batcher ->
ONNX Runtime -> the family's decoder -> the task's result type (service.results).

Decoding and preprocessing run in the worker pool, inference in the model's batcher thread, decoding of
the outputs back in the worker pool; the stages hand over thread to thread and the event loop wakes once
per image, when its answer is ready. The whole request shares one deadline (504 after it); each image
holds a place in the model's admission budget from before decoding until its chain ends (503 when full).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from service import errors
from service.config import Settings
from service.contract import DetectionSpec, ModelMetadata
from service.families import Query, ServedModel
from service.metrics import Metrics
from service.payload import ImageSource
from service.pipeline import Prepared, StageTimes, decode_and_prepare, postprocess
from service.registry import ModelEntry
from service.results import TaskResult
from service.tasks.detection import DetectionQuery

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Answer:
    """One image's result, with what was done to the image to get it."""

    prepared: Prepared  # the decoded upright image, its tensor and the geometry back to its pixels
    result: TaskResult


def detection_query(metadata: ModelMetadata, *, confidence: float | None, iou: float | None,
                    max_detections: int | None, classes: frozenset[int] | None,
                    agnostic: bool) -> DetectionQuery:
    """A request's detection parameters; the ones it leaves out take the model's own defaults."""
    defaults = metadata.detection or DetectionSpec()
    return DetectionQuery(
        confidence=defaults.confidence if confidence is None else confidence,
        iou=defaults.iou if iou is None else iou,
        max_detections=defaults.max_detections if max_detections is None else max_detections,
        classes=classes,
        agnostic=agnostic,
    )


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics, executor: Executor) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = executor

    async def infer(self, entry: ModelEntry, sources: list[ImageSource], query: Query,
                    finish: Callable[[Answer], R]) -> tuple[list[R], StageTimes]:
        """Every image of a request, in order, each turned by `finish` into what the caller sends (run in
        the worker pool with the post-processing stage: mask encoding and drawing are CPU work too), with
        the request's stage times summed."""
        model = entry.ready_model
        timeout = self.settings.request_timeout_s

        def decode_and_finish(prepared: Prepared, outputs: list[Any]) -> R:
            return finish(Answer(prepared, model.decode(outputs, prepared.geometry, query)))

        chain: _ImageChain[R] = _ImageChain(entry, model, self, time.perf_counter() + timeout, decode_and_finish)
        try:
            async with asyncio.timeout(timeout):
                if len(sources) == 1:
                    done = [await chain.run(sources[0])]
                else:
                    done = await _all_in_order([chain.run(source) for source in sources])
        except TimeoutError as exc:
            raise errors.timed_out(timeout) from exc

        total = StageTimes()
        stage_latency = self.metrics.stage_latency
        for _, times in done:
            for stage, seconds in times.seconds.items():
                stage_latency.labels(entry.name, stage).observe(seconds)
            total.merge(times)
        return [result for result, _ in done], total


class _ImageChain(Generic[R]):
    """One request's images through the stages; each image's chain reports back to the loop once."""

    def __init__(self, entry: ModelEntry, model: ServedModel, engine: Engine, deadline: float,
                 decode_output: Callable[[Prepared, list[Any]], R]) -> None:
        assert entry.batcher is not None
        self.batcher, self.model, self.engine = entry.batcher, model, engine
        self.deadline = deadline
        self.decode_output = decode_output

    async def run(self, source: ImageSource) -> tuple[R, StageTimes]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[R, StageTimes]] = loop.create_future()
        admission = self.batcher.admit()
        times = StageTimes()
        settings, metrics = self.engine.settings, self.engine.metrics

        def settle(value: Any = None, error: BaseException | None = None) -> None:
            admission.__exit__(None, None, None)
            loop.call_soon_threadsafe(_settle, answer, value, error)

        def decode_stage() -> None:
            try:
                prepared = decode_and_prepare(source, self.model, max_pixels=settings.max_image_pixels,
                                              jpeg_draft=settings.jpeg_draft, times=times)
                metrics.images_decoded.labels(prepared.image.format).inc()
                inferred = self.batcher.submit(admission, prepared.tensor, self.deadline)
                inferred.add_done_callback(lambda f: self._submit(post_stage, prepared, f, settle=settle))
            except BaseException as exc:  # every failure travels to the awaiting request
                settle(error=exc)

        def post_stage(prepared: Prepared, inferred: Future) -> None:
            try:
                outputs, queued, ran = inferred.result()
                times.add("queue", queued)
                times.add("inference", ran)
                result = postprocess(lambda: self.decode_output(prepared, outputs), times)
                settle((result, times))
            except BaseException as exc:
                settle(error=exc)

        self._submit(decode_stage, settle=settle)
        return await answer

    def _submit(self, fn: Callable[..., None], *args: Any, settle: Callable[..., None]) -> None:
        try:
            self.engine.executor.submit(fn, *args)
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
