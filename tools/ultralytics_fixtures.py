"""Make Ultralytics conformance fixtures: tiny YOLO models trained here, their ONNX exports, and the
answers Ultralytics' own predictor gives on a fixed set of reference images.

Run with the separate Ultralytics venv, never with the service's .venv (the service must not import
torch or ultralytics):

    python3 -m venv /work/venvs/ultra
    /work/venvs/ultra/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics onnx onnxruntime \
        onnxslim pycocotools
    /work/venvs/ultra/bin/python tools/ultralytics_fixtures.py all

Stages (each reuses what the earlier ones left in --work, so a stage can be rerun alone):
    data     synthetic datasets in Ultralytics' formats (detect/segment, pose, obb, classify)
    train    tiny models built from yaml (no pretrained weights), trained on CPU
    export   ONNX files into tests/fixtures/ultralytics/
    images   reference images into tests/fixtures/ultralytics/images/
    predict  Ultralytics' own predictor on every ONNX file x every image -> <model>.json, VERSIONS.json
    verify   recompute every answer with numpy + onnxruntime following NOTES.md only, compare with the JSON
    all      every stage in that order

Everything is seeded, so the data and the images are the same on every run; training on CPU is
deterministic for one torch build and thread count, and the JSON answers are computed from the ONNX files
that ship, so they always agree with those files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "ultralytics"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "stride-ultralytics-fixtures"
COMMAND = "/work/venvs/ultra/bin/python tools/ultralytics_fixtures.py all"

TRAIN_IMGSZ = 160
BENCH_IMGSZ = 640
SEED = 20240611

SHAPE_NAMES = ["circle", "square", "triangle", "hexagon"]
OBB_NAMES = ["plank", "ellipse", "card"]
POSE_NAMES = ["person"]
# COCO keypoint order; flip_idx swaps left and right so Ultralytics' horizontal flip keeps labels right.
COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
COCO_FLIP_IDX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
SKELETON = [
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Environment: Ultralytics must never reach the network nor write into the repository.
# --------------------------------------------------------------------------------------------------


def prepare_offline_ultralytics(work: Path) -> None:
    """Point Ultralytics at a private settings dir with local fonts; call before importing it."""
    config_dir = work / "yolo_config"
    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_VERBOSE", "True")
    import matplotlib  # ships DejaVuSans; Ultralytics would otherwise download Arial for its plots

    dejavu = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (font_dir / name).exists():
            shutil.copyfile(dejavu, font_dir / name)


# --------------------------------------------------------------------------------------------------
# Drawing: flat-ish textured backgrounds (they compress well as PNG) and the objects of each task.
# --------------------------------------------------------------------------------------------------


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A BGR background: a soft two-colour gradient with faint stripes, no per-pixel noise."""
    base = rng.integers(60, 200, size=3).astype(np.float32)
    tilt = rng.uniform(-40, 40, size=3).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs / max(width - 1, 1) * math.cos(rng.uniform(0, math.pi)) + ys / max(height - 1, 1) * 0.5
    period = rng.uniform(12, 40)
    angle = rng.uniform(0, math.pi)
    stripes = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
    stripes = np.round(stripes * 2) * rng.uniform(3, 7)  # few levels: textured yet compressible
    image = base[None, None, :] + ramp[..., None] * tilt[None, None, :] + stripes[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def distinct_colour(rng: np.random.Generator, background: np.ndarray, x: float, y: float) -> tuple[int, int, int]:
    """A colour far enough from the background under (x, y) that the object is plainly visible."""
    h, w = background.shape[:2]
    under = background[min(int(y), h - 1), min(int(x), w - 1)].astype(int)
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - under).sum() > 200:
            return tuple(int(c) for c in colour)


def regular_polygon(cx: float, cy: float, radius: float, sides: int, rotation: float) -> np.ndarray:
    angles = rotation + np.arange(sides) * 2 * math.pi / sides
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def shape_polygon(kind: str, cx: float, cy: float, radius: float, rotation: float) -> np.ndarray:
    """Outline of one shape class as a polygon (a circle as 48 points), in pixels."""
    if kind == "circle":
        return regular_polygon(cx, cy, radius, 48, 0.0)
    if kind == "square":
        return regular_polygon(cx, cy, radius * 1.2, 4, rotation + math.pi / 4)
    if kind == "triangle":
        return regular_polygon(cx, cy, radius * 1.2, 3, rotation - math.pi / 2)
    if kind == "hexagon":
        return regular_polygon(cx, cy, radius * 1.1, 6, rotation)
    raise ValueError(f"unknown shape {kind!r}")


def boxes_overlap(box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    return any(not (x1 < a0 or x0 > a1 or y1 < b0 or y0 > b1) for a0, b0, a1, b1 in others)


def normalised(points: np.ndarray, width: int, height: int) -> list[float]:
    clipped = np.clip(points / np.array([width, height], dtype=np.float64), 0.0, 1.0)
    return [round(float(v), 6) for v in clipped.reshape(-1)]


@dataclass
class Scene:
    """One generated image and its label lines in Ultralytics' text format."""

    image: np.ndarray
    labels: list[str]


def object_count(rng: np.random.Generator, max_objects: int, min_objects: int) -> int:
    return int(rng.integers(min(min_objects, max_objects), max_objects + 1))


def shapes_scene(rng: np.random.Generator, height: int, width: int, max_objects: int, min_objects: int = 1) -> Scene:
    """Filled shapes, not overlapping; polygon labels serve both detect and segment training."""
    import cv2

    image = textured_background(rng, height, width)
    labels: list[str] = []
    placed: list[tuple[float, float, float, float]] = []
    short = min(height, width)
    for _ in range(object_count(rng, max_objects, min_objects)):
        for _attempt in range(30):
            radius = rng.uniform(0.07, 0.2) * short + 4
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            box = (cx - radius * 1.25, cy - radius * 1.25, cx + radius * 1.25, cy + radius * 1.25)
            if not boxes_overlap(box, placed):
                break
        else:
            continue
        placed.append(box)
        cls = int(rng.integers(len(SHAPE_NAMES)))
        polygon = shape_polygon(SHAPE_NAMES[cls], cx, cy, radius, rng.uniform(0, 2 * math.pi))
        cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], distinct_colour(rng, image, cx, cy), cv2.LINE_AA)
        labels.append(" ".join([str(cls), *map(str, normalised(polygon, width, height))]))
    return Scene(image, labels)


