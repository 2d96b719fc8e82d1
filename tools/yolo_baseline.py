"""YOLO11n baseline for the bundled dense model cards: Ultralytics' YOLO11n built from its yaml, trained on the
same generated scenes for the same wall-clock budget, evaluated on the same fresh scenes by the same code as the
Stride model; the card shows both (models/NAME/baseline.json, read by training.cards).

Each stage runs in the virtual environment it needs; the service never imports torch or Ultralytics, and
Ultralytics is never a project dependency:

    prepare   either venv (numpy, PIL, pycocotools): a COCO scenes folder -> an Ultralytics dataset
    train     the Ultralytics venv (/work/venvs/ultra): YOLO11n from yaml on CPU, time budget -> ONNX file
    evaluate  the project venv (.venv): that ONNX file through the dense plug-in's held-out evaluation
              (the service's own preprocessing and its Ultralytics decoder, pycocotools) -> baseline.json
    all       every stage, each in its venv, printing each command first:

    python tools/yolo_baseline.py all --task segment --model-name instance_seg --count 10000 --seed 0 --minutes 36

Training data: `python -m training data scenes --count N+VAL --seed S`. Scenes are generated image by image
(`numpy.random.default_rng([seed, index])`), so the first N are exactly the N scenes the Stride model trained
on; the VAL after them are Ultralytics' validation set (best.pt selection, held back from both models), never
the evaluation seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script: `tools.*`, `training.*` and `service.*` from the repo
    sys.path.insert(0, str(REPO_ROOT))

SCRIPT = "tools/yolo_baseline.py"
ULTRA_PYTHON = Path(os.environ.get("STRIDE_ULTRA_PYTHON", "/work/venvs/ultra/bin/python"))
PROJECT_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "stride-yolo-baseline"
BASELINE_FILE = "baseline.json"  # training.cards.BASELINE_FILE (not imported: `prepare`/`train` lack the project)

IMGSZ = 128  # the bundled Stride dense models' input (128 x 128 letterbox)
VAL_SCENES = 200  # scenes after the N training ones, Ultralytics' validation set
# training.tasks.dense's constants, repeated because `prepare` and `train` run without the project's packages
# (tests/tools/test_yolo_baseline.py checks they agree).
EVAL_SEED = 20261204  # held-out scenes of every dense card: never trained or validated on
OKS_SIGMA = 0.05  # the per-joint OKS sigma the dense evaluation scores keypoints with


@dataclass(frozen=True)
class Task:
    yolo: str  # Ultralytics' task name
    yaml: str  # the model yaml YOLO builds from (scale n: YOLO11n)
    stride_task: str  # the training task whose plug-in evaluates
    model_name: str  # the bundled Stride model the baseline stands beside (models/NAME/)


TASKS = {
    "detect": Task("detect", "yolo11n.yaml", "detection", "detector"),
    "segment": Task("segment", "yolo11n-seg.yaml", "instance_segmentation", "instance_seg"),
    "pose": Task("pose", "yolo11n-pose.yaml", "keypoints", "keypoints"),
}


# --------------------------------------------------------------------------------------------------
# prepare: COCO scenes -> Ultralytics dataset (numpy, PIL, pycocotools and the standard library only).
# --------------------------------------------------------------------------------------------------

# Directions of boundary edges in image coordinates (x right, y down): east, south, west, north. A right turn
# is the next one.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def mask_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Every boundary of a binary mask as a closed loop of pixel-corner vertices [K, 2] (x, y), first vertex not
    repeated, only the corners kept. Pixel (row r, column c) is the square [c, c+1] x [r, r+1] (COCO's
    convention), so a loop runs exactly along the cracks between mask and background pixels.

    Outer boundaries turn clockwise on screen (positive shoelace area with y down) and holes the other way; at a
    vertex where two mask pixels touch only diagonally the trace turns towards the pixel it came along, so
    every loop is simple and the mask's 4-connected parts get loops of their own. The even-odd fill of all the
    loops is the mask, pixel for pixel."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    inner = padded[1:-1, 1:-1]
    outgoing: dict[tuple[int, int], list[int]] = {}
    edges: list[tuple[int, int, int]] = []
    # (neighbour that must be background, start vertex offset from the pixel's top-left corner, direction)
    sides = ((padded[:-2, 1:-1], (0, 0), 0), (padded[1:-1, 2:], (1, 0), 1),
             (padded[2:, 1:-1], (1, 1), 2), (padded[1:-1, :-2], (0, 1), 3))  # fmt: skip
    for neighbour, (ox, oy), direction in sides:
        rows, cols = np.nonzero(inner & ~neighbour)
        for x, y in zip((cols + ox).tolist(), (rows + oy).tolist(), strict=True):
            outgoing.setdefault((x, y), []).append(direction)
            edges.append((x, y, direction))
    unused = set(edges)
    loops: list[np.ndarray] = []
    for start in sorted(edges):  # deterministic order: top-left first
        if start not in unused:
            continue
        x, y, direction = start
        corners: list[tuple[int, int]] = []
        arrived = None  # the direction the trace came in along
        while True:
            unused.discard((x, y, direction))
            if direction != arrived:
                corners.append((x, y))
            nx, ny = x + _STEPS[direction][0], y + _STEPS[direction][1]
            choices = outgoing[(nx, ny)]
            following = choices[0] if len(choices) == 1 else (direction + 1) % 4  # saddle: turn right
            arrived = direction
            x, y, direction = nx, ny, following
            if (x, y, direction) == start:
                break
        if corners and arrived == start[2]:  # the start vertex is not a corner after all
            corners.pop(0)
        loops.append(np.array(corners, dtype=np.int64))
    return loops


def loop_area(loop: np.ndarray) -> float:
    """Shoelace area; positive for outer boundaries from mask_loops, negative for holes."""
    x, y = loop[:, 0].astype(np.float64), loop[:, 1].astype(np.float64)
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2.0


def merge_loops(loops: list[np.ndarray]) -> np.ndarray:
    """One polygon from several loops, as Ultralytics' COCO converter joins multi-part objects
    (`merge_multi_segment`): each further loop is spliced in at its vertex nearest the polygon so far, by a
    zero-width bridge walked there and back. The even-odd fill is unchanged: the bridge's two edges cancel."""
    remaining = sorted(loops, key=lambda loop: -abs(loop_area(loop)))
    polygon = remaining.pop(0)
    while remaining:
        best = None
        for k, loop in enumerate(remaining):
            distance = ((polygon[:, None, :] - loop[None, :, :]) ** 2).sum(-1)
            i, j = np.unravel_index(int(distance.argmin()), distance.shape)
            if best is None or distance[i, j] < best[0]:
                best = (distance[i, j], k, int(i), int(j))
        assert best is not None
        _, k, i, j = best
        loop = remaining.pop(k)
        polygon = np.concatenate([polygon[: i + 1], loop[j:], loop[: j + 1], polygon[i:]])
    return polygon


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """The mask as one Ultralytics polygon [K, 2] in pixel-corner coordinates (every part and hole kept)."""
    loops = mask_loops(mask)
    if not loops:
        return np.zeros((0, 2), dtype=np.int64)
    polygon = merge_loops(loops)
    repeated = (polygon == np.roll(polygon, 1, axis=0)).all(axis=1)  # zero-length bridges at touching corners
    return polygon[~repeated]


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """[H, W] bool of a COCO annotation's segmentation (RLE, compressed or not, or polygons)."""
    from pycocotools import mask as mask_utils

    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def number(value: float) -> str:
    return f"{value:.6g}"


