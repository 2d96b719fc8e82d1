"""Proof that Stride really runs on ONNX Runtime's CUDA execution provider, and how fast (bench/gpu.sh runs it).

    python bench/gpu_check.py [--models-dir models] [--seconds 5] [--concurrency 1,8,32]

1. CUDA is usable: onnxruntime offers CUDAExecutionProvider and a session really lands on it (ORT falls
   back to the CPU silently when the CUDA or cuDNN libraries are missing: that is caught here).
2. Node placement: ORT's profiler says which provider ran each node; every compute node (Conv, Gemm,
   MatMul, ...) of every bundled model must have run on CUDA.
3. Golden samples replayed on the GPU through the service's own decoding and preprocessing.
4. The real server (`python -m service`, one worker) on CUDA: `/v1/models` and `stride_model_ready` say
   CUDAExecutionProvider for every model.
5. One table: the in-process ORT CUDA floor (batch 1..32; the bundled detector and a 640x640 YOLO-size
   model) beside HTTP through the server (640x480 JPEG, conc 1/8/32).

Exit status: 0 all passed; 1 a check failed; 2 no usable GPU (said in one line, within seconds).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from bench.images import photo_like  # noqa: E402
from service.config import Settings  # noqa: E402
from service.families import recognise  # noqa: E402
from service.golden import verify_golden  # noqa: E402
from service.registry import session_in_contract_order  # noqa: E402
from service.runtime import CUDA, open_session  # noqa: E402

NO_GPU = 2
FAILED = 1
# Operators that carry the compute: finding one of them on the CPU means the GPU is not really used.
# (ORT deliberately keeps shape arithmetic, e.g. Shape/Gather on small int64 tensors, on the CPU.)
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedMatMul", "BatchNormalization",
               "MaxPool", "AveragePool", "GlobalAveragePool", "Resize", "Softmax", "Sigmoid", "Relu",
               "Add", "Mul", "Concat", "QLinearConv", "MatMulInteger", "ConvInteger"}
YOLO_FIXED = ROOT / "tests/fixtures/ultralytics/detect_640.onnx"  # YOLO11 export, 640x640, batch 1
YOLO_BATCHED = ROOT / "tests/fixtures/ultralytics/detect_dynamic.onnx"  # the same with a dynamic batch
SERVER_START_TIMEOUT_S = 180


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--seconds", type=float, default=5.0, help="per HTTP measurement")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batches", default="1,2,4,8,16,32")
    parser.add_argument("--provider", default=CUDA, help="the provider to prove; CPUExecutionProvider runs every "
                        "step on a machine without a GPU (how the script itself is tested)")
    args = parser.parse_args()

    problem = cuda_problem() if args.provider == CUDA else None
    if problem:
        print(f"gpu_check: no usable GPU: {problem}", flush=True)
        return NO_GPU
    print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}", flush=True)
    models = sorted(args.models_dir.glob("*.onnx"))
    failures = check_node_placement(models, args.provider) + check_goldens(models, args.provider)
    floor = floor_table([args.models_dir / "detector.onnx", YOLO_BATCHED], parse_ints(args.batches), args.provider)
    server_failures, http_rows = check_server(args.models_dir, args.seconds, parse_ints(args.concurrency),
                                              args.provider)
    failures += server_failures
    print_table(floor, http_rows)
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all GPU checks passed" if not failures else f"{len(failures)} GPU check(s) failed", flush=True)
    return FAILED if failures else 0


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None. Never raises, never waits for long."""
    if CUDA not in ort.get_available_providers():
        return (f"this onnxruntime ({ort.__version__}) has no {CUDA} (providers: {ort.get_available_providers()}); "
                "install onnxruntime-gpu instead of onnxruntime")
    probe = ROOT / "models/lenet5.onnx"
    try:
        session = ort.InferenceSession(str(probe), providers=[CUDA, "CPUExecutionProvider"])
    except Exception as exc:  # any failure here is the answer
        return f"{CUDA} failed to start: {exc}"
    if session.get_providers()[0] != CUDA:
        return (f"{CUDA} is offered but could not be initialised (no GPU, or CUDA 13 / cuDNN 9 libraries "
                "missing: ONNX Runtime fell back to the CPU)")
    return None