def stick_figure_joints(rng: np.random.Generator, cx: float, top: float, height: float) -> np.ndarray:
    """17 COCO joints of a standing figure facing the viewer (its left on the image's right)."""
    u = height / 8.0  # head-heights
    lean = rng.uniform(-0.15, 0.15) * u
    arm = [rng.uniform(-1.2, 1.2) for _ in range(2)]
    leg = [rng.uniform(-0.4, 0.4) for _ in range(2)]
    head_y = top + 0.6 * u
    shoulder_y, hip_y, knee_y, ankle_y = top + 1.6 * u, top + 4.2 * u, top + 6.0 * u, top + 7.8 * u
    joints = {
        "nose": (cx + lean, head_y + 0.1 * u),
        "left_eye": (cx + lean + 0.2 * u, head_y - 0.1 * u),
        "right_eye": (cx + lean - 0.2 * u, head_y - 0.1 * u),
        "left_ear": (cx + lean + 0.45 * u, head_y),
        "right_ear": (cx + lean - 0.45 * u, head_y),
        "left_shoulder": (cx + 0.9 * u, shoulder_y),
        "right_shoulder": (cx - 0.9 * u, shoulder_y),
        "left_elbow": (cx + 1.3 * u, shoulder_y + 1.3 * u - arm[0] * 0.6 * u),
        "right_elbow": (cx - 1.3 * u, shoulder_y + 1.3 * u - arm[1] * 0.6 * u),
        "left_wrist": (cx + 1.6 * u + abs(arm[0]) * 0.5 * u, shoulder_y + 2.5 * u - arm[0] * 1.6 * u),
        "right_wrist": (cx - 1.6 * u - abs(arm[1]) * 0.5 * u, shoulder_y + 2.5 * u - arm[1] * 1.6 * u),
        "left_hip": (cx + 0.6 * u, hip_y),
        "right_hip": (cx - 0.6 * u, hip_y),
        "left_knee": (cx + 0.7 * u + leg[0] * u, knee_y),
        "right_knee": (cx - 0.7 * u + leg[1] * u, knee_y),
        "left_ankle": (cx + 0.8 * u + leg[0] * 1.5 * u, ankle_y),
        "right_ankle": (cx - 0.8 * u + leg[1] * 1.5 * u, ankle_y),
    }
    return np.array([joints[name] for name in COCO_KEYPOINTS], dtype=np.float64)


def draw_stick_figure(image: np.ndarray, joints: np.ndarray, height: float, rng: np.random.Generator) -> None:
    """Head disc, limbs as thick lines; left limbs warm, right limbs cool so the sides are learnable."""
    import cv2

    thickness = max(1, round(height / 40))
    body = distinct_colour(rng, image, *joints[0])
    left, right = (0, 80, 255), (255, 160, 0)  # BGR: orange-red vs blue
    for a, b in SKELETON:
        is_left = COCO_KEYPOINTS[a].startswith("left") or COCO_KEYPOINTS[b].startswith("left")
        is_right = COCO_KEYPOINTS[a].startswith("right") or COCO_KEYPOINTS[b].startswith("right")
        colour = body if is_left == is_right else (left if is_left else right)
        cv2.line(image, tuple(np.round(joints[a]).astype(int)), tuple(np.round(joints[b]).astype(int)),
                 colour, thickness, cv2.LINE_AA)  # fmt: skip
    head_centre = tuple(np.round((joints[3] + joints[4]) / 2).astype(int))
    cv2.circle(image, head_centre, max(2, int(height / 14)), body, -1, cv2.LINE_AA)
    for index in (1, 2):  # eyes as dark dots
        cv2.circle(image, tuple(np.round(joints[index]).astype(int)), max(1, thickness // 2), (20, 20, 20), -1)


def pose_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_figures: int,
    min_figures: int = 1,
    figure_height: tuple[float, float] = (0.35, 0.9),
) -> Scene:
    """Stick figures; joints outside the image get visibility 0, a few ears are 'occluded' (1).

    figure_height is the range of a figure's height as a fraction of the image's; smaller figures let the
    reference images hold more of them.
    """
    image = textured_background(rng, height, width)
    labels: list[str] = []
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(object_count(rng, max_figures, min_figures)):
        for _attempt in range(30):
            fig_h = rng.uniform(*figure_height) * height
            cx = rng.uniform(0.1 * width, 0.9 * width)
            top = rng.uniform(-0.1 * fig_h, height - 0.85 * fig_h)  # sometimes cut at the bottom or top
            joints = stick_figure_joints(rng, cx, top, fig_h)
            x0, y0 = joints.min(axis=0) - fig_h / 14
            x1, y1 = joints.max(axis=0) + fig_h / 14
            if not boxes_overlap((x0, y0, x1, y1), placed):
                break
        else:
            continue
        placed.append((x0, y0, x1, y1))
        draw_stick_figure(image, joints, fig_h, rng)
        inside = (joints[:, 0] >= 0) & (joints[:, 0] < width) & (joints[:, 1] >= 0) & (joints[:, 1] < height)
        visibility = np.where(inside, 2, 0)
        if rng.random() < 0.3:
            visibility[int(rng.integers(3, 5))] = np.where(inside[3], 1, 0).item()  # one ear hidden
        bx0, by0 = max(x0, 0), max(y0, 0)
        bx1, by1 = min(x1, width), min(y1, height)
        box = [(bx0 + bx1) / 2 / width, (by0 + by1) / 2 / height, (bx1 - bx0) / width, (by1 - by0) / height]
        kpts: list[str] = []
        for (x, y), vis in zip(joints, visibility, strict=True):
            if vis == 0:
                kpts += ["0", "0", "0"]
            else:
                kpts += [f"{x / width:.6f}", f"{y / height:.6f}", str(int(vis))]
        labels.append(" ".join(["0", *(f"{v:.6f}" for v in box), *kpts]))
    return Scene(image, labels)


def obb_scene(rng: np.random.Generator, height: int, width: int, max_objects: int, min_objects: int = 1) -> Scene:
    """Rotated planks (long thin rectangles), ellipses and cards (near-square rectangles)."""
    import cv2

    image = textured_background(rng, height, width)
    labels: list[str] = []
    placed: list[tuple[float, float, float, float]] = []
    short = min(height, width)
    for _ in range(object_count(rng, max_objects, min_objects)):
        cls = int(rng.integers(len(OBB_NAMES)))
        for _attempt in range(30):
            long_side = rng.uniform(0.2, 0.5) * short + 6
            aspect = {0: rng.uniform(3.0, 5.0), 1: rng.uniform(1.6, 2.6), 2: rng.uniform(1.2, 1.5)}[cls]
            w, h = long_side, long_side / aspect
            angle = rng.uniform(0, 180)
            cx, cy = (
                rng.uniform(long_side / 2, width - long_side / 2),
                rng.uniform(long_side / 2, height - long_side / 2),
            )
            corners = cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.float64)
            x0, y0 = corners.min(axis=0)
            x1, y1 = corners.max(axis=0)
            if x0 >= 0 and y0 >= 0 and x1 < width and y1 < height and not boxes_overlap((x0, y0, x1, y1), placed):
                break
        else:
            continue
        placed.append((x0, y0, x1, y1))
        colour = distinct_colour(rng, image, cx, cy)
        if OBB_NAMES[cls] == "ellipse":
            cv2.ellipse(
                image, (round(cx), round(cy)), (round(w / 2), round(h / 2)), angle, 0, 360, colour, -1, cv2.LINE_AA
            )
        else:
            cv2.fillPoly(image, [np.round(corners).astype(np.int32)], colour, cv2.LINE_AA)
        labels.append(" ".join([str(cls), *map(str, normalised(corners, width, height))]))
    return Scene(image, labels)


