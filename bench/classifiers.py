"""Compare the bundled classifiers and write the table into docs/classifiers.md.

    python bench/classifiers.py [--models-dir models] [--doc docs/classifiers.md] [--threads 1]

For each of lenet5, alexnet, inception, resnet and gcn, fp32 and int8 (the committed -int8.onnx, or
one quantised into a scratch folder when none is committed, e.g. lenet5): held-out
accuracy through ONNX Runtime on the digits test split, parameters, FLOPs per image (training.flops),
ONNX file size, and CPU latency through ONNX Runtime at batch 1 and batch 32 (median of repeated runs
after warm-up, real test images as input). The table replaces the text between the BENCH markers in the
doc; the machine, thread count and load average at measurement time are written with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.data import load_dataset, render_batch  # noqa: E402
from training.export import export_int8, read_metadata  # noqa: E402
from training.flops import count_flops  # noqa: E402
from training.machine import describe_machine  # noqa: E402
from training.registry import count_parameters, get_arch  # noqa: E402
from training.tasks import get_task  # noqa: E402
from training.tasks.base import EvalRequest  # noqa: E402
from training.tasks.classification import evaluate_images  # noqa: E402

NAMES = ("lenet5", "alexnet", "inception", "resnet", "gcn")
START, END = "<!-- BENCH:START (written by bench/classifiers.py) -->", "<!-- BENCH:END -->"


def latency_ms(session: ort.InferenceSession, x: np.ndarray, batch: int, seconds: float = 1.5) -> float:
    """Median wall time of one run at this batch size, in milliseconds."""
    name = session.get_inputs()[0].name
    feed = {name: np.ascontiguousarray(x[:batch])}
    for _ in range(5):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 20:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(path: Path, threads: int) -> dict[str, float]:
    meta = read_metadata(path)
    splits = load_dataset("digits")
    report = evaluate_images(path, splits.test.images, splits.test.targets)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = render_batch(splits.test.images[:32], meta.input)
    b1, b32 = latency_ms(session, x, 1), latency_ms(session, x, 32)
    return {"accuracy": report.accuracy, "errors": report.errors, "bytes": path.stat().st_size,
            "batch1_ms": b1, "batch32_ms": b32, "batch32_per_image_ms": b32 / 32}  # fmt: skip


def evaluate_digits(path: Path, metadata: object) -> object:
    return get_task("classification").evaluate(path, metadata, EvalRequest(data="digits", seed=0))  # type: ignore[arg-type]


def model_facts(models_dir: Path, name: str) -> tuple[int, int]:
    """(parameters, FLOPs per image) from the architecture config recorded in the model card."""
    recorded = json.loads((models_dir / name / "metrics.json").read_text())
    arch = get_arch(name)
    model = arch.build(arch.make_config(recorded["arch_config"]))
    spec = arch.default_input
    return count_parameters(model), count_flops(model, (spec.channels, spec.height, spec.width))


def render(rows: list[dict], threads: int) -> str:
    head = (
        "| model | precision | test accuracy (ORT) | parameters | FLOPs / image | ONNX bytes | "
        "latency batch 1 (ms) | latency batch 32 (ms per batch / per image) |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['file']} | {r['precision']} | {r['accuracy']:.4f} ({270 - r['errors']}/270) | {r['params']:,} | "
        f"{r['flops']:,} | {r['bytes']:,} | {r['batch1_ms']:.3f} | {r['batch32_ms']:.2f} / "
        f"{r['batch32_per_image_ms']:.3f} |"
        for r in rows
    ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    note = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {describe_machine()}, ONNX Runtime "
        f"{ort.__version__}, CPUExecutionProvider, {threads} intra-op thread(s), median of repeated runs after "
        f"warm-up. **The machine was shared** with other training jobs while this ran (load average {load}), "
        "so absolute latencies are noisy and pessimistic; compare rows with each other, and rerun "
        "`python bench/classifiers.py` on an idle machine for absolute numbers. Accuracy: the 270 held-out "
        "digits test images. FLOPs: 2 x multiply-accumulates of conv/linear/matmul (training.flops)."
    )
    return f"{START}\n{note}\n\n{head}\n" + "\n".join(lines) + f"\n{END}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "classifiers.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="stride-bench-"))
    for name in NAMES:
        params, flops = model_facts(args.models_dir, name)
        for suffix, precision in (("", "fp32"), ("-int8", "int8")):
            path = args.models_dir / f"{name}{suffix}.onnx"
            label = f"`{path.name}`"
            if not path.exists() and precision == "int8":
                # Not committed (e.g. lenet5): quantise a scratch copy so every architecture gets its row.
                copy = Path(shutil.copy(args.models_dir / f"{name}.onnx", scratch))
                path = export_int8(copy, load_dataset("digits").train.images, evaluate_digits).path
                label = f"`{path.name}` (not committed)"
            row = {"file": label, "precision": precision, "params": params, "flops": flops}
            row.update(measure(path, args.threads))
            rows.append(row)
            print(json.dumps(row))
    shutil.rmtree(scratch, ignore_errors=True)
    table = render(rows, args.threads)
    text = args.doc.read_text() if args.doc.exists() else f"# Classifiers\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    args.doc.write_text(before + table + after)
    print(f"wrote the table into {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