# --- 2. node placement ---------------------------------------------------------------------------


def check_node_placement(models: list[Path], target: str) -> list[str]:
    print("\n== node placement (ORT profiler)", flush=True)
    failures = []
    for path in models:
        placed = node_providers(path, target)
        on_cpu = sorted({op for (op, provider) in placed if provider != target and op in COMPUTE_OPS})
        counts = Counter(provider for (_, provider) in placed.elements())
        print(f"{path.stem:16} " + ", ".join(f"{p}: {n}" for p, n in counts.most_common()), flush=True)
        if not placed:
            failures.append(f"{path.stem}: the profile recorded no node")
        elif on_cpu:
            failures.append(f"{path.stem}: compute nodes ran on the CPU: {', '.join(on_cpu)}")
    return failures


def node_providers(path: Path, target: str) -> Counter[tuple[str, str]]:
    """(op type, provider) of every node run once, from ORT's own profile."""
    with tempfile.TemporaryDirectory() as profile_dir:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / path.stem)
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers(target))
        first = session.get_inputs()[0]
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in first.shape]
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        session.run(None, {first.name: np.zeros(shape, dtype=dtype)})
        events = json.loads(Path(session.end_profiling()).read_text())
    return Counter((event["args"]["op_name"], event["args"]["provider"]) for event in events
                   if event.get("cat") == "Node" and "provider" in event.get("args", {}))


# --- 3. golden samples on the GPU ----------------------------------------------------------------------


def providers(target: str) -> list[str]:
    return list(dict.fromkeys([target, "CPUExecutionProvider"]))


def check_goldens(models: list[Path], target: str) -> list[str]:
    print(f"\n== golden samples on {target}", flush=True)
    settings = Settings(providers=providers(target), workers=1)
    failures = []
    for path in models:
        try:
            session = open_session(path, settings)
            metadata = recognise(path, session).metadata
            worst = verify_golden(session_in_contract_order(session, metadata), metadata)
        except Exception as exc:  # reported; the next model is still checked
            failures.append(f"{path.stem}: golden samples: {exc}")
            print(f"{path.stem:16} FAILED {exc}", flush=True)
            continue
        if session.provider != target:
            failures.append(f"{path.stem}: session on {session.provider}, not {target}")
        print(f"{path.stem:16} {session.provider}  worst |diff| "
              f"{'no golden samples' if worst is None else f'{worst:.2e}'}", flush=True)
    return failures


# --- 5a. the in-process floor ---------------------------------------------------------------------


def floor_table(paths: list[Path], batches: list[int], target: str) -> list[tuple[str, int, float, float]]:
    """(model, batch, ms per run, images/s) with the session's own output buffers on the host."""
    print(f"\n== in-process ORT floor on {target}", flush=True)
    rows = []
    for path in paths:
        if not path.exists():
            print(f"{path}: missing, skipped", flush=True)
            continue
        options = {"cudnn_conv_algo_search": "HEURISTIC"} if target == CUDA else {}
        session = ort.InferenceSession(str(path), providers=[(target, options), "CPUExecutionProvider"]
                                       if target == CUDA else providers(target))
        first = session.get_inputs()[0]
        height, width = (dim if isinstance(dim, int) else 640 for dim in first.shape[2:])
        fixed = first.shape[0] if isinstance(first.shape[0], int) else None
        for batch in [fixed] if fixed else batches:
            tensor = np.random.default_rng(0).random((batch, first.shape[1], height, width), dtype=np.float32)
            for _ in range(3):
                session.run(None, {first.name: tensor})  # warm-up: cuDNN's algorithm search for this shape
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < 1.0:
                session.run(None, {first.name: tensor})
                runs += 1
            seconds = (time.perf_counter() - started) / runs
            rows.append((path.stem, batch, seconds * 1000, batch / seconds))
    return rows