# BGR. The tiny classifier stayed at chance on shape alone in the few minutes of CPU it gets; a colour per
# class (with jitter) makes it learn quickly, and the fixture only needs a model with real, varied answers.
CLASSIFY_COLOURS = [(40, 40, 220), (40, 200, 40), (220, 60, 40), (30, 220, 230)]


def classify_scene(rng: np.random.Generator, height: int, width: int, cls: int) -> np.ndarray:
    """One large shape of class `cls` in its class colour, off-centre, on a textured background."""
    import cv2

    image = textured_background(rng, height, width)
    short = min(height, width)
    radius = rng.uniform(0.22, 0.38) * short
    cx = rng.uniform(radius * 1.1, width - radius * 1.1)
    cy = rng.uniform(radius * 1.1, height - radius * 1.1)
    polygon = shape_polygon(SHAPE_NAMES[cls], cx, cy, radius, rng.uniform(0, 2 * math.pi))
    colour = np.clip(np.array(CLASSIFY_COLOURS[cls]) + rng.integers(-25, 26, size=3), 0, 255)
    cv2.fillPoly(image, [np.round(polygon).astype(np.int32)], tuple(int(c) for c in colour), cv2.LINE_AA)
    return image


# --------------------------------------------------------------------------------------------------
# Datasets on disk, in Ultralytics' layouts.
# --------------------------------------------------------------------------------------------------


def random_size(rng: np.random.Generator, low: int = 144, high: int = 288) -> tuple[int, int]:
    return int(rng.integers(low, high)), int(rng.integers(low, high))


def write_yolo_split(root: Path, split: str, scenes: Iterable[Scene]) -> int:
    import cv2

    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    count = 0
    for index, scene in enumerate(scenes):
        cv2.imwrite(str(root / "images" / split / f"{index:05d}.png"), scene.image)
        (root / "labels" / split / f"{index:05d}.txt").write_text("\n".join(scene.labels) + "\n")
        count += 1
    return count


def write_data_yaml(root: Path, names: list[str], extra: dict[str, Any] | None = None) -> Path:
    lines = [f"path: {root}", "train: images/train", "val: images/val", "names:"]
    lines += [f"  {i}: {name}" for i, name in enumerate(names)]
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {json.dumps(value)}")
    path = root / "data.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_yolo_dataset(root: Path, seed: int, sizes: tuple[int, int], draw: Callable[..., Scene],
                      names: list[str], extra: dict[str, Any] | None = None) -> Path:  # fmt: skip
    if (root / "data.yaml").exists():
        return root / "data.yaml"
    rng = np.random.default_rng(seed)
    n_train, n_val = sizes
    write_yolo_split(root, "train", (draw(rng, *random_size(rng)) for _ in range(n_train)))
    write_yolo_split(root, "val", (draw(rng, *random_size(rng)) for _ in range(n_val)))
    return write_data_yaml(root, names, extra)


def make_classify_dataset(root: Path, seed: int, per_class: tuple[int, int]) -> Path:
    import cv2

    if (root / "train").exists() and (root / "val").exists():
        return root
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for cls, name in enumerate(SHAPE_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                cv2.imwrite(str(folder / f"{index:04d}.png"), classify_scene(rng, *random_size(rng, 96, 224), cls))
    return root


def make_datasets(work: Path) -> dict[str, Path]:
    data = work / "datasets"
    return {
        "shapes": make_yolo_dataset(
            data / "shapes", SEED + 1, (400, 60), lambda r, h, w: shapes_scene(r, h, w, 6), SHAPE_NAMES
        ),
        "pose": make_yolo_dataset(
            data / "pose",
            SEED + 2,
            (400, 60),
            lambda r, h, w: pose_scene(r, h, w, 3),
            POSE_NAMES,
            {"kpt_shape": [17, 3], "flip_idx": COCO_FLIP_IDX},
        ),
        "obb": make_yolo_dataset(data / "obb", SEED + 3, (400, 60), lambda r, h, w: obb_scene(r, h, w, 5), OBB_NAMES),
        "classify": make_classify_dataset(data / "classify", SEED + 4, (80, 20)),
    }


# --------------------------------------------------------------------------------------------------
# Tiny model yaml: Ultralytics' own architecture files with one extra, narrow scale 't'.
# --------------------------------------------------------------------------------------------------

TINY_SCALE = "[0.33, 0.125, 256]"  # depth, width, max_channels
# DFL bins. The default 16 makes the box branch 64 channels wide whatever the width multiple, and it would be
# two thirds of every file; 8 bins keep the nine ONNX files within the 10 MB the fixtures may take. The DFL
# runs inside the graph, so an ONNX consumer sees the same outputs either way.
TINY_REG_MAX = 8


def tiny_model_yaml(work: Path, family: str, name: str, nc: int) -> Path:
    """Copy Ultralytics' cfg/models/<family>/<name>.yaml, add scale 't', set nc; the file is named ...t.yaml."""
    import re

    import ultralytics

    source = Path(ultralytics.__file__).parent / "cfg" / "models" / family / f"{name}.yaml"
    text = source.read_text()
    text = re.sub(r"^nc: \d+", f"nc: {nc}", text, count=1, flags=re.M)
    if not re.search(r"^reg_max:", text, flags=re.M):  # YOLO26 already has reg_max: 1
        text = re.sub(r"^(nc: \d+.*)$", rf"\1\nreg_max: {TINY_REG_MAX}", text, count=1, flags=re.M)
    text, added = re.subn(r"^(\s+)n: ", rf"\1t: {TINY_SCALE}\n\1n: ", text, count=1, flags=re.M)
    if not added:
        raise RuntimeError(f"{source} has no 'n' scale to model the tiny one on")
    target = work / "yaml" / f"{name}t.yaml"  # Ultralytics reads the scale from the letter after the size
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@dataclass(frozen=True)
class TrainJob:
    name: str  # run name and .pt name
    family: str
    arch: str
    dataset: str
    nc: int
    epochs: int
    extra: tuple[tuple[str, Any], ...] = ()


TRAIN_JOBS = [
    TrainJob("detect", "11", "yolo11", "shapes", len(SHAPE_NAMES), 90),
    TrainJob("pose", "11", "yolo11-pose", "pose", 1, 80),
    TrainJob("segment", "11", "yolo11-seg", "shapes", len(SHAPE_NAMES), 70),
    TrainJob("obb", "11", "yolo11-obb", "obb", len(OBB_NAMES), 50),
    # 10 steps an epoch: plain SGD, no RandAugment or erasing (see CLASSIFY_COLOURS)
    TrainJob(
        "classify",
        "11",
        "yolo11-cls",
        "classify",
        len(SHAPE_NAMES),
        30,
        (("optimizer", "SGD"), ("lr0", 0.01), ("auto_augment", None), ("erasing", 0.0), ("batch", 16)),
    ),
    TrainJob("detect26", "26", "yolo26", "shapes", len(SHAPE_NAMES), 50),
]


def train_one(work: Path, job: TrainJob, datasets: dict[str, Path], epochs: int | None = None) -> Path:
    """Train one tiny model from yaml; return its weights. Reuses weights a previous run left."""
    from ultralytics import YOLO

    weights = work / "weights" / f"{job.name}.pt"
    if weights.exists():
        return weights
    model = YOLO(str(tiny_model_yaml(work, job.family, job.arch, job.nc)))
    started = time.time()
    model.train(
        **{"data": str(datasets[job.dataset]), "epochs": epochs or job.epochs, "imgsz": TRAIN_IMGSZ, "batch": 32,
           "workers": 2, "device": "cpu", "seed": SEED, "deterministic": True, "pretrained": False, "amp": False,
           "plots": False, "cache": True, "project": str(work / "runs"), "name": job.name, "exist_ok": True,
           "patience": 0, "verbose": False, **dict(job.extra)},
    )  # fmt: skip
    run_dir = work / "runs" / job.name / "weights"
    best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, weights)
    (work / "weights" / f"{job.name}.seconds").write_text(f"{time.time() - started:.1f}\n")
    return weights


