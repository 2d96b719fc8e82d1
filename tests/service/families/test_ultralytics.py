"""The Ultralytics family on hand-made tensors: recognition from metadata, the candidate and end-to-end
layouts, strict thresholds, oriented boxes with fast NMS, and masks checked against Ultralytics' own
full-resolution operations written out with torch (process_mask + scale_masks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.contract import ResizePolicy, Task
from service.families import ClassifyQuery
from service.families.ultralytics import NotUltralytics, is_ultralytics, prototype_masks, ultralytics_model
from service.preprocess import Geometry
from service.tasks.detection import DetectionQuery
from service.tasks.rotated import probiou, rotated_nms

NAMES = "{0: 'circle', 1: 'square', 2: 'triangle'}"


def props(task: str = "detect", **extra: str) -> dict[str, str]:
    base = {"task": task, "names": NAMES, "imgsz": "[160, 160]", "stride": "32", "batch": "1",
            "args": "{'batch': 1, 'nms': None, 'dynamic': False}", "end2end": "False", "version": "8.4.190"}
    return base | extra


def model_for(task: str, output_shapes: list[list[object]], input_shape=None, **extra: str):  # type: ignore[no-untyped-def]
    return ultralytics_model(props(task, **extra), input_shape or [1, 3, 160, 160], output_shapes,
                             [f"output{i}" for i in range(len(output_shapes))], source="ultralytics metadata",
                             version="abc")


IDENTITY = Geometry(160, 160, 160, 160, 1.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize(("metadata", "expected"), [
    ({}, False),
    (props(), True),
    (props("segment"), True),
    ({"task": '"detection"', "names": NAMES, "imgsz": "[1]", "stride": "1"}, False),  # Stride's JSON task
    (props() | {"task": "track"}, False),
    ({k: v for k, v in props().items() if k != "names"}, False),
])
def test_recognised_from_its_own_metadata(metadata: dict[str, str], expected: bool) -> None:
    assert is_ultralytics(metadata) is expected


def test_metadata_is_read_as_python_literals_never_evaluated() -> None:
    with pytest.raises(NotUltralytics, match="names"):
        model_for("detect", [[1, 7, 525]], names="__import__('os').system('echo owned')")


@pytest.mark.parametrize(("task", "shapes", "expected_task", "kinds"), [
    ("detect", [[1, 7, 525]], Task.DETECTION, ["yolo_candidates"]),
    ("detect", [[1, 300, 6]], Task.DETECTION, ["yolo_end2end"]),
    ("segment", [[1, 39, 525], [1, 32, 40, 40]], Task.INSTANCE_SEGMENTATION, ["yolo_candidates", "mask_prototypes"]),
    ("obb", [[1, 8, 525]], Task.DETECTION, ["yolo_candidates"]),
    ("classify", [[1, 3]], Task.CLASSIFICATION, ["probabilities"]),
])
def test_contract_from_metadata_and_shapes(task: str, shapes, expected_task: Task, kinds: list[str]) -> None:  # type: ignore[no-untyped-def]
    model = model_for(task, shapes, **({"kpt_shape": "[17, 3]"} if task == "pose" else {}))
    meta = model.metadata
    assert meta.task is expected_task and meta.labels == ["circle", "square", "triangle"]
    assert [o.kind for o in meta.outputs] == kinds
    if task == "classify":
        assert meta.input.resize is ResizePolicy.CENTER_CROP and meta.input.antialias
    else:
        assert meta.input.resize is ResizePolicy.LETTERBOX and not meta.input.antialias
        assert meta.input.pad_value == 114 and meta.detection is not None
        assert (meta.detection.confidence, meta.detection.iou, meta.detection.max_detections) == (0.25, 0.7, 300)


def test_dynamic_shapes_letterbox_to_the_minimal_rectangle() -> None:
    model = model_for("detect", [["batch", 7, "anchors"]], input_shape=["batch", 3, "height", "width"],
                      args="{'dynamic': True}")
    assert model.metadata.input.pad_to_stride == 32 and model.metadata.input.dynamic_batch


@pytest.mark.parametrize(("joints", "names", "first", "edges"), [
    (17, None, "nose", 19),
    (5, None, "kp0", 0),
    (3, "{0: ['head', 'hand', 'foot']}", "head", 0),
])
def test_joint_names(joints: int, names: str | None, first: str, edges: int) -> None:
    extra = {"kpt_shape": f"[{joints}, 3]"} | ({"kpt_names": names} if names else {})
    model = model_for("pose", [[1, 4 + 3 + joints * 3, 525]], **extra)
    assert model.metadata.keypoints is not None
    assert model.metadata.keypoints.names[0] == first and len(model.metadata.keypoints.skeleton) == edges


def candidates(rows: list[list[float]]) -> np.ndarray:
    """[N, 4 + nc] rows of cx, cy, w, h, scores -> the [4 + nc, N] layout of one image's output."""
    return np.asarray(rows, dtype=np.float32).T


