"""Does JPEG draft decoding change predictions, and how much faster is a large photo served?

    python bench/jpeg_draft.py [--sizes 640x480,4000x3000] [--count 270]

Renders the held-out digits of the bundled LeNet-5 as photo-sized JPEGs (a digit filling the frame, as a
phone would capture it), classifies each through the service's own decoding with draft decoding off and
on, and reports top-1 agreement, the largest probability difference and the decode+preprocess time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import upscaled
from service.config import Settings
from service.contract import from_metadata_props
from service.payload import ImageSource
from service.pipeline import StageTimes, decode_and_prepare
from service.runtime import open_session
from service.tasks.classification import softmax
from training.data.digits import load_digits_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/lenet5.onnx")
    parser.add_argument("--sizes", default="640x480,4000x3000")
    parser.add_argument("--count", type=int, default=270)
    args = parser.parse_args()

    session = open_session(Path(args.model), Settings(providers=["CPUExecutionProvider"]))
    metadata = from_metadata_props(session.custom_metadata)
    test = load_digits_splits().test
    images, labels = test.images[: args.count], np.asarray(test.targets[: args.count])
    report = {}
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        sources = [ImageSource(upscaled(image, width, height), "binary") for image in images]
        runs = {}
        for draft in (False, True):
            started = time.perf_counter()
            tensors = [decode_and_prepare(s, metadata, max_pixels=10**9, jpeg_draft=draft, times=StageTimes()).tensor
                       for s in sources]
            seconds = (time.perf_counter() - started) / len(sources)
            probabilities = softmax(session.run(np.stack(tensors))[0].astype(np.float64))
            runs[draft] = (probabilities, seconds)
        (full, full_s), (drafted, draft_s) = runs[False], runs[True]
        truth = labels
        report[size] = {
            "images": len(sources),
            "top1_agreement": float(np.mean(full.argmax(1) == drafted.argmax(1))),
            "accuracy_full_decode": float(np.mean(full.argmax(1) == truth)),
            "accuracy_draft": float(np.mean(drafted.argmax(1) == truth)),
            "max_abs_probability_diff": float(np.abs(full - drafted).max()),
            "decode_preprocess_ms_full": full_s * 1000,
            "decode_preprocess_ms_draft": draft_s * 1000,
            "speedup": full_s / draft_s,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
