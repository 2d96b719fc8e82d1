"""Prometheus metrics, on a registry of the app's own so that several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.batching import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# `_created` series double the output and no dashboard reads them.
disable_created_metrics()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
            registry=self.registry,
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
            "stride_queue_depth", "tensors waiting for the model's next batch", ["model"], registry=self.registry
        )
        self.inflight = Gauge(
            "stride_inflight_requests", "requests admitted for the model and not finished", ["model"],
            registry=self.registry,
        )

    def batch_stats(self, model: str) -> BatchStats:
        sizes, latency = self.batch_size.labels(model), self.inference_latency.labels(model)

        def on_batch(size: int, seconds: float) -> None:
            sizes.observe(size)
            latency.observe(seconds)

        return BatchStats(on_batch=on_batch, on_depth=self.queue_depth.labels(model).set)

    def render(self) -> bytes:
        return generate_latest(self.registry)
