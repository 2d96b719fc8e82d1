"""tools/yolo_baseline.py `prepare`: generated scenes -> Ultralytics datasets, checked line by line. Runs in the
project venv, without Ultralytics or torch (the tool imports them only inside `train`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools import yolo_baseline as yb
from training.data import scenes

REPO = Path(__file__).resolve().parents[2]
SEED, COUNT, VAL = 5, 14, 3
W, H = scenes.WIDTH, scenes.HEIGHT
JOINTS = len(scenes.KEYPOINT_NAMES)


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("coco")
    scenes.write_dataset(out, COUNT, SEED)
    return out


@pytest.fixture(scope="module")
def coco(coco_dir) -> dict:
    return json.loads((coco_dir / "instances.json").read_text())


@pytest.fixture(scope="module")
def datasets(coco_dir, tmp_path_factory) -> dict[str, Path]:
    return {task: yb.prepare_dataset(coco_dir, task, tmp_path_factory.mktemp(task), VAL).parent
            for task in yb.TASKS}


def label_rows(root: Path) -> list[tuple[str, str, list[float]]]:
    """(split, image stem, numbers) of every label line."""
    rows = []
    for split in ("train", "val"):
        for path in sorted((root / "labels" / split).glob("*.txt")):
            rows += [(split, path.stem, [float(v) for v in line.split()]) for line in path.read_text().splitlines()]
    return rows


def coco_annotations(coco: dict, stem: str, category_ids: set[int]) -> list[dict]:
    image_id = next(r["id"] for r in coco["images"] if Path(r["file_name"]).stem == stem)
    return [a for a in coco["annotations"] if a["image_id"] == image_id and a["category_id"] in category_ids]


def even_odd_fill(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centre is inside the polygon by the even-odd rule (a crossing-number test)."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if y1 != y2:
            inside ^= ((y1 > ys) != (y2 > ys)) & (xs < x1 + (ys - y1) * (x2 - x1) / (y2 - y1))
    return inside


# ------------------------------------------------------------------------------------------- the datasets
@pytest.mark.parametrize(
    ("task", "names", "columns"),
    [
        ("detect", ["circle", "square", "triangle", "person"], 5),
        ("segment", ["circle", "square", "triangle", "person"], None),  # 1 + 2 x vertices
        ("pose", ["person"], 5 + 3 * JOINTS),
    ],
)
def test_layout_names_and_columns(datasets, coco, task, names, columns):
    root = datasets[task]
    data = (root / "data.yaml").read_text()
    assert f'path: "{root}"' in data and "train: images/train" in data and "val: images/val" in data
    assert all(f'  {i}: "{name}"' in data for i, name in enumerate(names))
    for split, count in (("train", COUNT - VAL), ("val", VAL)):
        images = sorted(p.stem for p in (root / "images" / split).iterdir())
        assert len(images) == count
        assert images == sorted(p.stem for p in (root / "labels" / split).iterdir())
    # the last VAL scenes, in id order, are the validation set
    assert sorted(p.name for p in (root / "images" / "val").iterdir()) == \
        [Path(r["file_name"]).name for r in coco["images"][-VAL:]]  # fmt: skip
    record = json.loads((root / "prepare.json").read_text())
    assert record["names"] == names and record["train_images"] == COUNT - VAL and record["val"] == VAL
    assert record["coco_info"]["seed"] == SEED
    rows = label_rows(root)
    assert rows, "no labels at all"
    for _split, _stem, values in rows:
        assert values[0] == int(values[0]) and 0 <= values[0] < len(names)
        if columns is not None:
            assert len(values) == columns
        else:
            assert len(values) % 2 == 1 and len(values) >= 7  # class + at least 3 (x, y) vertices
        assert all(0.0 <= v <= 1.0 for v in values[1:5])


@pytest.mark.parametrize("task", ["detect", "pose"])
def test_boxes_are_the_coco_boxes(datasets, coco, task):
    ids = {4} if task == "pose" else {1, 2, 3, 4}
    by_image: dict[str, list[list[float]]] = {}
    for _split, stem, values in label_rows(datasets[task]):
        cx, cy, w, h = values[1:5]
        corners = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        assert (corners >= -1e-6).all() and (corners <= 1 + 1e-6).all() and w > 0 and h > 0
        by_image.setdefault(stem, []).append([(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H])
    total = 0
    for record in coco["images"]:
        stem = Path(record["file_name"]).stem
        expected = [a["bbox"] for a in coco_annotations(coco, stem, ids)]
        assert np.allclose(by_image.get(stem, []), expected, atol=1e-3) if expected else stem not in by_image
        total += len(expected)
    assert total == sum(len(v) for v in by_image.values())
    if task == "detect":  # every category present, class = category position
        classes = {int(values[0]) for *_, values in label_rows(datasets[task])}
        assert classes == {0, 1, 2, 3}


def test_polygons_are_the_masks(datasets, coco):
    rows = label_rows(datasets["segment"])
    by_image: dict[str, list[list[float]]] = {}
    for _split, stem, values in rows:
        by_image.setdefault(stem, []).append(values)
    checked = 0
    for stem, lines in by_image.items():
        annotations = coco_annotations(coco, stem, {1, 2, 3, 4})
        assert len(lines) == len(annotations)
        for values, annotation in zip(lines, annotations, strict=True):
            assert int(values[0]) == annotation["category_id"] - 1
            xy = np.array(values[1:]).reshape(-1, 2)
            assert len(xy) >= 3 and (xy >= 0).all() and (xy <= 1).all()
            assert not (xy == np.roll(xy, 1, axis=0)).all(axis=1).any()  # no repeated vertex
            polygon = np.round(xy * [W, H], 3)  # closed implicitly: last vertex back to the first
            mask = yb.annotation_mask(annotation, H, W)
            assert np.array_equal(even_odd_fill(polygon, H, W), mask)
            x, y, w, h = annotation["bbox"]
            assert np.allclose([*polygon.min(0), *(polygon.max(0) - polygon.min(0))], [x, y, w, h])
            checked += 1
    assert checked == len(coco["annotations"])  # every object of every image, train and val


def test_keypoints_and_flip(datasets, coco):
    root = datasets["pose"]
    data = (root / "data.yaml").read_text()
    flip = [0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12]
    assert f"kpt_shape: [{JOINTS}, 3]" in data and f"flip_idx: {json.dumps(flip)}" in data
    assert f"  0: {json.dumps(scenes.KEYPOINT_NAMES)}" in data and "kpt_oks_sigmas: [0.05," in data
    visibilities = set()
    for _split, stem, values in label_rows(root):
        joints = np.array(values[5:]).reshape(JOINTS, 3)
        annotation = next(a for a in coco_annotations(coco, stem, {4})
                          if np.allclose(a["bbox"][0], (values[1] - values[3] / 2) * W, atol=1e-3)
                          and np.allclose(a["bbox"][1], (values[2] - values[4] / 2) * H, atol=1e-3))  # fmt: skip
        expected = np.array(annotation["keypoints"]).reshape(JOINTS, 3)
        assert np.array_equal(joints[:, 2], expected[:, 2])
        hidden = joints[:, 2] == 0
        assert (joints[hidden] == 0).all()
        assert np.allclose(joints[~hidden, :2], np.clip(expected[~hidden, :2] / [W, H], 0, 1), atol=1e-5)
        visibilities |= set(joints[:, 2].astype(int).tolist())
    assert visibilities <= {0, 1, 2} and 2 in visibilities


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (scenes.KEYPOINT_NAMES, [0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12]),
        (["nose", "left_eye", "right_eye"], [0, 2, 1]),
        (["left_hand", "head"], [0, 1]),  # no right_hand: stays
        (["right_a", "left_a", "mid"], [1, 0, 2]),
    ],
)
def test_flip_index(names, expected):
    index = yb.flip_index(names)
    assert index == expected
    assert [index[i] for i in index] == list(range(len(names)))  # an involution


# ------------------------------------------------------------------------------------------- mask outlines
def grid(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


@pytest.mark.parametrize(
    ("rows", "loops", "areas"),
    [
        (["....", ".#..", "...."], 1, [1.0]),
        (["......", ".####.", ".####.", "......"], 1, [8.0]),
        ([".....", ".#...", ".##..", ".###.", "....."], 1, [6.0]),  # staircase
        (["....", ".#..", "..#.", "...."], 2, [1.0, 1.0]),  # touching at a corner: two parts
        (["......", ".####.", ".#..#.", ".####.", "......"], 2, [12.0, -2.0]),  # a hole
        (["#..#", "....", "#..#"], 4, [1.0] * 4),  # parts at the image edges
        (["####", "####"], 1, [8.0]),  # the whole image
    ],
)
def test_mask_outlines_are_exact(rows, loops, areas):
    mask = grid(rows)
    found = yb.mask_loops(mask)
    assert len(found) == loops
    assert sorted(yb.loop_area(loop) for loop in found) == sorted(areas)
    for loop in found:  # corners only: consecutive edges turn
        edges = np.roll(loop, -1, axis=0) - loop
        following = np.roll(edges, -1, axis=0)
        assert (edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0] != 0).all()
    polygon = yb.mask_polygon(mask)
    assert np.array_equal(even_odd_fill(polygon.astype(float), *mask.shape), mask)
    assert (polygon >= 0).all() and (polygon[:, 0] <= mask.shape[1]).all() and (polygon[:, 1] <= mask.shape[0]).all()


def test_empty_mask_gives_no_line():
    assert len(yb.mask_polygon(np.zeros((4, 4), dtype=bool))) == 0
    empty = {"category_id": 1, "bbox": [0, 0, 0, 0], "segmentation": {"counts": [16], "size": [4, 4]}}
    assert yb.label_lines("segment", [empty], {1: 0}, 4, 4, 0) == []
    assert yb.label_lines("detect", [empty], {1: 0}, 4, 4, 0) == []


# ------------------------------------------------------------------------------------------- refusals, CLI
def test_refuses_the_evaluation_seed_and_writing_into_the_coco_folder(tmp_path, coco_dir):
    held_out = tmp_path / "held_out"
    scenes.write_dataset(held_out, 3, yb.EVAL_SEED)
    with pytest.raises(ValueError, match="held-out seed"):
        yb.prepare_dataset(held_out, "detect", tmp_path / "out", 1)
    with pytest.raises(ValueError, match="holds a COCO dataset"):
        yb.prepare_dataset(coco_dir, "detect", coco_dir, 1)
    with pytest.raises(ValueError, match="--val"):
        yb.prepare_dataset(coco_dir, "detect", tmp_path / "out", COUNT)


def test_constants_agree_with_the_dense_plugin():
    dense = pytest.importorskip("training.tasks.dense")
    assert yb.EVAL_SEED == dense.EVAL_SEED and yb.OKS_SIGMA == dense.OKS_SIGMA
    assert yb.IMGSZ == 128
    assert {t.stride_task for t in yb.TASKS.values()} == {"detection", "instance_segmentation", "keypoints"}


def test_imports_without_ultralytics_or_torch():
    code = ("import sys; import tools.yolo_baseline; "
            "print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_all_prints_each_stage_in_its_venv(tmp_path, capsys):
    argv = ["all", "--task", "pose", "--count", "100", "--seed", "0", "--minutes", "36", "--work", str(tmp_path),
            "--python", "/project/python", "--ultra-python", "/ultra/python", "--dry-run"]  # fmt: skip
    assert yb.main(argv) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    work = tmp_path / "pose"
    assert commands == [
        f"/project/python -m training data scenes --out {work}/coco --count 300 --seed 0",
        f"/ultra/python tools/yolo_baseline.py prepare --coco {work}/coco --task pose --val 200 "
        f"--out {work}/dataset-pose",
        f"/ultra/python tools/yolo_baseline.py train --data {work}/dataset-pose/data.yaml --task pose --minutes 36 "
        f"--threads 1 --imgsz 128 --batch 16 --out {work}/yolo11n-pose.onnx",
        f"/project/python tools/yolo_baseline.py evaluate --model {work}/yolo11n-pose.onnx --task pose "
        "--model-name keypoints",
    ]


def test_reproduce_command_from_the_records():
    record = {"minutes": 36.0, "threads": 1, "imgsz": 128, "batch": 16,
              "dataset": {"train_images": 10000, "val": 200, "coco_info": {"seed": 0}}}  # fmt: skip
    assert yb.reproduce_command("segment", "instance_seg", record) == (
        "python tools/yolo_baseline.py all --task segment --model-name instance_seg --count 10000 --seed 0 "
        "--val 200 --minutes 36 --threads 1"
    )
