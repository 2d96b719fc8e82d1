"""Per-stage latency of the service's own pipeline, read from its Server-Timing header.

    python bench/stages.py --model lenet5 --route /v1/classify --sizes 640x480,4000x3000 [--requests 50]

Runs the real app in-process (no network), one request at a time, and reports the median milliseconds of
decode, preprocess, queue, inference, postprocess (NMS, masks, encoding) and serialize per image size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import photo_like
from service.app import create_app
from service.config import Settings

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess", "serialize")


def parse_timing(header: str) -> dict[str, float]:
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        stages[name] = float(duration)
    return stages


def measure(client: TestClient, route: str, image: bytes, requests: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for index in range(requests + 3):
        response = client.post(route, content=image, headers={"content-type": "image/jpeg"})
        response.raise_for_status()
        if index < 3:
            continue  # warm-up
        stages = parse_timing(response.headers["server-timing"])
        for stage in STAGES:
            samples[stage].append(stages.get(stage, 0.0))
        samples["total"].append(sum(stages.values()))
    return {stage: statistics.median(values) for stage, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--route", default="/v1/classify")
    parser.add_argument("--sizes", default="640x480,4000x3000")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    app = create_app(Settings(models_dir=Path(args.models_dir), access_log=False))
    rows = {}
    with TestClient(app) as client:
        while app.state.registry.loading:
            time.sleep(0.05)
        separator = "&" if "?" in args.route else "?"
        route = f"{args.route}{separator}model={args.model}"
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            rows[size] = measure(client, route, photo_like(width, height), args.requests)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"model {args.model}, route {args.route}, median ms per image over {args.requests} requests")
    print("| image | " + " | ".join(STAGES) + " | total | postprocess+serialize share |")
    print("|---" * (len(STAGES) + 3) + "|")
    for size, row in rows.items():
        share = (row["postprocess"] + row["serialize"]) / row["total"] if row["total"] else 0.0
        cells = " | ".join(f"{row[stage]:.3f}" for stage in STAGES)
        print(f"| {size} | {cells} | {row['total']:.3f} | {share:.1%} |")


if __name__ == "__main__":
    main()
