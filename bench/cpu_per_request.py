"""CPU milliseconds per request: where a server's cores go, in Stride's stages and outside them.

    .venv/bin/python bench/cpu_per_request.py [--workers 1] [--model lenet5] [--size 640x480] [--conc 32] \
        [--seconds 10] [--peer-naive]

Starts `python -m service` (STRIDE_WORKERS=--workers, access log as shipped unless --no-access-log), drives it
closed-loop with wrk (the shared harness's script), and reads the CPU time of the server's whole process
tree from /proc before and after: CPU ms per successful request is the number the 3x target depends on
(2 cores / (3 x the naive app's req/s)). Beside it, the mean wall time per image of each pipeline stage
from Stride's own `stride_stage_duration_seconds`: on a saturated machine it includes waiting for a core
(and the inference stage is a whole batch's run), so it says where requests spend their time, not CPU.
--peer-naive measures the shared harness's naive FastAPI app the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_check import free_port, get  # noqa: E402
from bench.images import photo_like  # noqa: E402
from bench.scaling import WRK_SCRIPT, load, wait_ready  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
STAGE = re.compile(r'stride_stage_duration_seconds_(sum|count)\{model="[^"]*",stage="([^"]+)"\} (\S+)')


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of the process and every descendant alive now (workers included)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def stage_totals(port: int) -> dict[str, tuple[float, float]]:
    totals: dict[str, list[float]] = {}
    for kind, stage, value in STAGE.findall(get(port, "/metrics")[1].decode()):
        entry = totals.setdefault(stage, [0.0, 0.0])
        entry[0 if kind == "sum" else 1] += float(value)
    return {stage: (s, c) for stage, (s, c) in totals.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--peer-naive", action="store_true")
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.split("x"))
    image = Path(tempfile.gettempdir()) / f"stride_cpu_{args.size}.jpg"
    image.write_bytes(photo_like(width, height))
    models = Path(tempfile.mkdtemp(prefix="stride-cpu-models-"))
    (models / f"{args.model}.onnx").symlink_to(REPO / "models" / f"{args.model}.onnx")
    port = free_port()
    if args.peer_naive:
        command = [sys.executable, str(WRK_SCRIPT.parent / "peer_naive_fastapi.py"), "--port", str(port),
                   "--model", str(models / f"{args.model}.onnx")]
        env = os.environ | {"BENCH_ORT_THREADS": "1", "BENCH_MODEL": str(models / f"{args.model}.onnx")}
        path, cwd = "/v1/classify", WRK_SCRIPT.parent
    else:
        command = [sys.executable, "-m", "service"]
        env = os.environ | {"STRIDE_PORT": str(port), "STRIDE_HOST": "127.0.0.1", "STRIDE_GRPC_PORT": "0",
                            "STRIDE_WORKERS": str(args.workers), "STRIDE_MODELS_DIR": str(models),
                            "STRIDE_WATCH_MODELS": "false", "STRIDE_DRAIN_DELAY_S": "0"}
        if args.no_access_log:
            env["STRIDE_ACCESS_LOG"] = "false"
        path, cwd = f"/v1/classify?model={args.model}", REPO
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if args.peer_naive:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    get(port, "/docs")
                    break
                except OSError:
                    time.sleep(0.2)
        else:
            wait_ready(port, server)
        body = image.read_bytes()
        load(port, path, image, body, 8, 2)  # warm-up
        stages_before = {} if args.peer_naive else stage_totals(port)
        cpu_before = tree_cpu_seconds(server.pid)
        measured = load(port, path, image, body, args.conc, args.seconds)
        cpu = tree_cpu_seconds(server.pid) - cpu_before
        requests = measured["rps"] * round(args.seconds)
        print(f"load average {os.getloadavg()[0]:.2f}; {'naive' if args.peer_naive else 'stride'} "
              f"workers={args.workers} conc={args.conc}: {measured['rps']:.1f} req/s, errors {measured['errors']}, "
              f"CPU {cpu:.2f} s = {1000 * cpu / requests:.2f} ms per request")
        if not args.peer_naive:
            for stage, (total, count) in sorted(stage_totals(port).items()):
                before_total, before_count = stages_before.get(stage, (0.0, 0.0))
                if count > before_count:
                    print(f"  {stage:12} {1000 * (total - before_total) / (count - before_count):6.3f} ms wall "
                          "per image in this stage")
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
