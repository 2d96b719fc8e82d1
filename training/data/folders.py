"""A user's own images in the standard class-per-folder layout, any format Pillow reads.

Two layouts:

    DIR/train/<class>/*.png|jpg|...   and   DIR/val/<class>/...   (optionally DIR/test/<class>/...)
    DIR/<class>/*                      one folder, split automatically: stratified, seeded, 70/15/15

With train/ and val/, val/ picks the epoch (early stopping) and, unless DIR/test/ exists, is also the
held-out set the metrics and golden samples come from (then the metrics are slightly optimistic).
Labels are the class folder names, sorted. The split (which file went where) is recorded in the
checkpoint and in the model card's split.json.

Images are decoded once (EXIF orientation applied), converted to "L" when every image is grayscale and
to "RGB" otherwise, and kept as Pillow images: training renders them with the service's own preprocess.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

from training.data.base import ImageSet, ImageSplits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def is_folder_dataset(name: str) -> bool:
    return Path(name).is_dir()


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    targets: list[int] = []
    for index, label in enumerate(labels):
        found = list_images(root / label) if (root / label).is_dir() else []
        files += found
        targets += [index] * len(found)
    return files, np.asarray(targets, dtype=np.int64)


def is_grayscale(image: Image.Image) -> bool:
    if image.mode in GRAY_MODES:
        return True
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode not in ("RGB", "RGBA"):
        return False
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image.load()
        return image


def load_folder_splits(root: str | Path, split_seed: int = 0) -> ImageSplits:
    root = Path(root)
    layout = "train/val" if (root / "train").is_dir() and (root / "val").is_dir() else "single"
    if layout == "train/val":
        labels = class_folders(root / "train")
        parts = ["train", "val"] + (["test"] if (root / "test").is_dir() else [])
        all_files: list[Path] = []
        target_chunks: list[np.ndarray] = []
        positions: dict[str, np.ndarray] = {}
        for part in parts:
            files, targets = scan(root / part, labels)
            positions[part] = np.arange(len(all_files), len(all_files) + len(files))
            all_files += files
            target_chunks.append(targets)
        positions.setdefault("test", positions["val"])  # no test/: val/ is also the held-out set
        all_targets = np.concatenate(target_chunks)
    else:
        labels = class_folders(root)
        all_files, all_targets = scan(root, labels)
        everything = np.arange(len(all_files))
        rest, test = train_test_split(
            everything, test_size=TEST_FRACTION, stratify=all_targets, random_state=split_seed
        )
        train, val = train_test_split(
            rest, test_size=VAL_FRACTION / (1 - TEST_FRACTION), stratify=all_targets[rest], random_state=split_seed
        )
        positions = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    if len(labels) < 2:
        raise ValueError(f"{root}: need at least two class folders, found {labels}")
    if len(all_files) == 0:
        raise ValueError(f"{root}: no images found")

    decoded = [decode(p) for p in all_files]
    gray = all(is_grayscale(image) for image in decoded)
    mode = "L" if gray else "RGB"
    images = [image.convert(mode) for image in decoded]

    def subset(idx: np.ndarray) -> ImageSet:
        return ImageSet([images[i] for i in idx], all_targets[idx], idx)

    relative = [str(p.relative_to(root)) for p in all_files]
    description = (
        f"user images from {root.name}/ ({len(all_files)} files, {len(labels)} classes: {', '.join(labels)}), "
        f"{mode}, " + ("train/val folders" if layout == "train/val" else "stratified 70/15/15 split")
    )
    return ImageSplits(
        name=str(root.resolve()),  # absolute: `export` may run from another directory
        description=description,
        labels=labels,
        train=subset(positions["train"]),
        val=subset(positions["val"]),
        test=subset(positions["test"]),
        split_seed=split_seed,
        extra={
            "kind": "folders",
            "layout": layout,
            "color_mode": mode,
            "indices_into": "files",
            "files": relative,
        },
        card_notes=(
            f"Images from the class-per-folder directory `{root}` ({layout} layout); labels are the folder "
            "names. Limitations: the model only knows these classes and always answers one of them."
        ),
    )
