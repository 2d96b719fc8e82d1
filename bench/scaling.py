"""Worker scaling: Stride with STRIDE_WORKERS = 1..cores, closed loop, and a plot of req/s against workers.

    .venv/bin/python bench/scaling.py [--workers 1,2] [--listen reuseport,shared] [--concurrency 32] \
        [--model lenet5] [--route /v1/classify] [--size 640x480] [--duration 10] [--rounds 2] \
        [--plot docs/images/scaling.png] [--json /tmp/stride_scaling.json] [--budget-s 240]

Each point starts `python -m service` with that many workers (how the sockets are shared: `reuseport`,
Stride's model, or `shared`, one listening socket inherited by every worker as uvicorn's and gunicorn's
supervisors do), waits for readiness, warms up, then drives it with wrk and the shared harness's script
(../shared/bench/wrk_post.lua; a Python keep-alive client where wrk or the harness is missing, e.g. a GPU
machine), rounds in alternating order. Prints a markdown table; --budget-s stops starting new points
once the time is spent (bench/scaling.sh: 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_check import free_port, get, http_load  # noqa: E402
from bench.images import photo_like  # noqa: E402
from service.config import available_cores  # noqa: E402

WRK_SCRIPT = Path(os.environ.get("BENCH_DIR", REPO.parent / "shared" / "bench")) / "wrk_post.lua"
# Starts the server with the chosen listening model (Supervisor's `listen` is not a setting: this bench
# is what chose it).
SERVE = ("import sys; from service.config import Settings; from service.logs import configure_logging; "
         "from service.workers import Supervisor; s = Settings(); configure_logging(s.log_level); "
         "sys.exit(Supervisor(s, {}, listen=sys.argv[1]).run())")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default=",".join(str(n) for n in range(1, available_cores() + 1)))
    parser.add_argument("--listen", default="reuseport")
    parser.add_argument("--concurrency", default="32")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--route", default="/v1/classify")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "stride_scaling.json")
    parser.add_argument("--budget-s", type=float, default=0, help="stop starting new points after this; 0 = none")
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.split("x"))
    image = Path(tempfile.gettempdir()) / f"stride_scaling_{args.size}.jpg"
    image.write_bytes(photo_like(width, height))
    models = Path(tempfile.mkdtemp(prefix="stride-scaling-models-"))
    (models / f"{args.model}.onnx").symlink_to(REPO / "models" / f"{args.model}.onnx")
    path = f"{args.route}?model={args.model}"
    workers = [int(n) for n in args.workers.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    points = [(mode, n) for mode in args.listen.split(",") for n in workers]
    print(f"load average {os.getloadavg()[0]:.2f}, {available_cores()} cores, generator "
          f"{'wrk' if use_wrk() else 'python'}", flush=True)

    started = time.monotonic()
    results: dict[str, list[dict]] = {}
    for round_index in range(args.rounds):
        for mode, n in points if round_index % 2 == 0 else list(reversed(points)):
            if args.budget_s and time.monotonic() - started > args.budget_s:
                print(f"budget of {args.budget_s:.0f}s spent: stopping", flush=True)
                break
            for conc, measured in measure(mode, n, models, path, image, levels, args).items():
                results.setdefault(f"{mode}/{n}/{conc}", []).append(measured)
    rows = summarise(results)
    print_table(rows)
    args.json.write_text(json.dumps({"rows": rows, "raw": results, "load_average": os.getloadavg()}, indent=1))
    if args.plot:
        plot(rows, args.plot, f"{args.model} {args.route}, {args.size} JPEG")
    return 0


def use_wrk() -> bool:
    return shutil.which("wrk") is not None and WRK_SCRIPT.exists()


def measure(mode: str, workers: int, models: Path, path: str, image: Path, levels: list[int],
            args: argparse.Namespace) -> dict[int, dict]:
    port = free_port()
    env = os.environ | {"STRIDE_PORT": str(port), "STRIDE_HOST": "127.0.0.1", "STRIDE_GRPC_PORT": "0",
                        "STRIDE_WORKERS": str(workers), "STRIDE_MODELS_DIR": str(models),
                        "STRIDE_ACCESS_LOG": "false", "STRIDE_DRAIN_DELAY_S": "0", "STRIDE_WATCH_MODELS": "false"}
    command = [sys.executable, "-m", "service"] if workers == 1 else [sys.executable, "-c", SERVE, mode]
    with open(Path(tempfile.gettempdir()) / f"stride_scaling_{mode}_{workers}.log", "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, server)
        body = image.read_bytes()
        load(port, path, image, body, 8, args.warmup)
        return {conc: load(port, path, image, body, conc, args.duration) for conc in levels}
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def wait_ready(port: int, server: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before it was ready")
        try:
            if get(port, "/health/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def load(port: int, path: str, image: Path, body: bytes, conc: int, seconds: float) -> dict:
    if not use_wrk():
        rate, p50, p99, errors = http_load(port, path, body, conc, seconds)
        return {"rps": rate, "p50_ms": p50, "p99_ms": p99, "errors": errors}
    env = os.environ | {"BENCH_IMAGE": str(image), "BENCH_CONTENT_TYPE": "image/jpeg", "BENCH_MAX_REQUESTS": "0"}
    done = subprocess.run(["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                           "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{path}"],
                          env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON "))
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(stats[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    ok = stats["requests"] - stats["err_status"]
    return {"rps": ok / (stats["duration_us"] / 1e6), "p50_ms": stats["p50_us"] / 1000,
            "p99_ms": stats["p99_us"] / 1000, "errors": errors, "non_2xx": stats["err_status"]}


def summarise(results: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for key, runs in results.items():
        mode, workers, conc = key.split("/")
        rows.append({"listen": mode, "workers": int(workers), "conc": int(conc),
                     "rps": statistics.median(r["rps"] for r in runs),
                     "min": min(r["rps"] for r in runs), "max": max(r["rps"] for r in runs),
                     "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                     "errors": sum(r["errors"] for r in runs)})
    return sorted(rows, key=lambda r: (r["listen"], r["conc"], r["workers"]))


def print_table(rows: list[dict]) -> None:
    print("\n| listen | workers | conc | req/s (median) | [min..max] | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['listen']} | {r['workers']} | {r['conc']} | {r['rps']:.1f} | [{r['min']:.0f}..{r['max']:.0f}] "
              f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")


def plot(rows: list[dict], target: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for (mode, conc) in sorted({(r["listen"], r["conc"]) for r in rows}):
        line = sorted((r["workers"], r["rps"]) for r in rows if r["listen"] == mode and r["conc"] == conc)
        axes.plot([w for w, _ in line], [v for _, v in line], marker="o", label=f"{mode}, conc {conc}")
    axes.set_xlabel("worker processes (STRIDE_WORKERS)")
    axes.set_ylabel("req/s (median over rounds)")
    axes.set_title(title, fontsize=10)
    axes.set_xticks(sorted({r["workers"] for r in rows}))
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    print(f"plot: {target}")


if __name__ == "__main__":
    sys.exit(main())
