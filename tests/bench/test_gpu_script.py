"""bench/gpu.sh and bench/gpu_check.py on a machine without a GPU: a clear failure, quickly, never a hang;
and every step of the check itself, run against the CPU provider."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from tests.conftest import BUNDLED_MODELS, REPO

NO_GPU = 2
TIMEOUT_S = 60  # the script must fail well within this without a GPU; a hang fails the test


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_gpu_sh_fails_clearly_without_a_gpu(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(REPO / "bench/gpu.sh"), str(tmp_path)], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == NO_GPU
    assert "no usable GPU" in done.stderr and "nvidia-smi" in done.stderr


def test_gpu_sh_needs_its_wheel_folder() -> None:
    done = subprocess.run(["bash", str(REPO / "bench/gpu.sh")], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 3 and "usage: bench/gpu.sh WHEEL_DIR" in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA onnxruntime")
def test_gpu_check_says_cuda_is_missing_from_a_cpu_onnxruntime() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py")], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == NO_GPU
    assert "no usable GPU" in done.stdout and "install onnxruntime-gpu" in done.stdout


def test_every_step_of_the_check_runs_against_the_cpu_provider(tmp_path: Path) -> None:
    for name in ("lenet5", "detector"):
        (tmp_path / f"{name}.onnx").symlink_to(BUNDLED_MODELS / f"{name}.onnx")
    done = subprocess.run([sys.executable, str(REPO / "bench/gpu_check.py"), "--provider", "CPUExecutionProvider",
                           "--models-dir", str(tmp_path), "--seconds", "0.5", "--concurrency", "1,4",
                           "--batches", "1,2"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout
    assert "detector         CPUExecutionProvider:" in output  # node placement from ORT's profile
    assert "lenet5           CPUExecutionProvider  worst |diff|" in output  # golden samples replayed
    assert "detector         /v1/models: CPUExecutionProvider  stride_model_ready on it: yes" in output
    table = output.split("== GPU results (one table)")[1].splitlines()
    assert sum(line.startswith("ORT floor  detector") for line in table) == 2  # batch 1 and 2
    http_rows = [line.split() for line in table if line.startswith("HTTP")]
    assert len(http_rows) == 4 and all(row[-1] == "0" and float(row[3]) > 0 for row in http_rows)
    assert "all GPU checks passed" in output
