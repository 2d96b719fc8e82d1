"""The obvious FastAPI detection app, as a side-by-side peer for Stride's /v1/detect on a YOLO export.

    .venv/bin/python bench/peer_naive_detect.py --model tests/fixtures/ultralytics/detect_640.onnx --port 8011

A sync endpoint, one `session.run` per request: decode with OpenCV, letterbox (cv2 INTER_LINEAR, grey 114),
run, keep candidates over 0.25, greedy class-aware NMS at IoU 0.7 in numpy, boxes back to the original
image. What a person writes in an afternoon: the reference point Stride must beat. It answers
{"predictions": [{"class_id", "score", "box"}]} so the shared harness (../shared/bench/run.py) can drive it.
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import Body, FastAPI, HTTPException

MODEL = os.environ.get("BENCH_MODEL", "tests/fixtures/ultralytics/detect_640.onnx")


def make_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    threads = int(os.environ.get("BENCH_ORT_THREADS", "0") or 0)
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


session = make_session(MODEL)
INPUT = session.get_inputs()[0]
SIZE = INPUT.shape[2] if isinstance(INPUT.shape[2], int) else 640
app = FastAPI()


def letterbox(image: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    h, w = image.shape[:2]
    ratio = min(SIZE / h, SIZE / w)
    new_w, new_h = round(w * ratio), round(h * ratio)
    left, top = (SIZE - new_w) // 2, (SIZE - new_h) // 2
    canvas = np.full((SIZE, SIZE, 3), 114, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    tensor = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(tensor), ratio, left, top


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order, keep = np.argsort(-scores), []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(int(best))
        x1 = np.maximum(boxes[best, 0], boxes[order, 0])
        y1 = np.maximum(boxes[best, 1], boxes[order, 1])
        x2 = np.minimum(boxes[best, 2], boxes[order, 2])
        y2 = np.minimum(boxes[best, 3], boxes[order, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        order = order[inter / (area(boxes[best]) + area(boxes[order]) - inter + 1e-9) <= iou]
    return keep


@app.post("/v1/detect")
def detect(body: bytes = Body(..., media_type="image/jpeg")) -> dict:
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise HTTPException(400, "not an image")
    tensor, ratio, left, top = letterbox(image)
    rows = session.run(None, {INPUT.name: tensor})[0][0].T  # [N, 4 + classes]
    scores, classes = rows[:, 4:].max(axis=1), rows[:, 4:].argmax(axis=1)
    keep = scores > 0.25
    rows, scores, classes = rows[keep], scores[keep], classes[keep]
    boxes = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], axis=1)
    chosen = nms(boxes + classes[:, None] * 7680.0, scores, 0.7)[:300]
    boxes = (boxes[chosen] - [left, top, left, top]) / ratio
    return {"predictions": [{"class_id": int(c), "score": float(s), "box": [float(v) for v in b]}
                            for c, s, b in zip(classes[chosen], scores[chosen], boxes, strict=True)]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
