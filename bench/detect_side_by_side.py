"""Stride's /v1/detect against the naive FastAPI detection app, on the same YOLO export and image.

    .venv/bin/python bench/detect_side_by_side.py --model tests/fixtures/ultralytics/detect_640.onnx \
        --image /tmp/bench_640x480.jpg --concurrency 1,8,32 --duration 10 --rounds 2

Each server is started in turn on loopback (Stride with its shipped defaults, `python -m service`; the peer is
bench/peer_naive_detect.py), waited for, warmed up, then driven closed-loop with wrk and the shared harness's
script (../shared/bench/wrk_post.lua: one request in flight per connection), rounds in alternating order.
Prints a markdown table (median 2xx req/s over rounds, refusals, p50 and p99 latency of every answer, wrk
cannot split them by status) and writes --json.
The shared runner (../shared/bench/run.py) only drives classify answers; this is its detection sibling and
uses its load script, so the numbers are comparable with docs/performance.md's other tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_BENCH = REPO.parent / "shared" / "bench"


def wait_ready(url: str, image: bytes, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        request = urllib.request.Request(url, data=image, headers={"Content-Type": "image/jpeg"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def start(name: str, model: Path, port: int, threads: int, workers: int,
          extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    env = os.environ | {"BENCH_MODEL": str(model), "BENCH_ORT_THREADS": str(threads)}
    if name == "stride":
        models = Path(tempfile.mkdtemp(prefix="stride-bench-"))
        (models / model.name).symlink_to(model.resolve())
        env |= {"STRIDE_MODELS_DIR": str(models), "STRIDE_PORT": str(port), "STRIDE_ACCESS_LOG": "false",
                "STRIDE_GRPC_PORT": "0", "STRIDE_PROVIDERS": "CPUExecutionProvider", "STRIDE_WORKERS": str(workers)}
        env |= extra_env
        command = [sys.executable, "-m", "service", "serve"]
        url = f"http://127.0.0.1:{port}/v1/detect?model={model.stem}"
    else:
        command = [sys.executable, str(REPO / "bench" / "peer_naive_detect.py"), "--port", str(port)]
        url = f"http://127.0.0.1:{port}/v1/detect"
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    return process, url


def stop(process: subprocess.Popen) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def drive(url: str, image: Path, concurrency: int, duration: float) -> dict:
    env = os.environ | {"BENCH_IMAGE": str(image), "BENCH_CONTENT_TYPE": "image/jpeg", "BENCH_MAX_REQUESTS": "0"}
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "-s",
                           str(SHARED_BENCH / "wrk_post.lua"), url], env=env, capture_output=True, text=True,
                          timeout=duration + 60)
    found = re.search(r"BENCH_JSON (\{.*\})", done.stdout)
    if not found:
        raise RuntimeError(f"wrk gave no BENCH_JSON line:\n{done.stdout}\n{done.stderr}")
    return json.loads(found.group(1))


def ok_rate(run: dict) -> float:
    """Answers with a 2xx status per second (wrk counts refusals as requests too)."""
    return (run["requests"] - run["err_status"]) / (run["duration_us"] / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "tests/fixtures/ultralytics/detect_640.onnx")
    parser.add_argument("--image", type=Path, required=True, help="a JPEG, e.g. 640x480")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ort-threads", type=int, default=0, help="peer's ORT intra-op threads (0: ORT default)")
    parser.add_argument("--stride-workers", type=int, default=1,
                        help="Stride's worker processes (1 = a single process, like the peer)")
    parser.add_argument("--stride-env", action="append", default=[], metavar="KEY=VALUE",
                        help="more settings for Stride, e.g. STRIDE_ADMISSION_TARGET_MS=1000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    levels = [int(c) for c in args.concurrency.split(",")]
    image = args.image.read_bytes()
    results: dict[str, dict[int, list[dict]]] = {"stride": {}, "naive": {}}
    for round_index in range(args.rounds):
        order = ["stride", "naive"] if round_index % 2 == 0 else ["naive", "stride"]
        for name in order:
            process, url = start(name, args.model, 18600 + round_index * 2 + (name == "naive"), args.ort_threads,
                                 args.stride_workers, dict(pair.split("=", 1) for pair in args.stride_env))
            try:
                wait_ready(url, image, process)
                drive(url, args.image, 8, args.warmup)
                for level in levels:
                    run = drive(url, args.image, level, args.duration)
                    results[name].setdefault(level, []).append(run)
                    print(f"round {round_index + 1} {name:7s} conc {level:3d}: {ok_rate(run):8.1f} req/s answered 200, "
                          f"{run['err_status']} refused", flush=True)
            finally:
                stop(process)
    print(f"\n| server | conc | 200 req/s (median of {args.rounds}) | non-2xx req/s | p50 ms | p99 ms |\n"
          "|---|---|---|---|---|---|")
    summary = {}
    for name, by_level in results.items():
        for level, runs in by_level.items():
            rate = statistics.median(ok_rate(r) for r in runs)
            refused = statistics.median(r["err_status"] / (r["duration_us"] / 1e6) for r in runs)
            p50 = statistics.median(r["p50_us"] for r in runs) / 1000
            p99 = statistics.median(r["p99_us"] for r in runs) / 1000
            summary[f"{name}@{level}"] = {"req_s": rate, "refused_s": refused, "p50_ms": p50, "p99_ms": p99}
            print(f"| {name} | {level} | {rate:.1f} | {refused:.1f} | {p50:.1f} | {p99:.1f} |")
    for level in levels:
        ratio = summary[f"stride@{level}"]["req_s"] / max(1e-9, summary[f"naive@{level}"]["req_s"])
        print(f"conc {level}: Stride / naive = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"model": str(args.model), "image": str(args.image),
                                                                "json": str(args.json)},
                                         "summary": summary, "runs": {k: {str(c): v for c, v in d.items()}
                                                                      for k, d in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
