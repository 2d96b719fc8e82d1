"""Prometheus metrics, on a registry of the app's own so that several apps (tests) never collide.

With several worker processes (STRIDE_WORKERS > 1) prometheus-client runs in its multiprocess mode: the
supervisor sets PROMETHEUS_MULTIPROC_DIR before any worker starts, every worker writes its values to files
there, and /metrics, whichever worker answers it, collects all of them. Counters and histograms add up
over the workers (a dead worker's counts stay, as counters must); each gauge says how its workers' values
combine (`multiprocess_mode`), over live workers only (the supervisor marks a dead worker's pid).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from service.batching import BatchStats
from service.registry import ModelEntry, ModelEvents

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# `_created` series double the output and no dashboard reads them.
disable_created_metrics()

# Read by prometheus-client when it is first imported: set by the supervisor before workers start.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often a worker copies its function gauges (read from live objects) into the shared files.
FUNCTION_GAUGE_REFRESH_S = 0.25


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_mode()
        self._followed: dict[tuple[Gauge, str], tuple[Gauge, Callable[[], float]]] = {}
        self._followed_lock = threading.Lock()
        self.requests = Counter(
            "stride_requests", "HTTP requests", ["route", "model", "status"], registry=self.registry
        )
        self.request_latency = Histogram(
            "stride_request_duration_seconds", "HTTP request latency, body read to response sent",
            ["route", "model", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.inference_latency = Histogram(
            "stride_inference_duration_seconds", "ONNX Runtime run latency, one observation per batch", ["model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.images_decoded = Counter(
            "stride_images_decoded", "images decoded, by file format", ["format"], registry=self.registry
        )
        self.errors = Counter(
            "stride_errors", "error responses, by error code", ["code"], registry=self.registry
        )
        self.model_ready = Gauge(
            "stride_model_ready", "1 when the model is ready, 0 otherwise", ["model", "task", "provider"],
            registry=self.registry, multiprocess_mode="livemin",  # ready only where every worker has it ready
        )

        self.stage_latency = Histogram(
            "stride_stage_duration_seconds", "time per pipeline stage: decode, preprocess, queue, inference, "
            "postprocess, serialize", ["model", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "stride_batch_size", "images per ONNX Runtime run", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry,
        )
        self.queue_depth = Gauge(
            "stride_queue_depth", "tensors waiting for the model's next batch", ["model"], registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.inflight = Gauge(
            "stride_inflight_requests", "requests admitted for the model and not finished", ["model"],
            registry=self.registry, multiprocess_mode="livesum",
        )

        self.model_loads = Counter(
            "stride_model_loads", "model file loads, by outcome: ready, failed or unavailable", ["model", "outcome"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "stride_model_swaps", "a changed model file loaded and swapped in while serving", ["model"],
            registry=self.registry,
        )
        self.model_removals = Counter(
            "stride_model_removals", "models that stopped serving because their file was removed", ["model"],
            registry=self.registry,
        )
        self.admission_refusals = Counter(
            "stride_admission_refusals", "requests answered 503 before their body was read, by reason",
            ["model", "reason"], registry=self.registry,
        )
        self.admission_limit = Gauge(
            "stride_admission_limit", "requests the model admits at once (early admission)", ["model"],
            registry=self.registry, multiprocess_mode="livesum",  # the workers' limits add up
        )

    def model_events(self) -> ModelEvents:
        """The registry's hooks: load outcomes, swaps and removals, and the per-model gauges kept current."""

        def on_loaded(entry: ModelEntry) -> None:
            self.model_loads.labels(entry.name, entry.status.value).inc()

        def on_published(new: ModelEntry, old: ModelEntry | None) -> None:
            if old is not None:
                self._forget(old)
                if old.serving and new.serving:
                    self.model_swaps.labels(new.name).inc()
            self.model_ready.labels(*_ready_labels(new)).set(1.0 if new.serving else 0.0)
            if new.batcher is not None:
                self.follow(self.inflight, (new.name,), lambda b=new.batcher: b.in_flight)

        def on_removed(entry: ModelEntry) -> None:
            self._forget(entry)
            self.model_removals.labels(entry.name).inc()

        return ModelEvents(on_loaded=on_loaded, on_published=on_published, on_removed=on_removed)

    def _forget(self, entry: ModelEntry) -> None:
        """Drop the series of a version that no longer serves (a new one may differ in task or provider)."""
        for gauge, labels in ((self.model_ready, _ready_labels(entry)), (self.inflight, (entry.name,))):
            self._unfollow(gauge, labels)
            if self.multiprocess:  # the shared files keep a removed series: 0 is the truth about it
                gauge.labels(*labels).set(0.0)
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def batch_stats(self, model: str) -> BatchStats:
        sizes, latency = self.batch_size.labels(model), self.inference_latency.labels(model)

        def on_batch(size: int, seconds: float) -> None:
            sizes.observe(size)
            latency.observe(seconds)

        return BatchStats(on_batch=on_batch, on_depth=self.queue_depth.labels(model).set)

    def follow(self, gauge: Gauge, labels: tuple[str, ...], read: Callable[[], float]) -> None:
        """The gauge's value is `read()` at scrape time. In multiprocess mode the scrape may be answered
        by another worker, which cannot call it: a thread copies it into the shared files instead."""
        child = gauge.labels(*labels)
        if not self.multiprocess:
            child.set_function(read)
            return
        with self._followed_lock:
            self._followed[(gauge, "\0".join(labels))] = (child, read)
            if not hasattr(self, "_refresher"):
                self._refresher = threading.Thread(target=self._refresh_followed, name="stride-metrics",
                                                   daemon=True)
                self._refresher.start()

    def _unfollow(self, gauge: Gauge, labels: tuple[str, ...]) -> None:
        with self._followed_lock:
            self._followed.pop((gauge, "\0".join(labels)), None)

    def _refresh_followed(self) -> None:
        never = threading.Event()  # daemon thread: it ends with the worker process
        while not never.wait(FUNCTION_GAUGE_REFRESH_S):
            with self._followed_lock:
                followed = list(self._followed.values())
            for child, read in followed:
                child.set(read())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()  # a fresh one per scrape, as prometheus-client's docs prescribe
        MultiProcessCollector(every_worker)
        return generate_latest(every_worker)


def _ready_labels(entry: ModelEntry) -> tuple[str, str, str]:
    return entry.name, entry.task.value if entry.task else "", entry.provider or ""
