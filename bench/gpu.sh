#!/usr/bin/env bash
# Stride on a GPU machine (CUDA 13 + cuDNN 9 libraries, no network), within 6 minutes:
#   bench/gpu.sh WHEEL_DIR [gpu_check.py options]
#
# 1. a GPU is there (nvidia-smi, bounded) -- else exit 2 at once, saying so;
# 2. installs onnxruntime-gpu and the service's dependencies (pyproject.toml) offline from WHEEL_DIR into a
#    fresh venv ($STRIDE_GPU_VENV, default /tmp/stride-gpu-venv);
# 3. bench/gpu_check.py: node placement on CUDAExecutionProvider (ORT profiler), golden samples on the GPU,
#    /v1/models and stride_model_ready saying CUDA, and one table: the in-process ORT CUDA floor (batch 1..32)
#    beside HTTP (conc 1/8/32) for the bundled detector and a 640x640 YOLO export.
#
# Make WHEEL_DIR on a machine with network, for the GPU machine's Python and platform, e.g.:
#   pip download -d wheels -c constraints/gpu.txt onnxruntime-gpu $(python3 -c 'import tomllib; \
#     print(" ".join(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]))')
# Exit status: 0 passed, 1 a check failed, 2 no usable GPU, 3 the install failed, 124 out of time.
set -euo pipefail
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
BUDGET_S="${STRIDE_GPU_BUDGET_S:-360}"
VENV="${STRIDE_GPU_VENV:-/tmp/stride-gpu-venv}"
WHEELS="${1:-}"
[ -n "$WHEELS" ] || { echo "usage: bench/gpu.sh WHEEL_DIR [gpu_check.py options]" >&2; exit 3; }
shift

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu.sh: no usable GPU: nvidia-smi is not installed (no NVIDIA driver on this machine)" >&2
  exit 2
fi
if ! GPUS="$(timeout 30 nvidia-smi -L 2>&1)" || ! grep -q '^GPU ' <<<"$GPUS"; then
  echo "gpu.sh: no usable GPU: nvidia-smi found none: $GPUS" >&2
  exit 2
fi
echo "$GPUS"
[ -d "$WHEELS" ] || { echo "gpu.sh: wheel folder $WHEELS does not exist" >&2; exit 3; }

echo "== offline install from $WHEELS into $VENV"
python3 -m venv --clear "$VENV"
mapfile -t DEPENDENCIES < <(python3 -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$CHECKOUT/pyproject.toml")
if ! timeout 180 "$VENV/bin/pip" install --quiet --no-index --find-links "$WHEELS" onnxruntime-gpu \
    "${DEPENDENCIES[@]}"; then
  echo "gpu.sh: offline install failed: WHEEL_DIR needs onnxruntime-gpu and every dependency above" >&2
  exit 3
fi

LEFT=$((BUDGET_S - SECONDS - 5))
echo "== gpu_check.py (${LEFT}s left of ${BUDGET_S}s)"
cd "$CHECKOUT"
exec timeout --kill-after=10 "$LEFT" "$VENV/bin/python" bench/gpu_check.py "$@"
