"""Throughput of Open Inference Protocol binary infer (/v2, the preprocessed tensor) against /v1/classify
(the encoded image) on the same model and image, against a running server:

    python -m service &                                  # or any Stride URL
    python bench/oip_bench.py --url http://127.0.0.1:8000 --model lenet5 --image docs/samples/digit-7.png \
        --seconds 10 --concurrency 8

Both sides use one keep-alive httpx client per worker thread, so the difference is the server's work:
/v1 decodes and preprocesses the image, /v2 takes the tensor that preprocessing gives (computed here once
with service.preprocess, the server's own code). Prints one JSON line per route: requests/s and latency
percentiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.preprocess import prepare  # noqa: E402

HEADER = "Inference-Header-Content-Length"


def v2_request(url: str, model: str, image_path: Path) -> tuple[str, bytes, dict[str, str]]:
    metadata = httpx.get(f"{url}/v1/models/{model}").json()
    from service.contract import InputSpec  # the server's own input contract, as /v1/models gives it

    spec = InputSpec(**metadata["input"])
    with Image.open(image_path) as opened:
        tensor, _ = prepare(opened.convert(spec.color_mode), spec)
    raw = np.ascontiguousarray(tensor[np.newaxis], np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": spec.name, "datatype": "FP32", "shape": [1, *tensor.shape],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    headers = {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}
    return f"{url}/v2/models/{model}/infer", header + raw, headers


def v1_request(url: str, model: str, image_path: Path) -> tuple[str, bytes, dict[str, str]]:
    content_type = "image/png" if image_path.suffix.lower() == ".png" else "image/jpeg"
    return f"{url}/v1/classify?model={model}&top_k=1", image_path.read_bytes(), {"Content-Type": content_type}


def load(target: tuple[str, bytes, dict[str, str]], seconds: float, concurrency: int) -> dict[str, float]:
    url, body, headers = target
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            mine = []
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                response = client.post(url, content=body, headers=headers)
                if response.status_code != 200:
                    with lock:
                        failures[0] += 1
                    continue
                mine.append(time.perf_counter() - started)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cuts = statistics.quantiles(latencies, n=100)
    return {"requests_per_s": round(len(latencies) / seconds, 1), "p50_ms": round(cuts[49] * 1000, 2),
            "p99_ms": round(cuts[98] * 1000, 2), "failures": failures[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--image", type=Path, default=REPO / "docs" / "samples" / "digit-7.png")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    targets = {"v2 binary infer": v2_request(args.url, args.model, args.image),
               "v1 classify": v1_request(args.url, args.model, args.image)}
    for name, target in targets.items():
        load(target, min(2.0, args.seconds), args.concurrency)  # warm-up, not reported
        print(json.dumps({"route": name, "model": args.model, "concurrency": args.concurrency,
                          **load(target, args.seconds, args.concurrency)}))


if __name__ == "__main__":
    main()
