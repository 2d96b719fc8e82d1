"""ONNX Runtime sessions: provider choice, threading and graph optimisation come from settings."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.config import Settings

log = logging.getLogger(__name__)

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
    input_dtype: np.dtype = np.dtype(np.float32)  # float16 for half-precision exports

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        return self.session.run(list(self.output_names), {self.input_name: batch})

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was exported with, when it is not dynamic."""
        first = self.session.get_inputs()[0].shape[0]
        return first if isinstance(first, int) and first > 0 else None


def usable_providers(preferred: list[str]) -> list[str]:
    """The preferred providers this onnxruntime build offers, in order; CPU is always the last resort."""
    available = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def intra_op_threads(settings: Settings) -> int:
    """0 means: half the cores, so ONNX Runtime and the decoding threads share the machine instead of
    fighting over it (ORT's own default takes every core)."""
    return settings.ort_intra_op_threads or max(1, (os.cpu_count() or 2) // 2)


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
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=usable_providers(settings.providers))
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"expected exactly one input tensor, found {len(inputs)}")
    return ModelSession(
        session=session,
        input_name=inputs[0].name,
        output_names=tuple(o.name for o in session.get_outputs()),
        provider=session.get_providers()[0],
        custom_metadata=dict(session.get_modelmeta().custom_metadata_map),
        input_dtype=np.dtype(np.float16 if inputs[0].type == "tensor(float16)" else np.float32),
    )
