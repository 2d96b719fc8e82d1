#!/usr/bin/env bash
# The N-worker scaling bench on this machine's CPU cores, within 4 minutes (e.g. on the GPU machine, after
# bench/gpu.sh, with its venv):  bench/scaling.sh [PYTHON] [scaling.py options]
# Workers 1, 2, 4, ... up to the cores, conc 1 and 32, LeNet-5 on a 640x480 JPEG; the plot goes to
# /tmp/stride_scaling.png and the table to stdout (copy both into docs/performance.md).
set -euo pipefail
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${1:-${STRIDE_GPU_VENV:-/tmp/stride-gpu-venv}/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$CHECKOUT/.venv/bin/python"
shift || true
CORES="$("$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[1]); from service.config import available_cores; print(available_cores())' "$CHECKOUT")"
WORKERS="$("$PYTHON" -c 'import sys; n = int(sys.argv[1]); print(",".join(str(w) for w in sorted({*(1 << k for k in range(n.bit_length())), n})))' "$CORES")"
cd "$CHECKOUT"
exec timeout --kill-after=10 240 "$PYTHON" bench/scaling.py --workers "$WORKERS" --concurrency 1,32 --duration 5 \
  --warmup 1 --rounds 1 --budget-s 200 --plot /tmp/stride_scaling.png "$@"
