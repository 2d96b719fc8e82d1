import numpy as np

from service.contract import MaskSpec
from service.preprocess import Geometry
from service.tasks.keypoints import joints_to_original
from service.tasks.masks import instance_masks
from service.tasks.semantic import class_map

# A 64x32 image letterboxed into 32x32: scale 0.5, 8 rows of padding above.
LETTERBOX = Geometry(64, 32, 32, 32, 0.5, 0.5, 0.0, 8.0)


def test_instance_mask_follows_the_prototype_through_the_letterbox() -> None:
    # One prototype at stride 4 (8x8 over the 32x32 input): positive on input x in [8, 24), y in [12, 20).
    prototype = np.full((1, 8, 8), -10.0, np.float32)
    prototype[0, 3:5, 2:6] = 10.0
    box = np.array([[0.0, 0.0, 64.0, 32.0]])
    (mask,) = instance_masks(np.ones((1, 1), np.float32), prototype, box, LETTERBOX,
                             MaskSpec(prototype_stride=4, prototypes=1))
    assert (mask.x0, mask.y0) == (0, 0) and mask.pixels.shape == (32, 64)
    ys, xs = np.nonzero(mask.pixels)
    # input x 8..24 -> original 16..48; input y 12..20 -> original 8..24 (bilinear edges within a pixel)
    assert abs(xs.min() - 16) <= 2 and abs(xs.max() - 47) <= 2
    assert abs(ys.min() - 8) <= 2 and abs(ys.max() - 23) <= 2


def test_instance_mask_is_cropped_to_its_box_and_empty_cases() -> None:
    prototype = np.full((1, 8, 8), 10.0, np.float32)  # everywhere positive
    (mask,) = instance_masks(np.ones((1, 1), np.float32), prototype, np.array([[10.2, 4.0, 20.0, 9.5]]),
                             LETTERBOX, MaskSpec(prototype_stride=4, prototypes=1))
    assert (mask.x0, mask.y0, mask.pixels.shape) == (10, 4, (6, 10)) and mask.pixels.all()
    assert instance_masks(np.zeros((0, 1), np.float32), prototype, np.zeros((0, 4)), LETTERBOX,
                          MaskSpec(prototype_stride=4, prototypes=1)) == []


def test_class_map_undoes_the_letterbox_and_keeps_boundaries() -> None:
    logits = np.zeros((3, 32, 32), np.float32)
    logits[0] = 1.0  # background everywhere...
    logits[1, 8:24, :16] = 5.0  # ...class 1 on the left half of the image area, class 2 on the right
    logits[2, 8:24, 16:] = 5.0
    ids = class_map(logits, LETTERBOX).ids
    assert ids.shape == (32, 64)
    assert (ids[:, :31] == 1).all() and (ids[:, 33:] == 2).all()
    assert class_map(np.zeros((2, 32, 32), np.float32), LETTERBOX).ids.max() == 0  # ties -> class 0


def test_class_map_on_a_large_image_works_in_bands() -> None:
    big = Geometry(600, 700, 32, 32, 32 / 700, 32 / 700, (32 - 600 * 32 / 700) / 2, 0.0)
    logits = np.zeros((2, 32, 32), np.float32)
    logits[0] = 0.5
    logits[1, 16:] = 1.0  # bottom half of the input is class 1: the 0.5 crossing is at input y = 16
    ids = class_map(logits, big).ids
    assert ids.shape == (700, 600)
    assert (ids[:350] == 0).all() and (ids[350:] == 1).all()  # input y 16 = original y 350, across bands


def test_joints_map_back_and_the_empty_case() -> None:
    joints = np.array([[[16.0, 16.0, 0.9], [0.0, 8.0, 0.1]]])
    out = joints_to_original(joints, LETTERBOX)
    np.testing.assert_allclose(out, [[[32.0, 16.0, 0.9], [0.0, 0.0, 0.1]]])
    assert joints_to_original(np.zeros((0, 14, 3)), LETTERBOX).shape == (0, 14, 3)
