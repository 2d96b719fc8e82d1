"""Per-model dynamic batching: concurrent requests to one model share one ONNX Runtime run.

One inference thread per model takes the oldest waiting tensor, adds whatever else is already queued
(up to `max_batch_size`), and waits up to `max_wait_ms` for more only while other requests for the model
are still being decoded, so a lone request never waits. A batch holds tensors of one shape only: a
dynamic-shape graph (Ultralytics' minimal-rectangle letterbox) gets same-shape groups, the others wait
for the next run in arrival order; padding them to one shape would change their answers. Admission is
bounded: when `max_queue` requests are in flight for a model, the next one is refused at once (503)
instead of piling up.

A batcher whose model file was replaced or removed is retired: it keeps serving what it admitted, and its
thread stops (releasing the session) once nothing is in flight. A request that resolved the old version
just before the swap but admits only after the thread stopped restarts it, so no request ever meets a
closed batcher; the thread stops again when that request is done.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from service import errors

log = logging.getLogger(__name__)

RunFn = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_batch_size", int(self.max_batch_size))
        object.__setattr__(self, "max_queue", int(self.max_queue))
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue < self.max_batch_size:
            # A concurrency cap below the batch size means batches can never fill: refuse the trap.
            raise ValueError(f"max_queue ({self.max_queue}) must be >= max_batch_size ({self.max_batch_size})")


@dataclass(slots=True, eq=False)
class _Item:
    tensor: np.ndarray
    future: Future[tuple[list[np.ndarray], float, float]]  # outputs, queue seconds, inference seconds
    enqueued: float
    deadline: float


@dataclass
class BatchStats:
    """Observer hooks, so the batcher stays free of any metrics library."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None
    on_depth: Callable[[int], None] = lambda depth: None


