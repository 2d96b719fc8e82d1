import numpy as np
import pytest
from pycocotools import mask as coco_mask

from service.tasks import rle
from service.tasks.polygons import mask_to_polygons


def random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:37, :53]
    return [
        np.zeros((37, 53), bool),  # empty
        np.ones((37, 53), bool),  # full
        rng.uniform(size=(37, 53)) > 0.5,  # noise: many short runs, large count deltas
        ((xx - 20) ** 2 + (yy - 18) ** 2) < 12**2,
        np.pad(np.ones((5, 5), bool), ((0, 32), (48, 0))),  # touches the top-right corner
    ]


@pytest.mark.parametrize("mask", random_masks())
def test_rle_equals_pycocotools(mask: np.ndarray) -> None:
    ours = rle.encode(mask)
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"].decode()
    assert ours["size"] == list(theirs["size"])
    decoded = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_region_encoding_equals_full_image_encoding() -> None:
    local = np.zeros((6, 9), bool)
    local[1:5, 2:8] = True
    full = np.zeros((40, 30), bool)
    full[10:16, 4:13] = local
    assert rle.encode_region(local, 4, 10, 40, 30) == rle.encode(full)


def test_runs_of_the_empty_mask() -> None:
    assert rle.runs(np.zeros(0, dtype=np.int64), 12) == [12]


@pytest.mark.parametrize("mask", random_masks()[1:])
def test_polygons_rasterise_back_to_the_mask_without_holes(mask: np.ndarray) -> None:
    polygons = mask_to_polygons(mask)
    flat = [[float(v) for point in polygon for v in point] for polygon in polygons]
    decoded = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(flat, *mask.shape))).astype(bool)
    filled = decoded | mask  # outer boundaries only: holes (in the noise mask) are filled
    assert (decoded == filled).all()
    if mask.sum() > 100 and not (mask ^ np.ones_like(mask)).any():
        assert (decoded == mask).all()


def test_polygon_of_a_disc_is_exact_and_offset() -> None:
    yy, xx = np.mgrid[:30, :30]
    disc = ((xx - 15) ** 2 + (yy - 15) ** 2) < 10**2
    (polygon,) = mask_to_polygons(disc, 100, 200)
    flat = [float(v) for point in polygon for v in point]
    decoded = coco_mask.decode(coco_mask.frPyObjects([flat], 300, 300))[..., 0].astype(bool)
    assert (decoded[200:230, 100:130] == disc).all() and decoded.sum() == disc.sum()


def test_diagonal_neighbours_are_separate_polygons_and_empty_is_empty() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True
    assert mask_to_polygons(mask) == [[[0, 0], [1, 0], [1, 1], [0, 1]], [[1, 1], [2, 1], [2, 2], [1, 2]]]
    assert mask_to_polygons(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize("mask", random_masks())
def test_rle_decodes_what_pycocotools_encodes(mask: np.ndarray) -> None:
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    np.testing.assert_array_equal(rle.decode(list(theirs["size"]), theirs["counts"].decode()), mask)


def test_rle_whose_runs_do_not_cover_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="cover 12 pixels"):
        rle.decode([5, 5], rle.encode(np.zeros((3, 4), bool))["counts"])
