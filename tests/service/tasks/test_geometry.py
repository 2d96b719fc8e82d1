import numpy as np
import pytest

from service.preprocess import Geometry
from service.tasks.geometry import batched_nms, box_iou, boxes_to_original, nms


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(box_iou(boxes[i : i + 1], boxes[k : k + 1])[0, 0] <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # empty boxes never divide by zero
    ],
)
def test_iou_table(a: list, b: list, expected: float) -> None:
    assert box_iou(np.array([a], float), np.array([b], float))[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (60, 2))], axis=1)
    scores = rng.uniform(size=60)
    for threshold in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, threshold).tolist() == brute_force_nms(boxes, scores, threshold)


def test_nms_empty_and_cap() -> None:
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), 0.5).tolist() == []
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], float)
    assert nms(boxes, np.array([0.1, 0.9, 0.5]), 0.5, max_keep=2).tolist() == [1, 2]


def test_class_aware_nms_keeps_overlapping_boxes_of_different_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7])
    classes = np.array([0, 0, 1])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 2]
    assert batched_nms(boxes, scores, classes, 0.5, agnostic=True).tolist() == [0]


@pytest.mark.parametrize(
    ("size", "scale", "offset"),
    [((200, 100), 0.32, (0.0, 16.0)), ((101, 303), 64 / 303, (21.0, 0.0)), ((64, 64), 1.0, (0.0, 0.0))],
)
def test_letterbox_boxes_are_undone_exactly(size: tuple[int, int], scale: float, offset: tuple) -> None:
    w, h = size
    new_w, new_h = round(w * scale), round(h * scale)
    geometry = Geometry(w, h, 64, 64, new_w / w, new_h / h, offset[0], offset[1])
    original = np.array([[10.0, 5.0, w - 3.0, h - 7.0]])
    as_input = original.copy()
    as_input[:, [0, 2]] = as_input[:, [0, 2]] * geometry.scale_x + offset[0]
    as_input[:, [1, 3]] = as_input[:, [1, 3]] * geometry.scale_y + offset[1]
    np.testing.assert_allclose(boxes_to_original(as_input, geometry), original, atol=1e-9)


def test_boxes_are_clipped_to_the_image() -> None:
    geometry = Geometry(100, 50, 64, 64, 0.64, 0.64, 0.0, 16.0)
    clipped = boxes_to_original(np.array([[-10.0, 0.0, 70.0, 64.0]]), geometry)
    np.testing.assert_allclose(clipped, [[0.0, 0.0, 100.0, 50.0]])