class DynamicBatcher:
    def __init__(self, name: str, run: RunFn, policy: BatchPolicy, *, fixed_batch: int | None = None,
                 stats: BatchStats | None = None) -> None:
        self.name = name
        self.policy = policy
        self._run = run
        # A graph exported with a fixed batch N runs exactly N at a time (padded); N=1 means one by one.
        self._fixed_batch = fixed_batch
        self._max_batch = fixed_batch if fixed_batch else policy.max_batch_size
        self._stats = stats or BatchStats()
        self._admitted = 0  # requests admitted and not yet finished (decoding, queued or running)
        self._preparing = 0  # admitted requests still being decoded: the ones worth waiting for
        self._queued = 0
        self._retired = False  # replaced or removed: stop the thread once nothing is in flight
        self._lock = threading.Lock()
        self._start_thread()

    def _start_thread(self) -> None:
        # Each thread has its own queue, so a stopping thread and its successor never share a sentinel.
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = threading.Thread(
            target=self._loop, args=(self._queue,), name=f"stride-batcher-{self.name}", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    # --- admission ------------------------------------------------------------------------------

    def admit(self) -> Admission:
        """Reserve a place for a request before any work is done for it; 503 when the model is full."""
        with self._lock:
            if self._admitted >= self.policy.max_queue:
                raise errors.overloaded(self.name, self.policy.max_queue)
            if self._thread is None:  # retired and idle, but a request that resolved this version came late
                self._start_thread()
            self._admitted += 1
            self._preparing += 1
            return Admission(self)

    def _release(self, still_preparing: bool) -> None:
        with self._lock:
            self._admitted -= 1
            if still_preparing:
                self._preparing -= 1
            if self._retired and self._admitted == 0:
                self._stop_thread()

    @property
    def in_flight(self) -> int:
        return self._admitted

    @property
    def running(self) -> bool:
        """Whether the inference thread is up (False once retired and idle, or closed)."""
        return self._thread is not None

    def retire(self) -> None:
        """The model was replaced or removed: finish what is in flight, then stop the thread."""
        with self._lock:
            self._retired = True
            if self._admitted == 0:
                self._stop_thread()

    # --- submission -----------------------------------------------------------------------------

    async def infer(self, admission: Admission, tensor: np.ndarray,
                    deadline: float) -> tuple[list[np.ndarray], float, float]:
        """Run one [C, H, W] tensor in the next batch; returns (outputs without batch axis, queue s, run s)."""
        return await asyncio.wrap_future(self.submit(admission, tensor, deadline))

    def submit(self, admission: Admission, tensor: np.ndarray,
               deadline: float) -> Future[tuple[list[np.ndarray], float, float]]:
        """Thread-safe, non-blocking: queue the tensor; the future resolves in the batcher thread, so a
        done-callback can hand the outputs straight to the next stage without a trip through the loop."""
        future: Future[tuple[list[np.ndarray], float, float]] = Future()
        with self._lock:
            if admission.preparing:
                admission.preparing = False
                self._preparing -= 1
            self._queued += 1
            self._stats.on_depth(self._queued)
        self._queue.put(_Item(tensor, future, time.perf_counter(), deadline))
        return future

    def close(self) -> None:
        """Stop now (server shutdown): queued requests are still run before the thread ends."""
        with self._lock:
            thread = self._thread
            self._retired = True  # a late request still gets answered, by a thread that stops after it
            self._stop_thread()
        if thread is not None:
            thread.join(timeout=5)

    # --- the inference thread -------------------------------------------------------------------

    def _loop(self, inbox: queue.SimpleQueue[_Item | None]) -> None:
        held: deque[_Item] = deque()  # taken from the inbox but of another shape than the batch
        while True:
            first = held.popleft() if held else inbox.get()
            if first is None:
                return
            batch = self._gather(first, inbox, held)
            try:
                self._run_batch(batch)
            except Exception as exc:  # a bug here must fail these requests, never kill the thread
                log.exception("batcher for model %s failed", self.name)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    def _gather(self, first: _Item, inbox: queue.SimpleQueue[_Item | None], held: deque[_Item]) -> list[_Item]:
        batch = [first]
        shape = first.tensor.shape
        earlier = list(held)
        held.clear()
        for item in earlier:
            (batch if item.tensor.shape == shape and len(batch) < self._max_batch else held).append(item)
        wait_until = time.perf_counter() + self.policy.max_wait_ms / 1000.0
        while len(batch) < self._max_batch:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                # Only wait when more requests for this model are on their way (being decoded now).
                if self._preparing <= 0 or time.perf_counter() >= wait_until:
                    break
                try:
                    item = inbox.get(timeout=max(0.0, wait_until - time.perf_counter()))
                except queue.Empty:
                    break
            if item is None:
                inbox.put(None)  # finish this batch, then stop
                break
            if item.tensor.shape != shape:
                held.append(item)
                continue
            batch.append(item)
        with self._lock:
            self._queued -= len(batch)  # held items stay counted as queued
            self._stats.on_depth(self._queued)
        return batch

    def _run_batch(self, batch: list[_Item]) -> None:
        now = time.perf_counter()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                continue  # the client's deadline already cancelled it
            if item.deadline <= now:
                item.future.set_exception(errors.timed_out_in_queue())
            else:
                live.append(item)
        if not live:
            return
        stacked = np.stack([item.tensor for item in live])
        padded = self._pad(stacked)
        started = time.perf_counter()
        try:
            outputs = self._run(padded)
        except Exception as exc:  # surfaced to every waiting request; the thread must survive
            log.exception("inference failed for model %s", self.name)
            for item in live:
                item.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._stats.on_batch(len(live), elapsed)
        for index, item in enumerate(live):
            item.future.set_result(([out[index] for out in outputs], started - item.enqueued, elapsed))

    def _pad(self, stacked: np.ndarray) -> np.ndarray:
        if not self._fixed_batch or len(stacked) == self._fixed_batch:
            return stacked
        padding = np.zeros((self._fixed_batch - len(stacked), *stacked.shape[1:]), dtype=stacked.dtype)
        return np.concatenate([stacked, padding])


@dataclass
class Admission:
    """A reserved place in a model's admission budget; release it when the request is done."""

    batcher: DynamicBatcher
    preparing: bool = True
    _released: bool = field(default=False)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._released:
            self._released = True
            self.batcher._release(self.preparing)
