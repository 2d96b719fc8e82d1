"""Settings, all from environment variables with the prefix STRIDE_ (table in README.md)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GraphOptimization = Literal["disable", "basic", "extended", "all"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRIDE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8000, ge=1, le=65535, description="port to bind")
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
    worker_threads: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 2),
        gt=0,
        description="threads for decoding, preprocessing, inference and post-processing",
    )
    max_batch_size: int = Field(default=32, ge=1, description="largest ONNX Runtime batch per model")
    max_batch_wait_ms: float = Field(
        default=2.0, ge=0, description="how long a batch waits for requests still being decoded; never when alone"
    )
    max_queue: int = Field(default=256, ge=1, description="requests in flight per model before 503 overloaded")
    batching: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='per-model overrides, JSON, e.g. {"lenet5": {"max_batch_size": 64, "max_wait_ms": 1}}',
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
    drain_delay_s: float = Field(
        default=5.0, ge=0, description="after SIGTERM, seconds of serving with readiness 503 before closing"
    )
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections close after it")
    body_read_timeout_s: float = Field(
        default=30.0, gt=0, description="a client that sends no body bytes for this long gets 408"
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

    @field_validator("providers", "api_key", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
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