def clipped_box(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """COCO [x, y, w, h] -> normalised (cx, cy, w, h) inside the image; None for an empty box."""
    x0, y0 = max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
    x1, y1 = min(float(width), float(bbox[0]) + float(bbox[2])), min(float(height), float(bbox[1]) + float(bbox[3]))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height


def detect_line(cls: int, annotation: dict, width: int, height: int) -> str | None:
    box = clipped_box(annotation["bbox"], width, height)
    return None if box is None else " ".join([str(cls), *map(number, box)])


def segment_line(cls: int, annotation: dict, width: int, height: int) -> str | None:
    if isinstance(annotation["segmentation"], list) and len(annotation["segmentation"]) == 1:
        polygon = np.asarray(annotation["segmentation"][0], dtype=np.float64).reshape(-1, 2)  # a COCO polygon
    else:
        polygon = mask_polygon(annotation_mask(annotation, height, width)).astype(np.float64)
    if len(polygon) < 3:
        return None
    xy = np.clip(polygon / np.array([width, height], dtype=np.float64), 0.0, 1.0)
    return " ".join([str(cls), *map(number, xy.reshape(-1))])


def pose_line(cls: int, annotation: dict, width: int, height: int, joints: int) -> str | None:
    """Box, then (x, y, visibility) per joint; COCO visibility kept (2 visible, 1 hidden, 0 unlabelled: 0 0 0)."""
    box = clipped_box(annotation["bbox"], width, height)
    if box is None:
        return None
    values = np.asarray(annotation.get("keypoints") or [0.0] * 3 * joints, dtype=np.float64).reshape(joints, 3)
    parts = [str(cls), *map(number, box)]
    for x, y, visibility in values:
        if visibility <= 0:
            parts += ["0", "0", "0"]
        else:
            x, y = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
            parts += [number(x), number(y), str(int(visibility))]
    return " ".join(parts)


def flip_index(names: Sequence[str]) -> list[int]:
    """Ultralytics' flip_idx: the joint each joint becomes in a mirrored image (left_X <-> right_X)."""
    index = list(range(len(names)))
    for i, name in enumerate(names):
        for this, other in (("left_", "right_"), ("right_", "left_")):
            if name.startswith(this) and other + name[len(this) :] in names:
                index[i] = list(names).index(other + name[len(this) :])
    return index


def task_categories(categories: list[dict], task: str) -> list[dict]:
    """The categories a model of `task` learns, class index = position: every one, sorted by id; pose: the
    first with keypoints (training.tasks.dense.task_categories' rule)."""
    ordered = sorted(categories, key=lambda c: c["id"])
    if task != "pose":
        return ordered
    with_joints = [c for c in ordered if c.get("keypoints")]
    if not with_joints:
        raise ValueError("pose needs a COCO category with a 'keypoints' list")
    return with_joints[:1]


def label_lines(task: str, annotations: list[dict], class_of: dict[int, int], width: int, height: int,
                joints: int) -> list[str]:  # fmt: skip
    lines = []
    for annotation in annotations:
        if annotation["category_id"] not in class_of or annotation.get("iscrowd", 0):
            continue  # other categories; crowds have no Ultralytics equivalent
        cls = class_of[annotation["category_id"]]
        if task == "detect":
            line = detect_line(cls, annotation, width, height)
        elif task == "segment":
            line = segment_line(cls, annotation, width, height)
        else:
            line = pose_line(cls, annotation, width, height, joints)
        if line is not None:
            lines.append(line)
    return lines


def data_yaml(root: Path, names: list[str], extra: dict[str, Any]) -> str:
    """Ultralytics' dataset yaml; values as JSON (a subset of YAML), kpt_names with an integer class key."""
    lines = [f"path: {json.dumps(str(root))}", "train: images/train", "val: images/val", "names:"]
    lines += [f"  {i}: {json.dumps(name)}" for i, name in enumerate(names)]
    for key, value in extra.items():
        if key == "kpt_names":
            lines += ["kpt_names:", *(f"  {k}: {json.dumps(v)}" for k, v in value.items())]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def place_image(source: Path, target: Path) -> None:
    """Hard link when the file system allows (no copy of 10,000 images), else copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


POLYGON_METHOD = ("segment labels: each object's visible mask (its RLE) traced along the pixel cracks "
                  "(tools/yolo_baseline.py mask_loops, pure numpy), every part and hole spliced into one polygon by "
                  "zero-width bridges as Ultralytics' own COCO converter joins multi-part objects; the polygon's "
                  "even-odd fill is the mask exactly")  # fmt: skip


def prepare_dataset(coco_dir: Path, task: str, out: Path, val: int = VAL_SCENES) -> Path:
    """Write out/images/{train,val}, out/labels/{train,val}, out/data.yaml and out/prepare.json; the last `val`
    images (in id order) are the validation set. Returns data.yaml."""
    coco_dir, out = Path(coco_dir).resolve(), Path(out).resolve()
    if task not in TASKS:
        raise ValueError(f"task {task!r}: one of {sorted(TASKS)}")
    if out == coco_dir or (out / "instances.json").exists():
        raise ValueError(f"{out} holds a COCO dataset: write the Ultralytics dataset to another folder")
    coco = json.loads((coco_dir / "instances.json").read_text())
    info = coco.get("info", {})
    if info.get("seed") == EVAL_SEED:
        raise ValueError(f"{coco_dir} was generated with seed {EVAL_SEED}, the dense cards' held-out seed: "
                         "never train or validate on it")
    images = sorted(coco["images"], key=lambda r: r["id"])
    if not 0 < val < len(images):
        raise ValueError(f"--val {val}: {len(images)} images leave none to train on (or none to validate)")
    categories = task_categories(coco["categories"], task)
    class_of = {c["id"]: i for i, c in enumerate(categories)}
    joint_names = list(categories[0].get("keypoints", [])) if task == "pose" else []
    by_image: dict[int, list[dict]] = {}
    for annotation in sorted(coco["annotations"], key=lambda a: a["id"]):
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for folder in ("images", "labels"):
        shutil.rmtree(out / folder, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    seen: set[str] = set()
    for split, records in (("train", images[: len(images) - val]), ("val", images[len(images) - val :])):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        objects = 0
        for record in records:
            name = Path(record["file_name"]).name
            if name in seen:
                raise ValueError(f"two images are named {name}; Ultralytics needs unique file names")
            seen.add(name)
            lines = label_lines(task, by_image.get(record["id"], []), class_of, record["width"], record["height"],
                                len(joint_names))
            place_image(coco_dir / record["file_name"], out / "images" / split / name)
            (out / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
            objects += len(lines)
        counts[split] = {"images": len(records), "objects": objects}
    extra: dict[str, Any] = {}
    if task == "pose":
        extra = {"kpt_shape": [len(joint_names), 3], "flip_idx": flip_index(joint_names),
                 "kpt_names": {0: joint_names}, "kpt_oks_sigmas": [OKS_SIGMA] * len(joint_names)}
    names = [c["name"] for c in categories]
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.yaml").write_text(data_yaml(out, names, extra))
    record = {"task": task, "coco": str(coco_dir), "coco_info": info, "names": names, "val": val,
              "train_images": counts["train"]["images"], "counts": counts,
              "first_image": images[0]["file_name"], "last_train_image": images[len(images) - val - 1]["file_name"]}
    if task == "segment":
        record["polygons"] = POLYGON_METHOD
    (out / "prepare.json").write_text(json.dumps(record, indent=1) + "\n")
    return out / "data.yaml"


# --------------------------------------------------------------------------------------------------
# train: YOLO11n from yaml, CPU, Ultralytics' own `time` budget, then ONNX (the Ultralytics venv only).
# --------------------------------------------------------------------------------------------------


def describe_machine(threads: int) -> str:
    """E.g. "AMD EPYC 7B13, 2 cores, 1 torch thread"."""
    from training.machine import cpu_name  # standard library only: importable from the Ultralytics venv

    return f"{cpu_name()}, {os.cpu_count()} cores, {threads} torch thread{'s' if threads != 1 else ''}"


def train_record_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".train.json")


def train_and_export(data: Path, task: str, out: Path, *, minutes: float | None, epochs: int | None,
                     imgsz: int = IMGSZ, threads: int = 1, batch: int = 16, work: Path | None = None,
                     seed: int = 0) -> Path:  # fmt: skip
    """Train YOLO11n (task's yaml, random weights) on `data` for `minutes` of wall clock (Ultralytics'
    `time`, hours) or `epochs`, export best.pt to ONNX at `out`, and write the run's record beside it."""
    if (minutes is None) == (epochs is None):
        raise ValueError("give exactly one of --minutes (the wall-clock budget) and --epochs")
    data, out = Path(data).resolve(), Path(out).resolve()
    work = Path(work or out.parent / "ultralytics").resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before torch is imported
    from tools.ultralytics_fixtures import prepare_offline_ultralytics

    prepare_offline_ultralytics(work)  # offline, private settings, local fonts: nothing is downloaded
    import torch
    import ultralytics
    from ultralytics import YOLO
    from ultralytics.utils import torch_utils

    torch.set_num_threads(threads)
    torch_utils.NUM_THREADS = threads  # select_device() resets torch's threads to this on every CPU run

    def keep_threads(_trainer: Any) -> None:
        torch.set_num_threads(threads)

    spec = TASKS[task]
    shutil.rmtree(work / "runs" / task, ignore_errors=True)  # Ultralytics appends to an old run's results.csv
    model = YOLO(spec.yaml, task=spec.yolo)  # built from the yaml: random weights
    model.add_callback("on_pretrain_routine_end", keep_threads)
    model.add_callback("on_train_start", keep_threads)
    budget = {"time": minutes / 60.0} if minutes is not None else {"epochs": epochs}
    started = time.time()
    model.train(data=str(data), imgsz=imgsz, device="cpu", workers=0, batch=batch, pretrained=False, amp=False,
                plots=False, seed=seed, deterministic=True, project=str(work / "runs"), name=task, exist_ok=True,
                verbose=False, **budget)  # fmt: skip
    seconds = time.time() - started
    trainer = model.trainer
    weights_dir = Path(trainer.save_dir) / "weights"
    weights = weights_dir / "best.pt" if (weights_dir / "best.pt").exists() else weights_dir / "last.pt"
    results = Path(trainer.save_dir) / "results.csv"
    epochs_run = max(0, len(results.read_text().splitlines()) - 1) if results.exists() else None
    trained = YOLO(str(weights))
    parameters = int(sum(p.numel() for p in trained.model.parameters()))
    export_args = {"format": "onnx", "imgsz": imgsz, "dynamic": False, "batch": 1, "simplify": True,
                   "device": "cpu"}  # tools/ultralytics_fixtures.py's export, Ultralytics' default opset
    exported = Path(trained.export(**export_args))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, out)
    prepared = data.parent / "prepare.json"
    record = {
        "name": "YOLO11n", "yaml": spec.yaml, "task": task, "imgsz": imgsz, "minutes": minutes, "epochs": epochs,
        "epochs_run": epochs_run, "train_seconds": round(seconds, 1), "threads": threads, "batch": batch,
        "seed": seed, "parameters": parameters, "weights": weights.name, "export_args": export_args,
        "machine": describe_machine(threads), "data": str(data),
        "dataset": json.loads(prepared.read_text()) if prepared.exists() else None,
        "versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }  # fmt: skip
    train_record_path(out).write_text(json.dumps(record, indent=1) + "\n")
    return out


# --------------------------------------------------------------------------------------------------
# evaluate: the ONNX file through the dense plug-in's evaluation (the project venv).
# --------------------------------------------------------------------------------------------------


def served_ultralytics(path: Path) -> Any:
    """The file as the service understands it (service.families.recognise), its labels checked against the
    scene categories (by name, case-insensitive; a model trained by `prepare`'s dataset has them verbatim)."""
    from service.config import Settings
    from service.families import recognise
    from service.runtime import open_session
    from training.data import scenes

    served = recognise(Path(path), open_session(Path(path), Settings(providers=["CPUExecutionProvider"])))
    if served.family != "ultralytics":
        raise ValueError(f"{path} is served as a {served.family} model, not an Ultralytics export")
    by_lower = {c["name"].lower(): c["name"] for c in scenes.CATEGORIES}
    unknown = [label for label in served.metadata.labels if label.lower() not in by_lower]
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not scene categories {sorted(by_lower.values())}")
    labels = [by_lower[label.lower()] for label in served.metadata.labels]
    if labels != served.metadata.labels:
        served.metadata = served.metadata.model_copy(update={"labels": labels})
    return served


def evaluate_onnx(path: Path, task: str, count: int | None = None, seed: int | None = None) -> tuple[Any, Any]:
    """(the plug-in's Evaluation, the served model) of an Ultralytics ONNX file on the held-out scenes (the
    plug-in's defaults unless given)."""
    from training.tasks import get_task
    from training.tasks.base import EvalRequest

    served = served_ultralytics(path)  # the service's reading of the file: the plug-in decodes it the same way
    evaluation = get_task(TASKS[task].stride_task).evaluate(Path(path), served.metadata,
                                                            EvalRequest(seed=seed, count=count))
    return evaluation, served


def reproduce_command(task: str, model_name: str, record: dict[str, Any]) -> str:
    """The `all` command line that rebuilds this baseline, from the train record (and the dataset's)."""
    dataset = record.get("dataset") or {}
    info = dataset.get("coco_info", {})
    args = [SCRIPT, "all", "--task", task, "--model-name", model_name,
            "--count", str(dataset.get("train_images", "?")), "--seed", str(info.get("seed", "?")),
            "--val", str(dataset.get("val", VAL_SCENES))]  # fmt: skip
    args += ["--minutes", f"{record['minutes']:g}"] if record.get("minutes") is not None else \
        ["--epochs", str(record.get("epochs"))]  # fmt: skip
    args += ["--threads", str(record.get("threads", 1))]
    if record.get("imgsz", IMGSZ) != IMGSZ:
        args += ["--imgsz", str(record["imgsz"])]
    if record.get("batch", 16) != 16:
        args += ["--batch", str(record["batch"])]
    return "python " + shlex.join(args)


def baseline_document(evaluation: Any, served: Any, task: str, model_name: str, record: dict[str, Any],
                      onnx_path: Path) -> dict[str, Any]:  # fmt: skip
    """models/NAME/baseline.json: what training.cards.read_baseline and metric_rows read, and the facts behind it."""
    dataset = record.get("dataset") or {}
    info = dataset.get("coco_info", {})
    detection = served.metadata.detection
    if record.get("minutes") is not None:
        budget = f"the same {record['minutes']:g}-minute wall-clock budget"
        if record.get("epochs_run") is not None:
            budget += f" ({record['epochs_run']} epochs)"
    else:
        budget = f"{record.get('epochs')} epoch(s) (not a time budget)"
    version = record.get("versions", {}).get("ultralytics", "?")
    scenes = dataset.get("train_images")
    scenes_text = f"{scenes:,}" if isinstance(scenes, int) else "?"
    description = (
        f"from `{record.get('yaml', TASKS[task].yaml)}` (Ultralytics {version}), no pretrained weights, trained on "
        f"the same {scenes_text} scenes (seed {info.get('seed', '?')}; the {dataset.get('val', '?')} generated after "
        f"them were Ultralytics' validation set) for {budget} on this machine's CPU ({record.get('machine', '?')}), "
        f"imgsz {record.get('imgsz', IMGSZ)}; its ONNX export decoded by the service's Ultralytics family with "
        f"that file's request defaults (score > {detection.confidence}, NMS IoU {detection.iou}, at most "
        f"{detection.max_detections})"
    )  # fmt: skip
    return {
        "name": "YOLO11n",
        "parameters": int(record.get("parameters", 0)),
        "description": description,
        "command": reproduce_command(task, model_name, record),
        "metrics": dict(evaluation.metrics),
        "evaluation": evaluation.description,
        "per_class": evaluation.details.get("per_class", {}),
        "model_file": Path(onnx_path).name,
        "training": {k: v for k, v in record.items() if k not in ("dataset", "data")},  # no local paths
        "dataset": {k: v for k, v in dataset.items() if k != "coco"},
    }


def evaluate_and_write(onnx_path: Path, task: str, model_name: str, *, count: int | None, seed: int | None,
                       out: Path | None, models_dir: Path) -> Path:  # fmt: skip
    from training.tasks import dense

    held_out = (seed in (None, dense.EVAL_SEED)) and (count in (None, dense.EVAL_COUNT))
    if out is None:
        if not held_out:
            raise ValueError(f"models/{model_name}/{BASELINE_FILE} holds the card's held-out evaluation "
                             f"({dense.EVAL_COUNT} scenes, seed {dense.EVAL_SEED}); give --out for other data")
        out = Path(models_dir) / model_name / BASELINE_FILE
    record_path = train_record_path(onnx_path)
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    evaluation, served = evaluate_onnx(onnx_path, task, count, seed)
    document = baseline_document(evaluation, served, task, model_name, record, onnx_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document["metrics"], indent=1))
    return out


