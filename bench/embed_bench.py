"""Throughput of /v1/embed, and of search at 10k and 100k stored vectors, on the bundled embedder:

    python bench/embed_bench.py --seconds 10 --concurrency 4 --sizes 10000 100000

Starts its own server (`python -m service`, one worker, a temporary models folder holding embedder.onnx and
a temporary collections folder) so the store's size is known. Each collection is filled directly through
the store (service.collections.qdrant, the server's own code) with random unit vectors plus 100 real
enrolled faces, before the server opens it: enrolling 100k images over HTTP would measure enrolment, not
search. Prints one JSON line per measurement: requests/s and latency percentiles over HTTP, plus the store's
own search time in-process (no HTTP, no inference) and how long the server took to open the store.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.collections import CollectionSpec, Item  # noqa: E402
from service.collections.qdrant import QdrantStore  # noqa: E402
from training.data import identities  # noqa: E402

MODEL = REPO / "models" / "embedder.onnx"
REAL = 100  # real faces enrolled in every collection (ids TEST_FIRST ..), so searches find something


def png(identity: int, view: int) -> bytes:
    buffer = io.BytesIO()
    identities.view(identity, view).save(buffer, format="PNG")
    return buffer.getvalue()


def fill(folder: Path, name: str, size: int, dimension: int, real: np.ndarray) -> float:
    """A collection of `size` vectors (random, then the real faces' last) written by the store itself."""
    store = QdrantStore.local(folder)
    try:
        sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()
        store.create(CollectionSpec(name=name, model="embedder", model_sha256=sha, dimension=dimension))
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        from qdrant_client import models as qm

        from service.collections.qdrant import PREFIX, point_id

        for start in range(0, size - len(real), 2000):
            count = min(2000, size - len(real) - start)
            vectors = rng.normal(size=(count, dimension)).astype(np.float32)
            store.client.upload_points(PREFIX + name, [
                qm.PointStruct(id=point_id(f"r{start + i}"), vector=v.tolist(),
                               payload={"id": f"r{start + i}", "label": None, "metadata": {}})
                for i, v in enumerate(vectors)], wait=True)
        for i, vector in enumerate(real):
            store.add(name, Item(str(identities.TEST_FIRST + i)), vector, False)
        return time.perf_counter() - started
    finally:
        store.close()


def store_search_ms(folder: Path, name: str, query: np.ndarray, repeats: int = 50) -> tuple[float, float]:
    """(open seconds, median search ms) of the store in-process: the search cost without HTTP or inference."""
    started = time.perf_counter()
    store = QdrantStore.local(folder)
    opened = time.perf_counter() - started
    try:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            store.search(name, query, 5)
            times.append((time.perf_counter() - t) * 1000)
        return opened, statistics.median(times)
    finally:
        store.close()


def start_server(models: Path, collections: Path, port: int) -> subprocess.Popen:
    env = os.environ | {"STRIDE_PORT": str(port), "STRIDE_MODELS_DIR": str(models), "STRIDE_WORKERS": "1",
                        "STRIDE_COLLECTIONS_DIR": str(collections), "STRIDE_GRPC_PORT": "0",
                        "STRIDE_ACCESS_LOG": "false", "STRIDE_DRAIN_DELAY_S": "0", "STRIDE_WATCH_MODELS": "false"}
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not become ready")


def load(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            n = offset
            while time.perf_counter() < stop:
                t = time.perf_counter()
                response = client.post(url, content=bodies[n % len(bodies)], headers={"Content-Type": "image/png"})
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    errors[0] += response.status_code != 200
                n += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests_per_s": round(len(ordered) / wall, 1), "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1), "requests": len(ordered),
            "errors": errors[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    from training.tasks.embedding import embed_onnx

    bodies = [png(identities.TEST_FIRST + i, 1) for i in range(REAL)]
    real = embed_onnx(MODEL, [identities.view(identities.TEST_FIRST + i, 0) for i in range(REAL)])
    query = embed_onnx(MODEL, [identities.view(identities.TEST_FIRST, 1)])[0]
    with tempfile.TemporaryDirectory() as tmp:
        models, collections = Path(tmp) / "models", Path(tmp) / "collections"
        models.mkdir()
        shutil.copy(MODEL, models / MODEL.name)
        filled = {size: fill(collections, f"n{size}", size, real.shape[1], real) for size in args.sizes}
        opened = {size: store_search_ms(collections, f"n{size}", query) for size in args.sizes}
        started = time.perf_counter()
        server = start_server(models, collections, args.port)
        ready_s = time.perf_counter() - started
        try:
            base = f"http://127.0.0.1:{args.port}"
            result = load(f"{base}/v1/embed", bodies, args.seconds, args.concurrency)
            print(json.dumps({"route": "/v1/embed", "concurrency": args.concurrency, **result}))
            for size in args.sizes:
                result = load(f"{base}/v1/collections/n{size}/search?top_k=5", bodies, args.seconds,
                              args.concurrency)
                print(json.dumps({"route": "search", "stored": size, "concurrency": args.concurrency, **result,
                                  "store_search_ms": round(opened[size][1], 2),
                                  "store_open_s": round(opened[size][0], 2), "fill_s": round(filled[size], 1)}))
            print(json.dumps({"server_ready_s_with_all_collections": round(ready_s, 1)}))
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