@pytest.mark.parametrize(("rows", "query", "expected"), [
    ([], DetectionQuery(0.25, 0.7, 300), []),
    ([[50, 50, 20, 20, 0.25, 0, 0]], DetectionQuery(0.25, 0.7, 300), []),  # strict: 0.25 is not > 0.25
    ([[50, 50, 20, 20, 0.9, 0, 0], [51, 50, 20, 20, 0.8, 0, 0]], DetectionQuery(0.25, 0.7, 300), [(0, 0.9)]),
    ([[50, 50, 20, 20, 0.9, 0, 0], [51, 50, 20, 20, 0, 0.8, 0]], DetectionQuery(0.25, 0.7, 300),
     [(0, 0.9), (1, 0.8)]),  # class-aware NMS
    ([[50, 50, 20, 20, 0.9, 0, 0], [51, 50, 20, 20, 0, 0.8, 0]], DetectionQuery(0.25, 0.7, 300, agnostic=True),
     [(0, 0.9)]),
    ([[50, 50, 20, 20, 0.9, 0, 0], [120, 50, 20, 20, 0, 0.8, 0]], DetectionQuery(0.25, 0.7, 1), [(0, 0.9)]),
    ([[50, 50, 20, 20, 0.9, 0, 0], [120, 50, 20, 20, 0, 0.8, 0]],
     DetectionQuery(0.25, 0.7, 300, classes=frozenset({1})), [(1, 0.8)]),
])
def test_candidates_layout(rows, query: DetectionQuery, expected) -> None:  # type: ignore[no-untyped-def]
    model = model_for("detect", [[1, 7, 525]])
    output = candidates(rows) if rows else np.zeros((7, 0), dtype=np.float32)
    found = model.decode([output], IDENTITY, query)
    assert [(int(c), round(float(s), 3)) for c, s in zip(found.class_ids, found.scores, strict=True)] == expected
    if expected:
        assert found.boxes[0].tolist() == pytest.approx([40, 40, 60, 60] if expected[0][0] == 0 else [110, 40, 130, 60])


def test_end_to_end_rows_are_only_filtered() -> None:
    rows = np.array([[10, 10, 30, 30, 0.9, 2], [11, 10, 31, 30, 0.8, 2], [0, 0, 5, 5, 0.25, 0], [0, 0, 0, 0, 0, 0]],
                    dtype=np.float32)
    found = model_for("detect", [[1, 300, 6]]).decode([rows], IDENTITY, DetectionQuery(0.25, 0.7, 300))
    assert found.class_ids.tolist() == [2, 2]  # overlapping rows both kept: no NMS; 0.25 is not > 0.25
    letterboxed = Geometry(320, 160, 160, 160, 0.5, 0.5, 0.0, 40.0)
    found = model_for("detect", [[1, 300, 6]]).decode([rows], letterboxed, DetectionQuery(0.5, 0.7, 1))
    assert found.boxes.tolist() == [[20.0, 0.0, 60.0, 0.0]]  # back to the original, clipped


def test_classify_probabilities() -> None:
    found = model_for("classify", [[1, 3]]).decode([np.array([0.2, 0.7, 0.1], dtype=np.float32)], IDENTITY,
                                                     ClassifyQuery(top_k=2))
    assert found.class_ids.tolist() == [1, 0] and found.scores.tolist() == pytest.approx([0.7, 0.2])


# --- oriented boxes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([50, 50, 20, 10, 0.0], [50, 50, 20, 10, 0.0], 1.0),
    ([50, 50, 20, 10, 0.0], [50, 50, 10, 20, math.pi / 2], 1.0),  # the same box, described turned by 90°
    ([50, 50, 20, 10, 0.0], [150, 150, 20, 10, 0.0], 0.0),
])
def test_probiou(a: list[float], b: list[float], expected: float) -> None:
    assert probiou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected, abs=1e-3)


