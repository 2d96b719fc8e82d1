"""scikit-learn's handwritten digits (UCI optdigits test set): 1,797 real 8x8 images, 10 classes,
bundled with scikit-learn, so nothing is downloaded.

Each image is rendered as a user would send it: an 8-bit grayscale ("L") 8x8 image, bright ink on a dark
background. The split is stratified and fixed by a seed, so every run sees the same held-out test set.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from training.data.base import ImageSet, ImageSplits

NAME = "digits"
DEFAULT_SPLIT_SEED = 0
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15  # train gets the remaining 70%
MAX_VALUE = 16  # load_digits pixel values are counts of set bits in 4x4 blocks: 0..16
DESCRIPTION = (
    "scikit-learn load_digits (UCI optical recognition of handwritten digits, 1,797 8x8 images), "
    "rendered as 8-bit grayscale, white ink on black; stratified 70/15/15 train/val/test split"
)

CARD_NOTES = """\
Each 8x8 image is rendered as an 8-bit grayscale image with pixel = round(value × 255 / 16), white ink on
black: exactly what a user would upload. Send bright digits on a dark background, centred and roughly
filling the frame like the training images; invert dark-on-light images first.

Limitations: scikit-learn's copy of the UCI optdigits test set has 1,797 digits written by few people
(13 according to the UCI description). No writer IDs are available, so the split is by image, not by
writer, and the same writers appear in train and test: expect lower accuracy on other people's
handwriting, on off-centre, much thinner or thicker digits, and on anything that is not a single digit
(the model always answers one of the ten classes)."""


def render_digit(values: np.ndarray) -> Image.Image:
    """[8, 8] values in 0..16 -> 8x8 "L" image with pixel = round(value * 255 / 16) (half rounds up)."""
    pixels = np.floor(np.asarray(values, dtype=np.float64) * (255.0 / MAX_VALUE) + 0.5)
    return Image.fromarray(pixels.astype(np.uint8), mode="L")


def split_indices(targets: np.ndarray, seed: int = DEFAULT_SPLIT_SEED) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices into load_digits() arrays, each sorted ascending."""
    everything = np.arange(len(targets))
    rest, test = train_test_split(everything, test_size=TEST_FRACTION, stratify=targets, random_state=seed)
    # VAL_FRACTION is of the whole set, so rescale it to the part left after the test split.
    train, val = train_test_split(
        rest, test_size=VAL_FRACTION / (1.0 - TEST_FRACTION), stratify=targets[rest], random_state=seed
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def load_digits_splits(split_seed: int = DEFAULT_SPLIT_SEED) -> ImageSplits:
    digits = load_digits()
    values: np.ndarray = digits.images  # [1797, 8, 8] float64 in 0..16
    targets = digits.target.astype(np.int64)  # [1797]
    parts = split_indices(targets, split_seed)

    def subset(indices: np.ndarray) -> ImageSet:
        return ImageSet([render_digit(values[i]) for i in indices], targets[indices], indices)

    return ImageSplits(
        name=NAME,
        description=DESCRIPTION,
        labels=[str(int(name)) for name in digits.target_names],
        train=subset(parts["train"]),
        val=subset(parts["val"]),
        test=subset(parts["test"]),
        split_seed=split_seed,
        extra={
            "source": "sklearn.datasets.load_digits",
            "indices_into": "load_digits().images / .target",
            "fractions": {"train": 1 - VAL_FRACTION - TEST_FRACTION, "val": VAL_FRACTION, "test": TEST_FRACTION},
            "rendering": "L uint8 8x8, pixel = round(value * 255 / 16), white ink on black",
        },
        card_notes=CARD_NOTES,
    )