def train_all(work: Path, only: list[str] | None, epochs: int | None) -> dict[str, Path]:
    datasets = make_datasets(work)
    return {job.name: train_one(work, job, datasets, epochs) for job in TRAIN_JOBS if not only or job.name in only}


# --------------------------------------------------------------------------------------------------
# ONNX exports.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportJob:
    name: str  # file stem in tests/fixtures/ultralytics/
    weights: str  # TrainJob name
    task: str
    imgsz: int
    dynamic: bool = False
    nms: bool | None = None  # None: raw head; True: NMS baked into the graph; False: NMS-free end-to-end head
    note: str = ""

    def export_args(self) -> dict[str, Any]:
        return {"format": "onnx", "imgsz": self.imgsz, "dynamic": self.dynamic, "nms": self.nms, "batch": 1,
                "simplify": True, "opset": None}  # fmt: skip


EXPORT_JOBS = [
    ExportJob(
        "detect", "detect", "detect", TRAIN_IMGSZ, note="YOLO11 detect, raw head [1, 4+nc, N], static 1x3x160x160"
    ),
    ExportJob(
        "detect_dynamic",
        "detect",
        "detect",
        TRAIN_IMGSZ,
        dynamic=True,
        note="same weights as detect.onnx, dynamic batch/height/width",
    ),
    ExportJob(
        "detect_nms",
        "detect",
        "detect",
        TRAIN_IMGSZ,
        nms=True,
        note="same weights as detect.onnx with NMS inside the graph (nms=True): [1, 300, 6]",
    ),
    ExportJob(
        "detect_e2e",
        "detect26",
        "detect",
        TRAIN_IMGSZ,
        nms=False,
        note="YOLO26 NMS-free one-to-one head (end2end, nms=False): [1, 300, 6]",
    ),
    ExportJob("segment", "segment", "segment", TRAIN_IMGSZ, note="YOLO11 segment: [1, 4+nc+32, N] + protos"),
    ExportJob("pose", "pose", "pose", TRAIN_IMGSZ, note="YOLO11 pose, 17 COCO keypoints: [1, 4+1+51, N]"),
    ExportJob("obb", "obb", "obb", TRAIN_IMGSZ, note="YOLO11 OBB: [1, 4+nc+1, N]"),
    ExportJob("classify", "classify", "classify", TRAIN_IMGSZ, note="YOLO11 classify: softmax [1, nc]"),
    ExportJob("detect_640", "detect", "detect", BENCH_IMGSZ, note="detect weights exported at 640 (benchmarks)"),
]


def export_one(work: Path, job: ExportJob) -> Path:
    """Export one ONNX file from trained weights into the fixtures folder."""
    from ultralytics import YOLO

    weights = work / "weights" / f"{job.weights}.pt"
    staging = work / "export" / job.name
    staging.mkdir(parents=True, exist_ok=True)
    source = staging / f"{job.weights}.pt"
    shutil.copyfile(weights, source)  # export writes beside the weights: keep each job's file apart
    args = {k: v for k, v in job.export_args().items() if k != "opset"}
    exported = Path(YOLO(str(source)).export(**args))
    target = FIXTURES / f"{job.name}.onnx"
    FIXTURES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, target)
    return target


def export_all(work: Path, only: list[str] | None) -> list[Path]:
    return [export_one(work, job) for job in EXPORT_JOBS if not only or job.name in only]


# --------------------------------------------------------------------------------------------------
# Reference images: varied sizes and aspect ratios, mostly PNG, a few JPEG.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceImage:
    kind: str  # shapes | pose | obb | classify
    width: int
    height: int
    count: int  # objects wanted (fewer when they do not fit)
    suffix: str = "png"
    tag: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.kind}_{self.width}x{self.height}{self.tag}.{self.suffix}"


