"""Settings, all from environment variables with the prefix STRIDE_ (table in README.md)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GraphOptimization = Literal["disable", "basic", "extended", "all"]
CudnnConvAlgoSearch = Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"]
Warmup = Literal["auto", "always", "never"]
# The CUDA provider options a model may override in STRIDE_CUDA_MODELS (ONNX Runtime's own names, plus ours).
CUDA_OPTION_KEYS = frozenset({"device_id", "cudnn_conv_algo_search", "gpu_mem_limit", "io_binding"})


def available_cores() -> int:
    """The cores this process may really use: its CPU affinity, capped by a cgroup (container) CPU quota,
    which os.cpu_count() ignores (a 2-CPU pod on a 64-core host would otherwise start 64 workers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # ceil: 1.5 CPUs can run 2 threads
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity is the limit
    return max(1, cores)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRIDE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8000, ge=1, le=65535, description="port to bind")
    grpc_port: int = Field(
        default=8001, ge=0, le=65535,
        description="port of the Open Inference Protocol's gRPC service, on the same host; 0 turns it off",
    )
    models_dir: Path = Field(default=Path("models"), description="directory whose *.onnx files are served")
    providers: Annotated[list[str], NoDecode] = Field(
        default=["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference, comma-separated; "
        "unavailable ones are skipped",
    )
    default_models: dict[str, str] = Field(
        default_factory=dict,
        description='default model per task, JSON, e.g. {"classification": "lenet5"}; '
        "otherwise the first model of that task by name",
    )
    require_all_models: bool = Field(default=False, description="any model that fails to load fails readiness")
    verify_golden: bool = Field(default=True, description="replay each model's golden samples at load")
    max_body_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="request body limit")
    max_image_pixels: int = Field(default=40_000_000, gt=0, description="decoded image limit (width x height)")
    request_timeout_s: float = Field(default=30.0, gt=0, description="per-request deadline; 504 after it")
    workers: int = Field(
        default_factory=available_cores, ge=1,
        description="server processes sharing the port, each with its own sessions and batchers; "
        "default: one per available core",
    )
    worker_threads: int = Field(
        default_factory=lambda: max(2, available_cores()),
        gt=0,
        description="threads for decoding, preprocessing, inference and post-processing",
    )
    max_batch_size: int = Field(default=32, ge=1, description="largest ONNX Runtime batch per model")
    max_batch_wait_ms: float = Field(
        default=2.0, ge=0, description="how long a batch waits for requests still being decoded; never when alone"
    )
    max_queue: int = Field(default=256, ge=1, description="requests in flight per model before 503 overloaded")
    admission_target_ms: float = Field(
        default=1000.0, gt=0,
        description="latency target of the adaptive admission limit: when even the fastest answer of a 100 ms "
        "window takes longer, the model's limit shrinks (503 sooner); it grows back when answers are fast",
    )
    batching: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='per-model overrides, JSON, e.g. {"lenet5": {"max_batch_size": 64, "max_wait_ms": 1}}',
    )
    watch_models: bool = Field(
        default=True, description="follow the models directory: load new and changed files, retire removed ones"
    )
    watch_settle_ms: int = Field(
        default=500, ge=10, description="reload once the models directory has been quiet this long"
    )
    max_response_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0,
        description="instance-mask budget per image: over it masks switch to rle, then are dropped (noted)",
    )
    max_images_per_request: int = Field(default=16, ge=1, description="repeated multipart `file` fields allowed")
    jpeg_draft: bool = Field(default=True, description="decode large JPEGs at reduced scale (DCT) for small inputs")
    ort_intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0 = half the cores")
    ort_inter_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime inter-op threads (parallel mode)")
    ort_execution_mode: Literal["sequential", "parallel"] = Field(
        default="sequential", description="ONNX Runtime execution mode; parallel helps multi-branch graphs"
    )
    ort_allow_spinning: bool = Field(
        default=False, description="let ONNX Runtime threads busy-wait; off leaves the cores to decoding"
    )
    ort_graph_optimization: GraphOptimization = Field(default="all", description="ONNX Runtime graph optimisation")
    warmup: Warmup = Field(
        default="auto", description="run each batch size the batcher will use once before readiness: "
        "auto = on GPU providers only (a CPU session is warmed by the golden samples), always, never",
    )
    cuda_device_id: int = Field(default=0, ge=0, description="GPU of the CUDA execution provider")
    cuda_conv_algo_search: CudnnConvAlgoSearch = Field(
        default="HEURISTIC", description="cuDNN convolution algorithm search: HEURISTIC, EXHAUSTIVE, DEFAULT"
    )
    cuda_mem_limit_bytes: int = Field(default=0, ge=0, description="CUDA memory arena limit per session; 0 = none")
    cuda_io_binding: bool = Field(default=True, description="bind the batcher's inputs and outputs (IO binding)")
    cuda_models: dict[str, dict[str, int | str | bool]] = Field(
        default_factory=dict,
        description='per-model CUDA overrides, JSON, e.g. {"detector": {"device_id": 1, "gpu_mem_limit": 2e9}}',
    )
    drain_delay_s: float = Field(
        default=5.0, ge=0, description="after SIGTERM, seconds of serving with readiness 503 before closing"
    )
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections close after it")
    body_read_timeout_s: float = Field(
        default=30.0, gt=0, description="a client that sends no body bytes for this long gets 408"
    )
    header_read_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection must send a request's complete headers within this; else closed"
    )
    min_body_rate_bytes_s: int = Field(
        default=1024, ge=0, description="an upload slower than this on average (after 2 s) gets 408; 0 = off"
    )
    max_request_pixels: int = Field(
        default=100_000_000, gt=0, description="pixel budget of one request, summed over all its images (413)"
    )
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys, comma-separated; empty = no authentication. Sent as X-API-Key or Bearer",
    )
    metrics_require_key: bool = Field(default=False, description="also require the API key on /metrics")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins, comma-separated (* for any); empty = CORS off"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    access_log: bool = Field(default=True, description="one log line per request")
    collections_dir: Path = Field(
        default=Path("collections"),
        description="folder of the embedded (local-mode Qdrant) vector store behind /v1/collections; one process",
    )
    qdrant_url: str = Field(default="", description="a Qdrant server for /v1/collections, shared by every process")
    qdrant_api_key: SecretStr | None = Field(default=None, description="API key of the Qdrant server")

    @field_validator("providers", "api_key", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value


    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        """Refuse at start what would fail every model at load: a queue that cannot hold one full batch."""
        for model in self.batching:
            self.batch_policy_for(model)  # unknown keys fail here, at start
        policies = {"": self.batch_policy_for("")} | {m: self.batch_policy_for(m) for m in self.batching}
        for model, policy in policies.items():
            if policy["max_queue"] < policy["max_batch_size"]:
                where = f"STRIDE_BATCHING[{model!r}].max_queue" if model else "STRIDE_MAX_QUEUE"
                raise ValueError(f"{where} = {policy['max_queue']:g} is below the batch size "
                                 f"{policy['max_batch_size']:g}: allowed values are >= the batch size "
                                 "(STRIDE_MAX_BATCH_SIZE or the model's max_batch_size)")
        return self

    @field_validator("cuda_models")
    @classmethod
    def _known_cuda_options(cls, value: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        for model, options in value.items():
            unknown = set(options) - CUDA_OPTION_KEYS
            if unknown:
                raise ValueError(f"STRIDE_CUDA_MODELS[{model!r}] has unknown keys {sorted(unknown)}; "
                                 f"allowed: {sorted(CUDA_OPTION_KEYS)}")
        return value

    def batch_policy_for(self, model: str) -> dict[str, float]:
        """The batching parameters of one model: the global ones, overridden per model."""
        policy: dict[str, float] = {"max_batch_size": self.max_batch_size, "max_wait_ms": self.max_batch_wait_ms,
                                    "max_queue": self.max_queue}
        unknown = set(self.batching.get(model, {})) - set(policy)
        if unknown:
            raise ValueError(f"STRIDE_BATCHING[{model!r}] has unknown keys {sorted(unknown)}")
        policy.update(self.batching.get(model, {}))
        return policy


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
