"""The scene generator: determinism, valid COCO, visible-part annotations, keypoint visibility."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from training.data import scenes

SEED, COUNT = 7, 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    path = scenes.write_dataset(out, COUNT, SEED)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    return out, path, coco


def test_api_constants():
    assert [c["id"] for c in scenes.CATEGORIES] == [1, 2, 3, 4]
    assert [c["name"] for c in scenes.CATEGORIES] == ["circle", "square", "triangle", "person"]
    person = scenes.CATEGORIES[3]
    assert person["keypoints"] == scenes.KEYPOINT_NAMES and len(scenes.KEYPOINT_NAMES) == 14
    assert person["skeleton"] == [[a + 1, b + 1] for a, b in scenes.SKELETON]
    assert all(0 <= a < 14 and 0 <= b < 14 for a, b in scenes.SKELETON)


def test_deterministic_for_a_seed():
    a = scenes.render_scene(np.random.default_rng(3), 160, 120)
    b = scenes.render_scene(np.random.default_rng(3), 160, 120)
    c = scenes.render_scene(np.random.default_rng(4), 160, 120)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1] == b[1]
    assert np.array_equal(a[2], b[2])
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_written_dataset_is_deterministic(dataset, tmp_path):
    _out, path, _coco = dataset
    again = scenes.write_dataset(tmp_path, COUNT, SEED)
    assert json.loads(path.read_text()) == json.loads(again.read_text())


def test_coco_loads_and_is_sized(dataset):
    out, _path, coco = dataset
    assert len(coco.imgs) == COUNT
    assert len(coco.anns) >= COUNT  # at least one object per scene on average
    assert coco.loadCats(4)[0]["keypoints"] == scenes.KEYPOINT_NAMES
    for img in coco.imgs.values():
        assert (out / img["file_name"]).exists()
        assert (img["width"], img["height"]) == (scenes.WIDTH, scenes.HEIGHT)


def test_boxes_and_areas_are_the_visible_masks(dataset):
    _out, _path, coco = dataset
    for ann in coco.anns.values():
        mask = coco.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        x0, y0 = xs.min(), ys.min()
        assert ann["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
        assert ann["iscrowd"] == 0


def test_semantic_map_agrees_with_masks():
    for i in range(12):
        image, anns, semantic = scenes.render_scene(scenes.scene_rng(11, i), 160, 120)
        assert semantic.shape == (120, 160) and image.size == (160, 120)
        expected = np.zeros_like(semantic)
        for ann in anns:
            rle = ann["segmentation"]
            mask = _decode(rle)
            assert not (expected[mask] > 0).any(), "visible masks must not overlap"
            expected[mask] = ann["category_id"]
        assert np.array_equal(expected, semantic)


def _decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in rle["counts"]:
        flat[pos:pos + run] = value
        pos, value = pos + run, not value
    return flat.reshape(w, h).T


def test_keypoint_visibility():
    """2 = visible (the figure's own pixel), 1 = covered by a later object, 0 = outside (x = y = 0)."""
    seen = {0: 0, 1: 0, 2: 0}
    for i in range(150):
        _image, anns, semantic = scenes.render_scene(scenes.scene_rng(5, i), 160, 120)
        for ann in anns:
            if ann["category_id"] != 4:
                assert "keypoints" not in ann
                continue
            kps = np.asarray(ann["keypoints"]).reshape(14, 3)
            assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
            own = _decode(ann["segmentation"])
            for x, y, v in kps:
                seen[int(v)] += 1
                if v == 0:
                    assert x == 0 and y == 0
                    continue
                xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                assert 0 <= xi < 160 and 0 <= yi < 120
                if v == 2:
                    assert own[yi, xi]
                else:  # occluded: another object's visible pixel is there
                    assert not own[yi, xi] and semantic[yi, xi] > 0
    assert all(seen[v] > 0 for v in (0, 1, 2)), seen


def test_figures_are_common():
    with_person = sum(
        any(a["category_id"] == 4 for a in scenes.render_scene(scenes.scene_rng(9, i), 160, 120)[1])
        for i in range(100)
    )
    assert with_person >= 50


def test_empty_scene_and_empty_category(tmp_path):
    image, anns, semantic = scenes.render_scene(np.random.default_rng(0), 160, 120, min_objects=0, max_objects=0)
    assert anns == [] and not semantic.any() and image.size == (160, 120)
    coco_dict = scenes.build_coco([("a.png", 160, 120)], [anns])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_dict))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    assert coco.getAnnIds(imgIds=[1]) == [] and coco.getAnnIds(catIds=[4]) == []


def test_rle_roundtrip():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (1, 1), (3, 4)]:
        for _ in range(5):
            mask = rng.random(shape) < 0.5
            assert np.array_equal(_decode(scenes.mask_to_rle(mask)), mask)
    full = np.ones((3, 3), bool)
    assert scenes.mask_to_rle(full)["counts"] == [0, 9]
