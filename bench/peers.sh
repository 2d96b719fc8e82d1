#!/usr/bin/env bash
# Stride beside the peers (naive FastAPI, LitServe with batching) and the raw ONNX Runtime floor, on the
# bundled LeNet-5 and one image, with the shared harness (../shared/bench, or BENCH_DIR). Stride is started
# the way a user starts it: `make serve`, shipped defaults (access log on).
#
#   bench/peers.sh [IMAGE_SIZE] [extra run.py args...]     e.g. bench/peers.sh 640x480 --rounds 3
#
# Results: /tmp/stride_bench_<size>.json and the table on stdout (copy it into docs/performance.md).
set -euo pipefail
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-$CHECKOUT/../shared/bench}"
VENV="${BENCH_VENV:-/tmp/benchvenv}"
SIZE="${1:-640x480}"
shift || true
[ -x "$VENV/bin/python" ] || bash "$BENCH_DIR/setup.sh" "$VENV"
make -C "$CHECKOUT" install >/dev/null  # the server's own venv, so start-up is not timed
IMAGE="/tmp/stride_bench_${SIZE}.jpg"
"$VENV/bin/python" "$BENCH_DIR/make_model.py" --out /tmp/stride_bench_unused.onnx --image "$IMAGE" --image-size "$SIZE"
cd "$BENCH_DIR"
exec "$VENV/bin/python" run.py --reference naive --ort-threads 1 --peers naive,litserve \
  --model "$CHECKOUT/models/lenet5.onnx" --image "$IMAGE" \
  --concurrency 1,8,32 --json "/tmp/stride_bench_${SIZE}.json" \
  --server stride="cd $CHECKOUT && PORT={port} HOST={host} exec make serve"@'/v1/classify?model=lenet5' "$@"