def test_fast_nms_drops_a_box_overlapped_by_a_suppressed_one() -> None:
    """A > B > C in score; A overlaps B, B overlaps C, A does not overlap C: greedy NMS keeps C, the fast
    NMS of YOLO-OBB drops it (B, though suppressed, still suppresses)."""
    boxes = np.array([[50, 50, 20, 20, 0], [62, 50, 20, 20, 0], [74, 50, 20, 20, 0]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    ious = probiou(boxes, boxes)
    assert ious[0, 1] > 0.3 and ious[1, 2] > 0.3 and ious[0, 2] < 0.3
    assert rotated_nms(boxes, scores, 0.3).tolist() == [0]
    assert rotated_nms(np.zeros((0, 5)), np.zeros(0), 0.3).tolist() == []


def test_oriented_boxes_come_back_with_corners_and_enclosing_box() -> None:
    rows = np.array([[80, 80, 40, 20, 0.9, 0.0, 0.0, math.pi / 4]], dtype=np.float32).T  # 4 + 3 classes + angle
    halved = Geometry(320, 320, 160, 160, 0.5, 0.5, 0.0, 0.0)
    found = model_for("obb", [[1, 8, 525]]).decode([rows], halved, DetectionQuery(0.25, 0.7, 300))
    assert found.rotated is not None and found.rotated[0].tolist() == pytest.approx([160, 160, 80, 40, math.pi / 4])
    corners = found.corners()[0]
    assert corners.mean(axis=0).tolist() == pytest.approx([160, 160])
    assert found.boxes[0].tolist() == pytest.approx([*corners.min(axis=0), *corners.max(axis=0)])


# --- masks against Ultralytics' full-resolution operations ------------------------------------------------


def ultralytics_reference_masks(coefficients: np.ndarray, prototypes: np.ndarray, boxes: np.ndarray,
                                geometry: Geometry) -> np.ndarray:
    """process_mask(upsample=True) then scale_masks(...) > 0.5, over the whole image, with torch."""
    protos = torch.from_numpy(prototypes)
    c, mh, mw = protos.shape
    logits = (torch.from_numpy(coefficients) @ protos.view(c, -1)).view(-1, mh, mw)
    up = F.interpolate(logits[None], (geometry.input_height, geometry.input_width), mode="bilinear",
                       align_corners=False)[0] > 0
    cols = torch.arange(geometry.input_width)[None, None, :]
    rows = torch.arange(geometry.input_height)[None, :, None]
    b = torch.from_numpy(boxes)[:, :, None, None]
    up = up & (cols >= b[:, 0]) & (cols < b[:, 2]) & (rows >= b[:, 1]) & (rows < b[:, 3])
    new_w = max(round(geometry.original_width * geometry.scale_x), 1)
    new_h = max(round(geometry.original_height * geometry.scale_y), 1)
    top, left = int(geometry.offset_y), int(geometry.offset_x)
    kept = up[:, top:top + new_h, left:left + new_w].float()
    return (F.interpolate(kept[None], (geometry.original_height, geometry.original_width), mode="bilinear",
                          align_corners=False)[0] > 0.5).numpy()


@pytest.mark.parametrize(("original", "seed"), [((333, 517), 0), ((900, 200), 1), ((50, 40), 2), ((160, 160), 3)])
def test_masks_equal_ultralytics_full_resolution_operations(original: tuple[int, int], seed: int) -> None:
    w, h = original
    ratio = min(160 / w, 160 / h)
    new_w, new_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
    geometry = Geometry(w, h, 160, 160, new_w / w, new_h / h, float((160 - new_w) // 2), float((160 - new_h) // 2))
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(32, 40, 40)).astype(np.float32)
    coefficients = rng.normal(size=(4, 32)).astype(np.float32) * 0.3
    x1 = rng.uniform(geometry.offset_x, 100, size=4)
    y1 = rng.uniform(geometry.offset_y, 100, size=4)
    boxes = np.stack([x1, y1, x1 + rng.uniform(5, 60, 4), y1 + rng.uniform(5, 60, 4)], axis=1).astype(np.float32)
    expected = ultralytics_reference_masks(coefficients, prototypes, boxes, geometry)
    masks, nonempty = prototype_masks(coefficients, prototypes, boxes, geometry)
    for index, mask in enumerate(masks):
        full = np.zeros((h, w), dtype=bool)
        full[mask.y0:mask.y0 + mask.pixels.shape[0], mask.x0:mask.x0 + mask.pixels.shape[1]] = mask.pixels
        assert (full == expected[index]).all(), (index, (full != expected[index]).sum())
        assert nonempty[index] or not expected[index].any()
