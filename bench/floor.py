"""In-process floor of Stride's own pipeline, no HTTP: decode + preprocess + ONNX Runtime + output decoding.

    python bench/floor.py --model models/lenet5.onnx [--size 640x480] [--seconds 3] [--batch-sizes 1,8,32]

`single`: one thread, one image per run. `batch=K`: one thread decodes K images, one ONNX Runtime run on
the K, then decodes the K outputs: what a perfect batching server could reach with serial decoding.
With and without JPEG draft decoding (the service's default is on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import photo_like
from service.config import Settings
from service.contract import Task, from_metadata_props
from service.payload import ImageSource
from service.pipeline import StageTimes, decode_and_prepare
from service.preprocess import Geometry
from service.runtime import open_session
from service.tasks.classification import top_k_classes
from service.tasks.detection import DetectionQuery, select_detections


def output_decoder(metadata):  # type: ignore[no-untyped-def]
    if metadata.task is Task.CLASSIFICATION:
        return lambda outputs, geometry: top_k_classes(outputs[0], metadata, 5)
    boxes, scores = metadata.output("boxes"), metadata.output("scores")
    query = DetectionQuery()
    return lambda outputs, geometry: select_detections(outputs[boxes], outputs[scores], geometry, query)


def images_per_second(run, per_call: int, seconds: float) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        run()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        calls += 1
    return calls * per_call / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/lenet5.onnx")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--ort-threads", type=int, default=1)
    args = parser.parse_args()

    settings = Settings(providers=["CPUExecutionProvider"], ort_intra_op_threads=args.ort_threads)
    session = open_session(Path(args.model), settings)
    metadata = from_metadata_props(session.custom_metadata)
    decode = output_decoder(metadata)
    width, height = (int(v) for v in args.size.split("x"))
    source = ImageSource(photo_like(width, height), "binary")

    def prepared(draft: bool):  # type: ignore[no-untyped-def]
        return decode_and_prepare(source, metadata, max_pixels=10**9, jpeg_draft=draft, times=StageTimes())

    results: dict[str, float] = {}
    for draft in (False, True):
        tag = "draft" if draft else "full-decode"
        for k in (int(v) for v in args.batch_sizes.split(",")):
            def run(k: int = k, draft: bool = draft) -> None:
                items = [prepared(draft) for _ in range(k)]
                outputs = session.run(np.stack([item.tensor for item in items]))
                for index, item in enumerate(items):
                    geometry: Geometry = item.geometry
                    decode([out[index] for out in outputs], geometry)

            results[f"{tag} batch={k}"] = images_per_second(run, k, args.seconds)
    print(json.dumps({"model": args.model, "image": args.size, "images_per_second": results}, indent=2))


if __name__ == "__main__":
    main()
