"""ONNX Runtime sessions: provider choice, threading and graph optimisation come from settings.

On the CUDA execution provider each model gets its provider options (device, cuDNN convolution algorithm
search, memory arena limit; STRIDE_CUDA_* and per model STRIDE_CUDA_MODELS), the batcher's input and
outputs go through IO binding, and `warm_up` runs each batch size the batcher will use before the model
is ready, so that no request pays for cuDNN's algorithm search or the arena's first allocations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.config import Settings, available_cores

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
FLOAT32 = np.dtype(np.float32)
CPU = "CPUExecutionProvider"

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, slots=True)
class ModelSession:
    """A loaded ONNX model: run a [N, C, H, W] batch, get the output arrays in `output_names` order."""

    session: ort.InferenceSession
    input_name: str
    output_names: tuple[str, ...]
    provider: str  # the provider ONNX Runtime actually placed the session on
    custom_metadata: dict[str, str]
    input_dtype: np.dtype = FLOAT32  # float16 for half-precision exports
    # IO binding: "cuda" keeps outputs on the GPU until one copy to the host per output; None = session.run.
    bind_device: str | None = None
    device_id: int = 0

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        if self.bind_device is not None:
            return self._run_bound(batch)
        return self.session.run(list(self.output_names), {self.input_name: batch})

    def _run_bound(self, batch: np.ndarray) -> list[np.ndarray]:
        """One host-to-device copy of the whole batch and one device-to-host copy per output, with no
        intermediate host buffers (session.run allocates and copies through its own)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
        for name in self.output_names:
            binding.bind_output(name, self.bind_device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was exported with, when it is not dynamic."""
        first = self.session.get_inputs()[0].shape[0]
        return first if isinstance(first, int) and first > 0 else None


def usable_providers(preferred: list[str]) -> list[str]:
    """The preferred providers this onnxruntime build offers, in order; CPU is always the last resort."""
    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def intra_op_threads(settings: Settings) -> int:
    """0 means: half of this worker's share of the cores, so that workers x threads fit the machine and
    ONNX Runtime leaves the rest to decoding (ORT's own default takes every core, in every worker)."""
    return settings.ort_intra_op_threads or max(1, available_cores() // (2 * settings.workers))


def cuda_options(settings: Settings, model: str) -> dict[str, Any]:
    """The CUDA provider options of one model: the STRIDE_CUDA_* settings, overridden by STRIDE_CUDA_MODELS.
    `io_binding` is Stride's own (how the batcher runs the session); the rest are ONNX Runtime's names."""
    options: dict[str, Any] = {"device_id": settings.cuda_device_id,
                               "cudnn_conv_algo_search": settings.cuda_conv_algo_search,
                               "gpu_mem_limit": settings.cuda_mem_limit_bytes,
                               "io_binding": settings.cuda_io_binding}
    options.update(settings.cuda_models.get(model, {}))
    options["device_id"], options["gpu_mem_limit"] = int(options["device_id"]), int(options["gpu_mem_limit"])
    return options


def provider_list(settings: Settings, model: str) -> list[str | tuple[str, dict[str, str]]]:
    """usable_providers with the CUDA provider's options attached (ORT takes them as strings)."""
    options = cuda_options(settings, model)
    ort_options = {"device_id": str(options["device_id"]),
                   "cudnn_conv_algo_search": str(options["cudnn_conv_algo_search"])}
    if options["gpu_mem_limit"]:
        ort_options["gpu_mem_limit"] = str(options["gpu_mem_limit"])
    return [(p, ort_options) if p == CUDA else p for p in usable_providers(settings.providers)]


def open_session(path: Path, settings: Settings) -> ModelSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = _GRAPH_LEVELS[settings.ort_graph_optimization]
    options.intra_op_num_threads = intra_op_threads(settings)
    if settings.ort_inter_op_threads:
        options.inter_op_num_threads = settings.ort_inter_op_threads
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if settings.ort_execution_mode == "parallel"
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.ort_allow_spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if settings.ort_allow_spinning else "0")
    # ORT logs warnings (e.g. unused initialisers) at severity 2; keep our logs readable.
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=provider_list(settings, path.stem))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"expected exactly one input tensor, found {len(inputs)}")
    provider = session.get_providers()[0]
    cuda = cuda_options(settings, path.stem)
    return ModelSession(
        session=session,
        input_name=inputs[0].name,
        output_names=tuple(o.name for o in session.get_outputs()),
        provider=provider,
        custom_metadata=dict(session.get_modelmeta().custom_metadata_map),
        input_dtype=np.dtype(np.float16 if inputs[0].type == "tensor(float16)" else np.float32),
        bind_device="cuda" if provider == CUDA and cuda["io_binding"] else None,
        device_id=cuda["device_id"],
    )


def warmup_batch_sizes(settings: Settings, session: ModelSession, max_batch_size: int) -> list[int]:
    """The batch sizes to run once before readiness: the graph's fixed batch, or 1, 2, 4, ... and the
    largest the batcher makes. `auto` warms GPU sessions only: there each new shape costs a cuDNN
    algorithm search and arena growth; a CPU session's first run is already the golden-sample check."""
    if settings.warmup == "never" or (settings.warmup == "auto" and session.provider == CPU):
        return []
    if session.fixed_batch:
        return [session.fixed_batch]
    sizes = {max_batch_size} | {1 << k for k in range(max_batch_size.bit_length()) if 1 << k <= max_batch_size}
    return sorted(sizes)


def warm_up(session: ModelSession, item_shape: tuple[int, ...], batch_sizes: list[int]) -> None:
    """Run zero batches of each size: the same shapes (and IO binding) the batcher will use."""
    for size in batch_sizes:
        session.run(np.zeros((size, *item_shape), dtype=session.input_dtype))
