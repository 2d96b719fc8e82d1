import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.utils import Bunch

from training.data import load_dataset
from training.data.digits import render_digit, split_indices


@pytest.fixture(scope="module")
def digits() -> Bunch:
    return load_digits()


def test_render_is_8x8_grayscale_scaled_to_255(digits: Bunch) -> None:
    values = digits.images[0]
    image = render_digit(values)
    assert image.mode == "L" and image.size == (8, 8)
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.floor(values * 255 / 16 + 0.5).astype(np.uint8))


def test_render_maps_the_full_value_range() -> None:
    values = np.arange(17, dtype=np.float64).tolist() + [0.0] * (64 - 17)
    pixels = np.asarray(render_digit(np.array(values).reshape(8, 8))).ravel()
    assert pixels[0] == 0 and pixels[16] == 255  # 0 -> black background, 16 -> full-white ink
    assert pixels[8] == 128  # 127.5 rounds half up
    assert pixels[1] == 16  # 15.9375


def test_split_is_disjoint_complete_and_stratified(digits: Bunch) -> None:
    parts = split_indices(digits.target, seed=0)
    train, val, test = parts["train"], parts["val"], parts["test"]
    assert len(train) + len(val) + len(test) == 1_797
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(1_797))
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert (len(train), len(val), len(test)) == (1_257, 270, 270)
    overall = np.bincount(digits.target) / len(digits.target)
    for part in (train, val, test):
        share = np.bincount(digits.target[part], minlength=10) / len(part)
        assert np.abs(share - overall).max() < 0.01  # stratified: same class mix everywhere


def test_split_is_deterministic_for_a_seed(digits: Bunch) -> None:
    a, b = split_indices(digits.target, seed=0), split_indices(digits.target, seed=0)
    c = split_indices(digits.target, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_loaded_splits_pair_images_with_their_labels(digits: Bunch) -> None:
    splits = load_dataset("digits")
    assert splits.labels == [str(d) for d in range(10)]
    for subset in (splits.train, splits.val, splits.test):
        assert np.array_equal(subset.targets, digits.target[subset.source_indices])
    i = 5
    source = splits.test.source_indices[i]
    assert np.array_equal(np.asarray(splits.test.images[i]), np.asarray(render_digit(digits.images[source])))