# --------------------------------------------------------------------------------------------------
# all: every stage, each in its own venv.
# --------------------------------------------------------------------------------------------------


def all_commands(args: argparse.Namespace) -> list[tuple[list[str], str]]:
    """(argv, why) of every step; the scenes step is left out when the folder already holds those scenes."""
    work = Path(args.work) / args.task
    coco, dataset = work / "coco", work / f"dataset-{args.task}"
    onnx_path = work / f"{Path(TASKS[args.task].yaml).stem}.onnx"
    project, ultra = str(args.python), str(args.ultra_python)
    budget = ["--epochs", str(args.epochs)] if args.epochs is not None else ["--minutes", f"{args.minutes:g}"]
    steps = []
    if not scenes_ready(coco, args.count + args.val, args.seed):
        steps.append(([project, "-m", "training", "data", "scenes", "--out", str(coco),
                       "--count", str(args.count + args.val), "--seed", str(args.seed)],
                      f"{args.count} training scenes and the {args.val} validation scenes after them"))  # fmt: skip
    steps.append(([ultra, SCRIPT, "prepare", "--coco", str(coco), "--task", args.task, "--val", str(args.val),
                   "--out", str(dataset)], "Ultralytics dataset"))  # fmt: skip
    steps.append(([ultra, SCRIPT, "train", "--data", str(dataset / "data.yaml"), "--task", args.task,
                   *budget, "--threads", str(args.threads), "--imgsz", str(args.imgsz), "--batch", str(args.batch),
                   "--out", str(onnx_path)], "YOLO11n from yaml, then ONNX"))  # fmt: skip
    evaluate = [project, SCRIPT, "evaluate", "--model", str(onnx_path), "--task", args.task,
                "--model-name", args.model_name or TASKS[args.task].model_name]  # fmt: skip
    if args.eval_count is not None:
        evaluate += ["--count", str(args.eval_count), "--out", str(work / BASELINE_FILE)]
    steps.append((evaluate, "held-out evaluation by the dense plug-in -> baseline.json"))
    return steps


