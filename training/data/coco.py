"""Reading COCO-format datasets (instances.json + images) for the dense tasks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


@dataclass
class CocoDataset:
    root: Path
    json_path: Path
    data: dict

    @property
    def categories(self) -> list[dict]:
        return sorted(self.data["categories"], key=lambda c: c["id"])

    @property
    def labels(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def images(self) -> list[dict]:
        return sorted(self.data["images"], key=lambda r: r["id"])

    def annotations_by_image(self) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {r["id"]: [] for r in self.data["images"]}
        for ann in self.data["annotations"]:
            out.setdefault(ann["image_id"], []).append(ann)
        return out

    def open_image(self, record: dict) -> Image.Image:
        with Image.open(self.root / record["file_name"]) as im:
            return im.convert("RGB")


def load_coco(path: Path) -> CocoDataset:
    """A folder holding instances.json (or any *.json given directly); file_name is relative to its folder."""
    path = Path(path)
    json_path = path / "instances.json" if path.is_dir() else path
    if not json_path.exists():
        candidates = sorted(path.glob("*.json")) if path.is_dir() else []
        if not candidates:
            raise FileNotFoundError(f"no instances.json in {path}")
        json_path = candidates[0]
    data = json.loads(json_path.read_text())
    root = json_path.parent
    first = data["images"][0]["file_name"] if data["images"] else None
    if first and not (root / first).exists() and (root / "images" / first).exists():
        root = root / "images"  # file_name relative to an images/ folder, as in many exports
    return CocoDataset(root, json_path, data)


def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary mask [H, W] of an annotation's segmentation (polygons, RLE or uncompressed RLE)."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(bool)