REFERENCE_IMAGES = [
    ReferenceImage("shapes", 50, 40, 1),
    ReferenceImage("shapes", 64, 64, 2),
    ReferenceImage("shapes", 161, 97, 3),
    ReferenceImage("shapes", 256, 256, 6),
    ReferenceImage("shapes", 301, 299, 7),
    ReferenceImage("shapes", 333, 517, 8),
    ReferenceImage("shapes", 517, 333, 8),
    ReferenceImage("shapes", 900, 200, 6),
    ReferenceImage("shapes", 180, 700, 6),
    ReferenceImage("shapes", 640, 480, 9, tag="_a"),
    ReferenceImage("shapes", 640, 480, 10, tag="_b"),
    ReferenceImage("shapes", 640, 480, 8, suffix="jpg", tag="_c"),
    ReferenceImage("shapes", 480, 640, 9),
    ReferenceImage("shapes", 720, 405, 9),
    ReferenceImage("pose", 50, 40, 1),
    ReferenceImage("pose", 256, 256, 3),
    ReferenceImage("pose", 333, 517, 4),
    ReferenceImage("pose", 517, 333, 5),
    ReferenceImage("pose", 400, 300, 5),
    ReferenceImage("pose", 900, 200, 6),
    ReferenceImage("pose", 180, 700, 2),
    ReferenceImage("pose", 640, 480, 6, tag="_a"),
    ReferenceImage("pose", 640, 480, 7, suffix="jpg", tag="_b"),
    ReferenceImage("pose", 480, 640, 5),
    ReferenceImage("pose", 720, 405, 7),
    ReferenceImage("obb", 64, 64, 1),
    ReferenceImage("obb", 300, 300, 5),
    ReferenceImage("obb", 333, 517, 6),
    ReferenceImage("obb", 900, 200, 5),
    ReferenceImage("obb", 180, 700, 5),
    ReferenceImage("obb", 640, 480, 7, tag="_a"),
    ReferenceImage("obb", 640, 480, 8, tag="_b"),
    ReferenceImage("classify", 96, 96, 1),
    ReferenceImage("classify", 300, 200, 1),
    ReferenceImage("classify", 224, 160, 1, suffix="jpg"),
    # appended last: each image's seed is its index, so the ones above stay as they are
    ReferenceImage("pose", 640, 320, 8),
    ReferenceImage("pose", 700, 350, 8),
    ReferenceImage("pose", 600, 300, 8),
]


def draw_reference(rng: np.random.Generator, ref: ReferenceImage) -> np.ndarray:
    h, w = ref.height, ref.width
    if ref.kind == "shapes":
        return shapes_scene(rng, h, w, ref.count, ref.count).image
    if ref.kind == "pose":
        return pose_scene(rng, h, w, ref.count, ref.count, figure_height=(0.35, 0.6)).image
    if ref.kind == "obb":
        return obb_scene(rng, h, w, ref.count, ref.count).image
    return classify_scene(rng, h, w, int(rng.integers(len(SHAPE_NAMES))))


def write_reference_images(folder: Path) -> list[Path]:
    """Draw every reference image from its own seed so adding one never changes the others."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ref in enumerate(REFERENCE_IMAGES):
        image = draw_reference(np.random.default_rng([SEED, 100 + index]), ref)
        path = folder / ref.file_name
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if ref.suffix == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
        if not cv2.imwrite(str(path), image, params):
            raise RuntimeError(f"could not write {path}")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# Ultralytics' own predictor on every ONNX file and every reference image.
# --------------------------------------------------------------------------------------------------

PREDICT_ARGS = {"conf": 0.25, "iou": 0.7, "max_det": 300, "device": "cpu"}
MASK_METHOD = (
    "masks = results.masks.data (input resolution, after Ultralytics' process_mask, retina_masks=False); "
    "original = ops.scale_masks(masks[None].float(), orig_hw)[0] > 0.5, as ultralytics/utils/plotting.py does; "
    "RLE = pycocotools.mask.encode(np.asfortranarray(original.astype(uint8))), counts decoded as UTF-8"
)


def rounded(values: Any, digits: int = 5) -> Any:
    """Plain JSON numbers; 1e-5 px is far below any tolerance a comparison would use."""
    array = np.asarray(values, dtype=np.float64)
    return np.round(array, digits).tolist()


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("utf-8")}


def masks_at_original_size(result: Any) -> np.ndarray:
    """Ultralytics' own upscaling of result masks to the original image (utils/plotting.py)."""
    from ultralytics.utils import ops

    data = result.masks.data
    return (ops.scale_masks(data[None].float(), result.orig_shape)[0] > 0.5).cpu().numpy()


def describe_result(task: str, result: Any, input_hw: list[int]) -> dict[str, Any]:
    """One image's answer in plain JSON, in original-image pixels."""
    entry: dict[str, Any] = {"orig_hw": list(result.orig_shape), "input_hw": input_hw}
    if task == "classify":
        probs = result.probs.data.cpu().numpy()
        entry.update(
            probs=rounded(probs, 7), top1=int(result.probs.top1), top1_conf=round(float(result.probs.top1conf), 7)
        )
        return entry
    if task == "obb":
        obb = result.obb
        entry.update(
            xywhr=rounded(obb.xywhr.cpu().numpy()),
            xyxyxyxy=rounded(obb.xyxyxyxy.cpu().numpy()),
            confidences=rounded(obb.conf.cpu().numpy(), 7),
            class_ids=[int(c) for c in obb.cls.cpu().numpy()],
        )
        return entry
    boxes = result.boxes
    entry.update(
        boxes_xyxy=rounded(boxes.xyxy.cpu().numpy()),
        confidences=rounded(boxes.conf.cpu().numpy(), 7),
        class_ids=[int(c) for c in boxes.cls.cpu().numpy()],
    )
    if task == "segment":
        masks = masks_at_original_size(result) if result.masks is not None else np.zeros((0, *result.orig_shape), bool)
        entry["masks_rle"] = [rle_of(m) for m in masks]
        entry["mask_areas"] = [int(m.sum()) for m in masks]
    if task == "pose":
        keypoints = result.keypoints.data.cpu().numpy() if result.keypoints is not None else np.zeros((0, 17, 3))
        entry["keypoints"] = rounded(keypoints)
    return entry


def onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def onnx_opset(path: Path) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def onnx_io(path: Path) -> dict[str, Any]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {
        "inputs": [{"name": i.name, "shape": i.shape, "type": i.type} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": o.shape, "type": o.type} for o in session.get_outputs()],
    }


def predict_model(job: ExportJob, images: list[Path]) -> dict[str, Any]:
    """Run YOLO(onnx).predict on each image; record the tensor shape each one was fed as."""
    import ast

    from ultralytics import YOLO

    path = FIXTURES / f"{job.name}.onnx"
    model = YOLO(str(path), task=job.task)
    input_hw: list[list[int]] = []
    model.add_callback("on_predict_start", lambda predictor: record_input_shapes(predictor, input_hw))
    answers: dict[str, Any] = {}
    for image in images:
        result = model.predict(str(image), imgsz=job.imgsz, verbose=False, **PREDICT_ARGS)[0]
        answers[image.name] = describe_result(job.task, result, input_hw[-1])
    metadata = onnx_metadata(path)
    return {
        "meta": {
            "model_file": path.name,
            "task": job.task,
            "note": job.note,
            "names": {int(k): v for k, v in ast.literal_eval(metadata["names"]).items()},
            "export_args": job.export_args(),
            "opset_in_file": onnx_opset(path),
            "predict_call": f"YOLO('{path.name}', task='{job.task}').predict(image_path, imgsz={job.imgsz}, "
            "conf=0.25, iou=0.7, max_det=300, device='cpu')",
            "predict_args": {"imgsz": job.imgsz, **PREDICT_ARGS, "retina_masks": False, "agnostic_nms": False},
            "coordinates": "original image pixels; xyxy clipped to [0, w] x [0, h] by Ultralytics; "
            "input_hw is the letterboxed tensor size the predictor fed the model",
            **({"mask_method": MASK_METHOD} if job.task == "segment" else {}),
            "metadata_props": {k: v for k, v in metadata.items() if k != "date"},
            "onnx_io": onnx_io(path),
            "versions": library_versions(),
            "counts": {},
        },
        "images": answers,
    }


def record_input_shapes(predictor: Any, sink: list[list[int]]) -> None:
    """Wrap the predictor's preprocess (once) so each call appends the (H, W) of the tensor it made."""
    if getattr(predictor, "_records_input_shapes", False):
        return
    original = predictor.preprocess

    def preprocess(im: Any) -> Any:
        tensor = original(im)
        sink.append([int(tensor.shape[2]), int(tensor.shape[3])])
        return tensor

    predictor.preprocess = preprocess
    predictor._records_input_shapes = True


def count_answers(task: str, answers: dict[str, Any]) -> dict[str, int]:
    if task == "classify":
        return {"images": len(answers)}
    key = "xywhr" if task == "obb" else "boxes_xyxy"
    counts = {"images": len(answers), "detections": sum(len(a[key]) for a in answers.values())}
    if task == "segment":
        counts["masks"] = sum(len(a["masks_rle"]) for a in answers.values())
    if task == "pose":
        counts["poses"] = sum(len(a["keypoints"]) for a in answers.values())
    counts["detections_by_scene"] = {}  # the scene kind is the image name's prefix: shapes_, pose_, obb_, ...
    for name, answer in answers.items():
        scene = name.split("_")[0]
        counts["detections_by_scene"][scene] = counts["detections_by_scene"].get(scene, 0) + len(answer[key])
    return counts


def library_versions() -> dict[str, str]:
    import cv2
    import onnx
    import onnxruntime
    import torch
    import torchvision
    import ultralytics

    versions = {
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    for package in ("onnxslim", "pycocotools"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # recorded as missing rather than failing the whole run
            versions[package] = "not installed"
    return versions


def predict_all(only: list[str] | None) -> dict[str, dict[str, int]]:
    images = sorted((FIXTURES / "images").iterdir())
    summary = {}
    for job in EXPORT_JOBS:
        if only and job.name not in only:
            continue
        started = time.time()
        document = predict_model(job, images)
        document["meta"]["counts"] = count_answers(job.task, document["images"])
        (FIXTURES / f"{job.name}.json").write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
        summary[job.name] = document["meta"]["counts"]
        print(f"{job.name}: {summary[job.name]} in {time.time() - started:.1f}s", flush=True)
    return summary


def write_versions() -> None:
    document = {**library_versions(), "command": COMMAND, "platform": platform.platform(),
                "train_imgsz": TRAIN_IMGSZ, "seed": SEED}  # fmt: skip
    (FIXTURES / "VERSIONS.json").write_text(json.dumps(document, indent=1) + "\n")


def write_fixture_readme(verification: list[str] | None = None) -> None:
    """README.md of the fixtures folder: what each file is, how it was made, what it holds, and (after the
    verify stage) how closely the numpy re-implementation of NOTES.md reproduces it."""
    versions = json.loads((FIXTURES / "VERSIONS.json").read_text())
    rows = []
    for job in EXPORT_JOBS:
        onnx_file, json_file = FIXTURES / f"{job.name}.onnx", FIXTURES / f"{job.name}.json"
        if not onnx_file.exists() or not json_file.exists():
            continue
        counts = json.loads(json_file.read_text())["meta"]["counts"]
        by_scene = counts.pop("detections_by_scene", {})
        held = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "images")
        held += f" (by scene: {', '.join(f'{k} {v}' for k, v in by_scene.items())})" if by_scene else ""
        export = ", ".join(f"{k}={v}" for k, v in job.export_args().items() if k in ("imgsz", "dynamic", "nms"))
        size = f"{onnx_file.stat().st_size / 1024:.0f} KiB"
        held = held or "probabilities for every image"
        rows.append(f"| `{job.name}.onnx` / `{job.name}.json` | {job.note} | {export} | {size} | {held} |")
    images = sorted((FIXTURES / "images").iterdir())
    image_bytes = sum(p.stat().st_size for p in images)
    text = f"""# Ultralytics conformance fixtures

Made by Ultralytics itself (version {versions["ultralytics"]}, torch {versions["torch"]}, onnxruntime
{versions["onnxruntime"]}) with

    {COMMAND}

(`tools/ultralytics_fixtures.py`; the full list of versions is in `VERSIONS.json`). Nothing here is written
by hand except `NOTES.md`, which explains, with file:line references into Ultralytics, how this version reads
ONNX metadata, pre-processes, suppresses and scales: read it before comparing against these answers.

## How they were made

1. Synthetic datasets in Ultralytics' own formats (seeded): filled circles / squares / triangles / hexagons on
   striped gradient backgrounds (detect and segment, polygon labels), stick figures with the 17 COCO joints and
   visibility (pose), rotated planks / ellipses / cards (OBB), one shape per image in a folder per class
   (classify).
2. Tiny models built from Ultralytics' yaml (`yolo11*.yaml`, and `yolo26.yaml` for the NMS-free head) with an
   extra scale `t: {TINY_SCALE}` (depth, width, max_channels); no pretrained weights; trained on CPU at
   imgsz {TRAIN_IMGSZ}.
3. `model.export(format="onnx", ...)` with the arguments in each JSON's `meta.export_args`.
4. `YOLO(file, task=...).predict(image, imgsz=<export imgsz>, conf=0.25, iou=0.7, max_det=300, device="cpu")`
   on every image in `images/` for every ONNX file; each answer is in `<model>.json`.

## Files

| files | model | export | ONNX size | answers on the {len(images)} images |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

`images/`: {len(images)} reference images ({image_bytes / 1024:.0f} KiB): shapes_*, pose_*, obb_*, classify_* scenes
from 50x40 (upscaled by the letterbox) to 900x200 and 180x700; the `.jpg` ones are JPEG (decoded by OpenCV in
Ultralytics). Every model is run on every image, so a model also answers on scenes of another task (usually
little or nothing).

## JSON layout

`meta`: model file, task, class `names`, `export_args`, `predict_call` / `predict_args`, the ONNX
`metadata_props` verbatim (less `date`), input/output names and shapes, library versions, `counts`.
`images`: per file name: `orig_hw` (original height, width), `input_hw` (the letterboxed tensor the
predictor fed the model; the full `imgsz` for static files, a stride-32 rectangle for `detect_dynamic`), and

- detect / segment / pose: `boxes_xyxy` (original pixels, as `results.boxes.xyxy`), `confidences`,
  `class_ids`, in Ultralytics' order (descending confidence);
- segment: `masks_rle` (COCO RLE, pycocotools, at the original image size) and `mask_areas`; method in
  `meta.mask_method`: `ops.scale_masks(results.masks.data[None].float(), orig_hw)[0] > 0.5`;
- pose: `keypoints` `[N][17][3]` (x, y, confidence) in original pixels (`results.keypoints.data`);
- obb: `xywhr` (`results.obb.xywhr`, angle in radians), `xyxyxyxy` `[N][4][2]`, `confidences`, `class_ids`;
- classify: `probs` (all classes), `top1`, `top1_conf`.

Coordinates are rounded to 1e-5 px and scores to 1e-7.

## Checked

{chr(10).join(f"- {line}" for line in verification) if verification else "Not yet: run the `verify` stage."}
"""
    (FIXTURES / "README.md").write_text(text)


# --------------------------------------------------------------------------------------------------
# verify: redo every answer with numpy + onnxruntime from NOTES.md alone (no Ultralytics code), so the notes
# are proven complete and precise; this is also a worked reference for a port.
# --------------------------------------------------------------------------------------------------


def np_letterbox(image: np.ndarray, size: tuple[int, int], auto: bool) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)  # Python round: half to even
    dw, dh = size[1] - new_w, size[0] - new_h
    if auto:
        dw, dh = dw % 32, dh % 32
    dw, dh = dw / 2, dh / 2
    top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))


