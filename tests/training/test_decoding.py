"""training.decoding: ONNX outputs decoded by the service's own code, with the model's default query."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract import DetectionSpec, InputSpec, MaskSpec, ModelMetadata, OutputSpec, ResizePolicy, Task
from service.preprocess import Geometry
from service.tasks.masks import LocalMask
from training.decoding import decode_class_ids, decode_detections, full_mask, served_model

LETTERBOX = Geometry(160, 120, 128, 128, 0.8, 0.8, 0.0, 16.0)  # a 160x120 scene in a 128x128 input
SPEC = InputSpec(height=128, width=128, channels=3, resize=ResizePolicy.LETTERBOX, mean=(0, 0, 0), std=(1, 1, 1))


def metadata(task: Task, kinds: list[str], labels: int = 2, **sections: object) -> ModelMetadata:
    if task is not Task.SEMANTIC_SEGMENTATION:
        sections.setdefault("detection", DetectionSpec())
    return ModelMetadata(task=task, labels=[f"c{i}" for i in range(labels)], input=SPEC,
                         outputs=[OutputSpec(name=k, layout="batch,...", kind=k) for k in kinds],
                         model_version="1", architecture="test", training_data="none", **sections)


def test_detections_filter_nms_and_undo_the_letterbox() -> None:
    model = served_model(metadata(Task.DETECTION, ["boxes", "scores"]))
    boxes = np.zeros((6, 4), np.float32)
    boxes[0] = [8, 24, 48, 64]
    boxes[1] = [9, 25, 48, 64]  # duplicate of 0, lower score: suppressed
    boxes[2] = [9, 25, 48, 64]  # same place, other class: kept
    boxes[3] = [60, 60, 100, 100]  # below the default score threshold (0.25)
    boxes[4] = [-10, 0, 20, 30]  # clipped to the image
    scores = np.zeros((6, 2), np.float32)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 0], scores[4, 1] = 0.9, 0.8, 0.7, 0.2, 0.5
    det = decode_detections(model, [boxes, scores], LETTERBOX)
    assert det.class_ids.tolist() == [0, 1, 1]
    assert det.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert np.allclose(det.boxes[0], [10, 10, 60, 60])
    assert np.allclose(det.boxes[2], [0, 0, 25, 17.5])


def test_detections_take_the_models_own_defaults() -> None:
    """A model stating confidence 0.6 and max 1 answers what a request without parameters gets."""
    model = served_model(metadata(Task.DETECTION, ["boxes", "scores"],
                                  detection=DetectionSpec(confidence=0.6, max_detections=1)))
    boxes = np.array([[0, 16, 20, 36], [50, 50, 90, 90], [100, 20, 120, 40]], np.float32)
    scores = np.array([[0.7, 0.0], [0.0, 0.9], [0.5, 0.0]], np.float32)
    det = decode_detections(model, [boxes, scores], LETTERBOX)
    assert det.class_ids.tolist() == [1] and det.scores.tolist() == pytest.approx([0.9])


def test_instance_masks_are_cropped_to_their_box_and_placed_in_the_image() -> None:
    model = served_model(metadata(Task.INSTANCE_SEGMENTATION,
                                  ["boxes", "scores", "mask_coefficients", "mask_prototypes"],
                                  masks=MaskSpec(prototype_stride=4, prototypes=1, threshold=0.5)))
    boxes = np.array([[8, 24, 48.4, 64]], np.float32)  # original (10, 10, 60.5, 60)
    scores = np.array([[0.9, 0.0]], np.float32)
    # left half of the prototypes on: the mask's edge lands where the letterbox maps it (input x 64 -> 80)
    half = np.where(np.arange(32)[None, None, :] < 16, 10.0, -10.0).astype(np.float32).repeat(32, 1)
    det = decode_detections(model, [boxes, scores, np.ones((1, 1), np.float32), half], LETTERBOX)
    assert det.masks is not None and len(det.masks) == 1
    mask = full_mask(det.masks[0], 120, 160)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 60, 10, 59)  # cropped to the box exactly
    on = np.full((1, 32, 32), 10.0, np.float32)
    whole = decode_detections(model, [np.array([[0, 16, 128, 112]], np.float32), scores, np.ones((1, 1), np.float32),
                                      half], LETTERBOX)
    cols = np.flatnonzero(full_mask(whole.masks[0], 120, 160).any(0))
    assert cols.min() == 0 and abs(cols.max() - 79) <= 1
    everywhere = decode_detections(model, [boxes, scores, np.ones((1, 1), np.float32), on], LETTERBOX)
    assert full_mask(everywhere.masks[0], 120, 160).sum() == 51 * 50


def test_full_mask_of_an_empty_or_scaled_mask() -> None:
    assert not full_mask(LocalMask(np.zeros((0, 0), bool), 5, 5), 4, 6).any()
    # 2x2 cells covering a 4x4 box at (1, 2): nearest-neighbour scale-up, placed at its corner
    cells = LocalMask(np.array([[True, False], [False, True]]), 1, 2, np.array([0, 2, 4]), np.array([0, 2, 4]))
    mask = full_mask(cells, 8, 8)
    assert mask.sum() == 8 and mask[2:4, 1:3].all() and mask[4:6, 3:5].all() and not mask[2:4, 3:5].any()


def test_class_ids_crop_the_letterbox() -> None:
    model = served_model(metadata(Task.SEMANTIC_SEGMENTATION, ["logits"], labels=3))
    logits = np.zeros((3, 128, 128), np.float32)
    logits[0] = 1.0  # background wins by default, so the padding bands (rows 0-15, 112-127) say background
    logits[1, 16:64] = 2.0  # input rows 16-63 = original rows 0-59
    logits[2, 64:112] = 2.0  # input rows 64-111 = original rows 60-119
    ids = decode_class_ids(model, [logits], LETTERBOX)
    assert ids.shape == (120, 160)
    assert (ids[:59] == 1).all() and (ids[61:] == 2).all()  # no background: the padding was cropped
