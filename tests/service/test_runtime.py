"""ONNX Runtime sessions: threads per worker, CUDA provider options per model, IO binding, warm-up."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError

from service.config import Settings, available_cores
from service.runtime import (
    CPU,
    CUDA,
    cuda_options,
    intra_op_threads,
    open_session,
    provider_list,
    warm_up,
    warmup_batch_sizes,
)
from tests.conftest import BUNDLED_MODELS


def test_workers_times_threads_fit_the_cores() -> None:
    cores = available_cores()
    for workers in (1, 2, cores, 4 * cores):
        threads = intra_op_threads(Settings(workers=workers))
        assert threads == max(1, cores // (2 * workers))
    assert intra_op_threads(Settings(workers=2, ort_intra_op_threads=3)) == 3  # an explicit value wins


def test_cuda_options_per_model_override_the_global_ones() -> None:
    settings = Settings(cuda_device_id=1, cuda_mem_limit_bytes=1 << 30,
                        cuda_models={"detector": {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                  "io_binding": False}})
    assert cuda_options(settings, "lenet5") == {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC",
                                                "gpu_mem_limit": 1 << 30, "io_binding": True}
    assert cuda_options(settings, "detector") == {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE",
                                                  "gpu_mem_limit": 1 << 30, "io_binding": False}


def test_cuda_provider_gets_its_options_as_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])  # as a CUDA build reports
    settings = Settings(cuda_models={"detector": {"gpu_mem_limit": 2_000_000_000}})
    assert provider_list(settings, "detector") == [
        (CUDA, {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "gpu_mem_limit": "2000000000"}), CPU]
    assert provider_list(Settings(providers=[CPU]), "detector") == [CPU]


def test_unknown_cuda_option_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="unknown keys \\['arena'\\]"):
        Settings(cuda_models={"detector": {"arena": 1}})


def test_io_binding_gives_the_same_outputs_as_run() -> None:
    session = open_session(BUNDLED_MODELS / "detector.onnx", Settings(providers=[CPU]))
    bound = dataclasses.replace(session, bind_device="cpu")  # the CUDA path's code, on the CPU
    batch = np.random.default_rng(0).random((3, 3, 128, 128), dtype=np.float32)
    for plain, via_binding in zip(session.run(batch), bound.run(batch), strict=True):
        np.testing.assert_array_equal(plain, via_binding)


def test_warmup_sizes_are_the_batches_the_batcher_makes() -> None:
    session = open_session(BUNDLED_MODELS / "lenet5.onnx", Settings(providers=[CPU]))
    on_gpu = dataclasses.replace(session, provider=CUDA)
    assert warmup_batch_sizes(Settings(), on_gpu, 32) == [1, 2, 4, 8, 16, 32]
    assert warmup_batch_sizes(Settings(), on_gpu, 12) == [1, 2, 4, 8, 12]
    assert warmup_batch_sizes(Settings(), session, 32) == []  # auto: a CPU session is warmed by its goldens
    assert warmup_batch_sizes(Settings(warmup="always"), session, 4) == [1, 2, 4]
    assert warmup_batch_sizes(Settings(warmup="never"), on_gpu, 32) == []


def test_warm_up_runs_the_real_session_at_each_size() -> None:
    session = open_session(BUNDLED_MODELS / "lenet5.onnx", Settings(providers=[CPU]))
    warm_up(session, (1, 32, 32), [1, 2, 4, 32])
    with pytest.raises(Exception, match="Got invalid dimensions"):  # proof that it ran: ORT checks the shape
        warm_up(session, (1, 28, 28), [2])