def np_to_tensor(bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def np_greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    order, keep = np.argsort(-scores, kind="stable"), []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        lt = np.maximum(boxes[best, :2], boxes[rest, :2])
        rb = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou]
    return np.array(keep, dtype=int)


def np_probiou(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """batch_probiou of ultralytics/utils/metrics.py for xywhr boxes; (len(a), len(b))."""

    def covariance(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w2, h2, cos, sin = r[:, 2] ** 2 / 12, r[:, 3] ** 2 / 12, np.cos(r[:, 4]), np.sin(r[:, 4])
        return w2 * cos**2 + h2 * sin**2, w2 * sin**2 + h2 * cos**2, (w2 - h2) * cos * sin

    (a1, b1, c1), (a2, b2, c2) = covariance(a), covariance(b)
    a1, b1, c1, x1, y1 = (v[:, None] for v in (a1, b1, c1, a[:, 0], a[:, 1]))
    x2, y2 = b[None, :, 0], b[None, :, 1]
    denominator = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2
    t1 = ((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / (denominator + eps) * 0.25
    t2 = ((c1 + c2) * (x2 - x1) * (y1 - y2)) / (denominator + eps) * 0.5
    t3 = np.log(denominator / (4 * np.sqrt(np.clip(a1 * b1 - c1**2, 0, None) * np.clip(a2 * b2 - c2**2, 0, None)) + eps)
                + eps) * 0.5  # fmt: skip
    distance = np.clip(t1 + t2 + t3, eps, 100.0)
    return 1 - np.sqrt(1.0 - np.exp(-distance) + eps)


def np_fast_nms(rboxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Fast-NMS: a box goes if any higher-scored box, kept or not, overlaps it more than iou."""
    order = np.argsort(-scores, kind="stable")
    overlaps = np.triu(np_probiou(rboxes[order], rboxes[order]), k=1)
    return order[~(overlaps > iou).any(axis=0)]


def np_letterbox_geometry(
    input_hw: tuple[int, int], orig_hw: tuple[int, int]
) -> tuple[float, float, int, int, int, int]:
    """gain_x, gain_y, pad_x, pad_y, new_w, new_h exactly as ops.scale_boxes recomputes them."""
    (big_h, big_w), (h, w) = input_hw, orig_hw
    gain = min(big_h / h, big_w / w)
    new_h, new_w = max(round(h * gain), 1), max(round(w * gain), 1)
    return new_w / w, new_h / h, round((big_w - new_w) / 2 - 0.1), round((big_h - new_h) / 2 - 0.1), new_w, new_h


def np_scale_xy(xy: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int], clip: bool) -> np.ndarray:
    gain_x, gain_y, pad_x, pad_y, _, _ = np_letterbox_geometry(input_hw, orig_hw)
    out = xy.astype(np.float64).copy()
    out[..., 0::2] = (out[..., 0::2] - pad_x) / gain_x
    out[..., 1::2] = (out[..., 1::2] - pad_y) / gain_y
    if clip:
        out[..., 0::2] = out[..., 0::2].clip(0, orig_hw[1])
        out[..., 1::2] = out[..., 1::2].clip(0, orig_hw[0])
    return out


def np_masks(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, input_hw: tuple[int, int],
             orig_hw: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """process_mask(upsample=True) then scale_masks to the original size and > 0.5; (n, h, w) bool."""
    import cv2

    c, mh, mw = protos.shape
    logits = (coefficients @ protos.reshape(c, -1)).reshape(-1, mh, mw)
    rows, cols = np.arange(input_hw[0])[:, None], np.arange(input_hw[1])[None, :]
    _, _, pad_x, pad_y, new_w, new_h = np_letterbox_geometry(input_hw, orig_hw)
    out = []
    for logit, (x1, y1, x2, y2) in zip(logits, boxes, strict=True):
        up = cv2.resize(logit, (input_hw[1], input_hw[0]), interpolation=cv2.INTER_LINEAR) > 0
        up &= (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
        content = up[pad_y : pad_y + new_h, pad_x : pad_x + new_w].astype(np.float32)
        out.append((cv2.resize(content, (orig_hw[1], orig_hw[0]), interpolation=cv2.INTER_LINEAR) > 0.5, up.any()))
    return out


def np_classify_input(bgr: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = bgr.shape[:2]
    short, long = min(h, w), max(h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = np.asarray(Image.fromarray(bgr).resize((new_w, new_h), Image.BILINEAR))
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return np_to_tensor(resized[top : top + size, left : left + size])


def np_answer(job: ExportJob, session: Any, image: np.ndarray, names: int, conf: float = 0.25) -> dict[str, Any]:
    """One image's answer from NOTES.md: the same fields as the JSON (masks as bool arrays)."""
    if job.task == "classify":
        probs = session.run(None, {"images": np_classify_input(image, job.imgsz)})[0][0]
        return {"probs": probs, "input_hw": [job.imgsz, job.imgsz]}
    tensor = np_to_tensor(np_letterbox(image, (job.imgsz, job.imgsz), auto=job.dynamic))
    input_hw, orig_hw = tuple(tensor.shape[2:]), image.shape[:2]
    outputs = session.run(None, {"images": tensor})
    rows = outputs[0][0]
    if job.nms is None:  # raw head: (4 + nc + extra, N)
        rows = rows.T
        scores = rows[:, 4 : 4 + names]
        best, cls = scores.max(1), scores.argmax(1)
        rows = np.concatenate([rows[:, :4], best[:, None], cls[:, None], rows[:, 4 + names :]], 1)[best > conf]
        if job.task == "obb":
            offset = np.concatenate([rows[:, 5:6] * 7680.0] * 2 + [np.zeros((len(rows), 3))], 1)
            keep = np_fast_nms(np.concatenate([rows[:, :4], rows[:, -1:]], 1) + offset, rows[:, 4], 0.7)
        else:
            rows[:, :4] = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], 1)
            keep = np_greedy_nms(rows[:, :4] + rows[:, 5:6] * 7680.0, rows[:, 4], 0.7)
        rows = rows[keep[:300]]
    else:  # end-to-end or NMS in the graph: (300, 6 + extra), already suppressed
        rows = rows[rows[:, 4] > conf][:300]
    answer: dict[str, Any] = {"input_hw": list(input_hw), "confidences": rows[:, 4], "class_ids": rows[:, 5]}
    if job.task == "obb":
        xywhr = rows[:, [0, 1, 2, 3, -1]].astype(np.float64)
        scaled = np_scale_xy(xywhr[:, :4], input_hw, orig_hw, clip=False)
        gain_x, gain_y, _pad_x, _pad_y, _, _ = np_letterbox_geometry(input_hw, orig_hw)
        scaled[:, 2], scaled[:, 3] = (xywhr[:, 2]) / gain_x, (xywhr[:, 3]) / gain_y  # sizes: no pad to remove
        answer["xywhr"] = np.concatenate([scaled, xywhr[:, 4:]], 1)
        return answer
    if job.task == "segment":
        masks = np_masks(outputs[1][0], rows[:, 6:], rows[:, :4], input_hw, orig_hw)
        nonempty = np.array([any_pixel for _, any_pixel in masks], dtype=bool)
        rows = rows[nonempty] if len(rows) else rows
        answer.update(confidences=rows[:, 4], class_ids=rows[:, 5], masks=[m for m, ok in masks if ok])
    answer["boxes_xyxy"] = np_scale_xy(rows[:, :4], input_hw, orig_hw, clip=True)
    if job.task == "pose":
        keypoints = rows[:, 6:].reshape(len(rows), (rows.shape[1] - 6) // 3, 3).astype(np.float64)
        keypoints[..., :2] = np_scale_xy(keypoints[..., :2], input_hw, orig_hw, clip=True)
        answer["keypoints"] = keypoints
    return answer


def compare_answer(task: str, mine: dict[str, Any], theirs: dict[str, Any]) -> tuple[bool, float, int]:
    """(same detections and classes, largest coordinate/score difference, differing mask pixels)."""
    from pycocotools import mask as mask_utils

    if mine["input_hw"] != theirs["input_hw"]:
        return False, float("inf"), 0
    if task == "classify":
        return True, float(np.abs(mine["probs"] - np.array(theirs["probs"])).max()), 0
    if [int(c) for c in mine["class_ids"]] != theirs["class_ids"]:
        return False, float("inf"), 0
    worst = float(np.abs(mine["confidences"] - np.array(theirs["confidences"])).max(initial=0))
    for key in ("boxes_xyxy", "xywhr", "keypoints"):
        if key in theirs and len(theirs[key]):
            worst = max(worst, float(np.abs(np.asarray(mine[key]) - np.array(theirs[key])).max()))
    pixels = 0
    for mask, rle in zip(mine.get("masks", []), theirs.get("masks_rle", []), strict=True):
        pixels += int(
            (mask != mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)).sum()
        )
    return True, worst, pixels


def verify_all(only: list[str] | None) -> tuple[bool, list[str]]:
    import cv2
    import onnxruntime

    ok, lines = True, []
    for job in EXPORT_JOBS:
        if only and job.name not in only:
            continue
        document = json.loads((FIXTURES / f"{job.name}.json").read_text())
        session = onnxruntime.InferenceSession(str(FIXTURES / f"{job.name}.onnx"), providers=["CPUExecutionProvider"])
        names = len(document["meta"]["names"])
        mismatched, worst, pixels = [], 0.0, 0
        for file_name, theirs in document["images"].items():
            image = cv2.imread(str(FIXTURES / "images" / file_name), cv2.IMREAD_COLOR)
            same, difference, differing = compare_answer(job.task, np_answer(job, session, image, names), theirs)
            if not same:
                mismatched.append(file_name)
            else:
                worst, pixels = max(worst, difference), pixels + differing
        ok &= not mismatched and worst < 1e-3
        total = len(document["images"])
        line = (
            f"`{job.name}`: {total - len(mismatched)}/{total} images give the same detections, classes and order; "
            f"largest coordinate/score difference {worst:.1e}"
            + (f"; differing mask pixels {pixels}" if job.task == "segment" else "")
            + (f"; MISMATCH {mismatched}" if mismatched else "")
        )
        print(line, flush=True)
        lines.append(line)
    return ok, lines


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["data", "train", "export", "images", "predict", "verify", "all"])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch dir for data, runs, weights")
    parser.add_argument("--only", nargs="*", help="train/export only these model names")
    parser.add_argument("--epochs", type=int, help="override every job's epochs (quick trials)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    prepare_offline_ultralytics(args.work)
    if args.stage in ("data", "all"):
        print(make_datasets(args.work))
    if args.stage in ("train", "all"):
        print(train_all(args.work, args.only, args.epochs))
    if args.stage in ("export", "all"):
        print(export_all(args.work, args.only))
    if args.stage in ("images", "all"):
        print(f"{len(write_reference_images(FIXTURES / 'images'))} reference images")
    if args.stage in ("predict", "all"):
        predict_all(args.only)
        write_versions()
        write_fixture_readme()
    if args.stage in ("verify", "all"):
        ok, lines = verify_all(args.only)
        write_fixture_readme(lines)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
