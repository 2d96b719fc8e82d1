"""Print how close Stride's answers are to Ultralytics' own on the conformance fixtures (the figures behind
tests/service/families/test_ultralytics_conformance.py, which asserts the thresholds).

    .venv/bin/python -m tools.ultralytics_conformance

Per model file: reference instances, Stride's answers, matched pairs (same class, IoU >= 0.9), the mean and
largest score gap, and per task the mean mask IoU, keypoint distance (visible joints) or corner distance;
for the classifier, the largest probability difference.
"""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import wait_until_loaded
from tests.service.families import test_ultralytics_conformance as conformance


def report(client: TestClient, path) -> str:  # type: ignore[no-untyped-def]
    ref = conformance.reference(path)
    task, model, nc = ref["meta"]["task"], path.stem, len(ref["meta"]["names"])
    if task == "classify":
        worst = 0.0
        for name, entry in ref["images"].items():
            answer = conformance.ask(client, model, task, conformance.FIXTURES / "images" / name, nc)
            got = {p["class_id"]: p["score"] for p in answer["predictions"]}
            worst = max(worst, max(abs(got[i] - p) for i, p in enumerate(entry["probs"])))
        return f"{model}: {len(ref['images'])} images, largest probability difference {worst:.2e}"
    total = found = matched = 0
    gaps: list[float] = []
    extra: list[float] = []
    for name, entry in ref["images"].items():
        answer = conformance.ask(client, model, task, conformance.FIXTURES / "images" / name, nc)
        got = conformance.answered(task, answer)
        boxes = conformance.reference_boxes(task, entry)
        pairs = conformance.match(boxes, entry["class_ids"], got)
        total, found, matched = total + len(boxes), found + len(got), matched + len(pairs)
        for r, g in pairs:
            gaps.append(abs(entry["confidences"][r] - got[g]["score"]))
            if task == "segment":
                expected, mine = conformance.decode_rle(entry["masks_rle"][r]), conformance.decode_rle(got[g]["mask"])
                extra.append((expected & mine).sum() / max(1, (expected | mine).sum()))
            elif task == "pose":
                extra += [float(np.hypot(j["x"] - x, j["y"] - y))
                          for (x, y, v), j in zip(entry["keypoints"][r], got[g]["keypoints"], strict=True) if v >= 0.5]
            elif task == "obb":
                extra.append(float(np.abs(np.asarray(got[g]["obb"]["corners"]) - entry["xyxyxyxy"][r]).max()))
    line = (f"{model} ({task}): {total} reference, {found} answered, {matched} matched; score gap mean "
            f"{np.mean(gaps):.1e} max {np.max(gaps):.1e}")
    label = {"segment": "mask IoU", "pose": "joint distance px", "obb": "corner distance px"}.get(task)
    if label and extra:
        line += f"; {label} mean {np.mean(extra):.4f} (min {np.min(extra):.4f}, max {np.max(extra):.4f})"
    return line


def main() -> None:
    app = create_app(Settings(models_dir=conformance.FIXTURES, providers=["CPUExecutionProvider"], workers=1))
    with TestClient(app) as client:
        wait_until_loaded(client)
        for path in conformance.REFERENCES:
            print(report(client, path))


if __name__ == "__main__":
    main()
