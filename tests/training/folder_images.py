"""A small generated class-per-folder image dataset: coloured shapes on noisy backgrounds, mixed formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "stripes")
COLOURS = {"circle": (220, 60, 50), "square": (50, 170, 60), "stripes": (60, 80, 220)}


def draw_sample(label: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One image of `label`: the class's shape in a jittered version of its colour, random place/size."""
    noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    colour = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in COLOURS[label])
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    if label == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif label == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        for x in range(int(rng.integers(0, 4)), size, 6):
            draw.rectangle([x, 0, x + 2, size], fill=colour)
    return image


def write_dataset(root: Path, per_class: int = 40, seed: int = 0, layout: str = "single") -> Path:
    """root/<class>/ (layout "single") or root/{train,val}/<class>/ ("train/val"); PNG, JPEG and BMP
    files mixed, some images of other sizes, a few palette ("P") images."""
    rng = np.random.default_rng(seed)
    formats = [("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP")]
    for label in CLASSES:
        for i in range(per_class):
            part = "" if layout == "single" else ("val" if i % 4 == 0 else "train")
            folder = root / part / label if part else root / label
            folder.mkdir(parents=True, exist_ok=True)
            image = draw_sample(label, rng, size=32 if i % 5 else 40)
            ext, fmt = formats[i % 3]
            if i % 7 == 0 and fmt == "PNG":
                image = image.convert("P")
            image.save(folder / f"{label}_{i:03d}.{ext}", format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return root