def scenes_ready(coco: Path, count: int, seed: int) -> bool:
    path = coco / "instances.json"
    if not path.exists():
        return False
    info = json.loads(path.read_text()).get("info", {})
    return info.get("count") == count and info.get("seed") == seed


def run_all(args: argparse.Namespace) -> int:
    for argv, why in all_commands(args):
        print(f"# {why}\n{shlex.join(argv)}", flush=True)
        if not args.dry_run:
            subprocess.run(argv, cwd=REPO_ROOT, check=True)
    return 0


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def budget(p: argparse.ArgumentParser, default_minutes: float | None) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--minutes", type=float, default=default_minutes,
                           help="wall-clock training budget (Ultralytics' time=, in hours = minutes / 60)")
        group.add_argument("--epochs", type=int, help="train this many epochs instead (smoke tests)")

    def training_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--threads", type=int, default=1, help="torch threads (the dense recipes use 1)")
        p.add_argument("--imgsz", type=int, default=IMGSZ, help=f"training and export size (default {IMGSZ})")
        p.add_argument("--batch", type=int, default=16, help="batch size (Ultralytics' default 16)")

    p = commands.add_parser("prepare", help="COCO scenes folder -> Ultralytics dataset (either venv)")
    p.add_argument("--coco", type=Path, required=True, help="folder with instances.json and images/")
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--val", type=int, default=VAL_SCENES, help=f"last N images as validation (default {VAL_SCENES})")

    p = commands.add_parser("train", help="YOLO11n from yaml on CPU, then ONNX (the Ultralytics venv)")
    p.add_argument("--data", type=Path, required=True, help="data.yaml written by `prepare`")
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write (its record: NAME.train.json)")
    p.add_argument("--work", type=Path, help="Ultralytics runs and settings (default: beside --out)")
    p.add_argument("--seed", type=int, default=0, help="Ultralytics' training seed")
    budget(p, None)
    training_options(p)

    p = commands.add_parser("evaluate", help="held-out evaluation -> models/NAME/baseline.json (the project venv)")
    p.add_argument("--model", type=Path, required=True, help="ONNX file written by `train`")
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--model-name", help="the Stride model's folder under models/ (default: the task's bundled one)")
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    p.add_argument("--count", type=int, help="held-out scenes (default: the plug-in's, 1000)")
    p.add_argument("--seed", type=int, help="held-out seed (default: the plug-in's)")
    p.add_argument("--out", type=Path, help="write baseline.json here instead (required for other data)")

    p = commands.add_parser("all", help="scenes, prepare, train, evaluate: each in its venv, commands printed")
    p.add_argument("--task", choices=sorted(TASKS), required=True)
    p.add_argument("--model-name", help="the Stride model's folder under models/ (default: the task's bundled one)")
    p.add_argument("--count", type=int, default=10_000, help="training scenes (the bundled recipes': 10,000)")
    p.add_argument("--seed", type=int, default=0, help="training scenes' seed (the dense plug-in's: 0)")
    p.add_argument("--val", type=int, default=VAL_SCENES, help="validation scenes generated after the training ones")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch folder (a sub-folder per task)")
    p.add_argument("--python", type=Path, default=PROJECT_PYTHON if PROJECT_PYTHON.exists() else Path(sys.executable),
                   help="the project venv's python (scenes, evaluate)")
    p.add_argument("--ultra-python", type=Path, default=ULTRA_PYTHON,
                   help="the Ultralytics venv's python (prepare, train; env STRIDE_ULTRA_PYTHON)")
    p.add_argument("--eval-count", type=int, help="evaluate on fewer held-out scenes (written to WORK, not models/)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    budget(p, 36.0)
    training_options(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            path = prepare_dataset(args.coco, args.task, args.out, args.val)
            print(f"{path}: {json.loads((path.parent / 'prepare.json').read_text())['counts']}")
        elif args.command == "train":
            print(train_and_export(args.data, args.task, args.out, minutes=args.minutes, epochs=args.epochs,
                                   imgsz=args.imgsz, threads=args.threads, batch=args.batch, work=args.work,
                                   seed=args.seed))  # fmt: skip
        elif args.command == "evaluate":
            print(evaluate_and_write(args.model, args.task, args.model_name or TASKS[args.task].model_name,
                                     count=args.count, seed=args.seed, out=args.out, models_dir=args.models_dir))
        else:
            return run_all(args)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return 0


if __name__ == "__main__":
    sys.exit(main())