# --- 4 and 5b. the real server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_server(models_dir: Path, seconds: float, levels: list[int], target: str) -> tuple[list[str], list[tuple]]:
    print(f"\n== the server on {target}", flush=True)
    served = Path(tempfile.mkdtemp(prefix="stride-gpu-models-"))
    for path in [*models_dir.glob("*.onnx"), YOLO_FIXED]:
        if path.exists():
            (served / path.name).symlink_to(path.resolve())
    port = free_port()
    env = os.environ | {"STRIDE_PORT": str(port), "STRIDE_HOST": "127.0.0.1", "STRIDE_GRPC_PORT": "0",
                        "STRIDE_WORKERS": "1", "STRIDE_MODELS_DIR": str(served), "STRIDE_ACCESS_LOG": "false",
                        "STRIDE_PROVIDERS": ",".join(providers(target)), "STRIDE_DRAIN_DELAY_S": "0"}
    log = open(Path(tempfile.gettempdir()) / "stride-gpu-server.log", "w")  # noqa: SIM115 - lives with the server
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        if not wait_ready(port, server):
            return [f"the server did not become ready within {SERVER_START_TIMEOUT_S}s (log: {log.name})"], []
        failures = check_reported_providers(port, target)
        image = photo_like(640, 480)
        rows = []
        for model in ("detector", YOLO_FIXED.stem):
            for conc in levels:
                rows.append((model, conc, *http_load(port, f"/v1/detect?model={model}", image, conc, seconds)))
        return failures, rows
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_ready(port: int, server: subprocess.Popen) -> bool:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if get(port, "/health/ready")[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def check_reported_providers(port: int, target: str) -> list[str]:
    failures = []
    models = json.loads(get(port, "/v1/models")[1])["models"]
    metrics = get(port, "/metrics")[1].decode()
    for model in models:
        name, provider = model["name"], model.get("provider")
        ready = re.search(rf'stride_model_ready{{model="{re.escape(name)}",provider="{target}",task="[^"]*"}} 1\.0',
                          metrics)
        print(f"{name:16} /v1/models: {provider}  stride_model_ready on it: {'yes' if ready else 'NO'}",
              flush=True)
        if model.get("status") == "ready" and (provider != target or not ready):
            failures.append(f"{name}: /v1/models says {provider}; the metric {'agrees' if ready else 'disagrees'}")
    return failures


def http_load(port: int, path: str, body: bytes, connections: int, seconds: float) -> tuple[float, float, float, int]:
    """Closed loop, keep-alive, `connections` threads: (req/s, p50 ms, p99 ms, errors). A Python client:
    at GPU speeds it may itself be the limit; its numbers are a lower bound of the server's."""
    latencies: list[float] = []
    errors = [0]
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def loop() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[0] += 1
        connection.close()

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    if not latencies:
        return 0.0, float("nan"), float("nan"), errors[0]
    ms = np.asarray(latencies) * 1000
    return len(latencies) / seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), errors[0]


def print_table(floor: list[tuple], http_rows: list[tuple]) -> None:
    print("\n== GPU results (one table)")
    print(f"{'what':10} {'model':16} {'batch/conc':>10} {'img or req/s':>13} {'ms/run or p50':>14} "
          f"{'p99 ms':>8} errors")
    for model, batch, ms, rate in floor:
        print(f"{'ORT floor':10} {model:16} {batch:>10} {rate:>13.1f} {ms:>14.2f} {'':>8}")
    for model, conc, rate, p50, p99, errors in http_rows:
        print(f"{'HTTP':10} {model:16} {conc:>10} {rate:>13.1f} {p50:>14.2f} {p99:>8.2f} {errors}")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
