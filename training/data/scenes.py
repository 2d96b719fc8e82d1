"""Generated scenes for detection, instance segmentation and keypoints, written as a COCO dataset.

Each scene is a textured or noisy background with 1-5 objects drawn one after another, so later objects
occlude earlier ones: simple shapes (circle, square, triangle) and articulated stick figures whose 14 joints
are COCO-style keypoints. As in COCO, an annotation describes the VISIBLE part of its object: `bbox`,
`area` and `segmentation` come from the visible mask (stored as uncompressed COCO RLE
`{"counts": [...], "size": [h, w]}` with iscrowd 0, exact to the pixel; pycocotools reads it like a polygon),
joint visibility is 2 when visible, 1 when covered by a later-drawn object and 0 (with x = y = 0) when
outside the image. Fully occluded objects are dropped; placement rejects heavy occlusion (more than ~45%
of an object hidden) so every annotated object stays recognisable.

    python -m training data scenes --out DIR --count N --seed S

Every image has its own generator, `numpy.random.default_rng([seed, index])`, so any image of a dataset
can be regenerated alone and datasets of different counts share their first images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 160, 120
MIN_OBJECTS, MAX_OBJECTS = 1, 5
PERSON_PROBABILITY = 0.35  # per object; with 1-5 objects ~65% of scenes hold at least one figure

KEYPOINT_NAMES: list[str] = [
    "head", "neck",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_hand", "right_hand",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_foot", "right_foot",
]  # fmt: skip
SKELETON: list[tuple[int, int]] = [
    (0, 1), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
    (1, 8), (1, 9), (8, 9), (8, 10), (9, 11), (10, 12), (11, 13),
]  # fmt: skip
FLIP_PAIRS: list[tuple[int, int]] = [(2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)]

CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {
        "id": 4,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [[a + 1, b + 1] for a, b in SKELETON],  # 1-based, as COCO does
    },
]
PERSON_ID = 4


# ---------------------------------------------------------------------------------------------- backgrounds
def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """float32 [H, W, 3] in 0..255: noise, gradient, stripes or blotches, muted so objects stand out."""
    kind = rng.integers(4)
    base = rng.uniform(60, 200, size=3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:  # fine noise
        img = base + rng.normal(0, rng.uniform(5, 25), size=(height, width, 3))
    elif kind == 1:  # linear gradient plus noise
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(width, height)
        other = rng.uniform(60, 200, size=3)
        img = base + ramp[..., None] * (other - base) + rng.normal(0, 6, size=(height, width, 3))
    elif kind == 2:  # stripes
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        wave = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * math.pi / period)
        img = base + wave[..., None] * rng.uniform(10, 30) + rng.normal(0, 4, size=(height, width, 3))
    else:  # smooth blotches: coarse noise upsampled
        coarse = rng.normal(0, 30, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
        big = np.asarray(
            Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
                (width + 32, height + 32), Image.Resampling.BICUBIC
            ),
            dtype=np.float32,
        )[:height, :width]
        img = base + (big - 128) + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    """A saturated colour that differs clearly from the background's mean."""
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        c[rng.integers(3)] = rng.choice([rng.uniform(0, 50), rng.uniform(205, 255)])
        if np.abs(c - background_mean).sum() > 150:
            return c
    return 255 - background_mean


# ---------------------------------------------------------------------------------------------- objects
def _shape_mask(rng: np.random.Generator, category: int, width: int, height: int) -> np.ndarray:
    size = rng.uniform(16, 50)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    if category == 1:
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        n = 4 if category == 2 else 3
        r = size / 2 * (math.sqrt(2) if n == 4 else 1.25)  # circumradius for side ~ size
        theta = rng.uniform(0, 2 * math.pi)
        pts = [(cx + r * math.cos(theta + 2 * math.pi * k / n), cy + r * math.sin(theta + 2 * math.pi * k / n))
               for k in range(n)]
        draw.polygon(pts, fill=1)
    return np.asarray(img, dtype=bool)


def _figure(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A stick figure: (mask [H, W] bool, joints [14, 2] float x, y)."""
    h = rng.uniform(36, 64)  # head top to feet
    cx, cy = rng.uniform(0.1 * width, 0.9 * width), rng.uniform(0.1 * height, 0.9 * height)
    tilt = rng.uniform(-0.35, 0.35)
    u = h / 10.0
    # body frame: y down, origin at the hip centre
    neck = np.array([0.0, -3.6 * u])
    head = neck + np.array([rng.uniform(-0.3, 0.3) * u, -1.5 * u])
    sh_w, hip_w = rng.uniform(0.9, 1.3) * u, rng.uniform(0.6, 0.9) * u
    l_sh, r_sh = neck + np.array([sh_w, 0.2 * u]), neck + np.array([-sh_w, 0.2 * u])
    l_hip, r_hip = np.array([hip_w, 0.0]), np.array([-hip_w, 0.0])

    def limb(start: np.ndarray, base_angle: float, spread: float, length1: float, length2: float):
        a1 = base_angle + rng.uniform(-spread, spread)
        a2 = a1 + rng.uniform(-1.2, 1.2)
        mid = start + length1 * np.array([math.cos(a1), math.sin(a1)])
        end = mid + length2 * np.array([math.cos(a2), math.sin(a2)])
        return mid, end

    # angles: 0 = +x (figure's left, drawn to the image right), pi/2 = down
    l_el, l_ha = limb(l_sh, 0.9, 1.1, 1.7 * u, 1.6 * u)
    r_el, r_ha = limb(r_sh, math.pi - 0.9, 1.1, 1.7 * u, 1.6 * u)
    l_kn, l_ft = limb(l_hip, math.pi / 2 - 0.25, 0.45, 2.3 * u, 2.2 * u)
    r_kn, r_ft = limb(r_hip, math.pi / 2 + 0.25, 0.45, 2.3 * u, 2.2 * u)
    joints = np.stack([head, neck, l_sh, r_sh, l_el, r_el, l_ha, r_ha, l_hip, r_hip, l_kn, r_kn, l_ft, r_ft])
    rot = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    joints = joints @ rot.T + np.array([cx, cy])

    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    thick = max(3, round(rng.uniform(0.55, 0.75) * u))
    hip_mid = (joints[8] + joints[9]) / 2
    segments = [(1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (8, 9), (8, 10), (9, 11), (10, 12), (11, 13)]
    for a, b in segments:
        draw.line([tuple(joints[a]), tuple(joints[b])], fill=1, width=thick)
    draw.line([tuple(joints[1]), tuple(hip_mid)], fill=1, width=thick + 1)
    for j in range(1, 14):  # round joints so limbs connect smoothly
        x, y = joints[j]
        r = thick / 2
        draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    x, y = joints[0]
    r = 1.1 * u
    draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
    return np.asarray(img, dtype=bool), joints


# ---------------------------------------------------------------------------------------------- masks
def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE: column-major run lengths, the first run counting background (maybe 0)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    return {"counts": [int(c) for c in runs], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def mask_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


# ---------------------------------------------------------------------------------------------- scenes
def render_scene(
    rng: np.random.Generator,
    width: int = WIDTH,
    height: int = HEIGHT,
    *,
    min_objects: int = MIN_OBJECTS,
    max_objects: int = MAX_OBJECTS,
) -> tuple[Image.Image, list[dict], np.ndarray]:
    """One scene: (RGB image, COCO annotations without ids / image_id, semantic map [H, W] int64 with
    0 = background and category ids 1..4 where that category's object is the visible one)."""
    canvas = _background(rng, width, height)
    bg_mean = canvas.reshape(-1, 3).mean(0)
    wanted = int(rng.integers(min_objects, max_objects + 1)) if max_objects > 0 else 0
    objects: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray]] = []  # (cat, mask, joints, colour)
    for _ in range(wanted):
        for _attempt in range(15):
            if rng.random() < PERSON_PROBABILITY:
                cat = PERSON_ID
                mask, joints = _figure(rng, width, height)
            else:
                cat = int(rng.integers(1, 4))
                mask, joints = _shape_mask(rng, cat, width, height), None
            area = mask.sum()
            if area < 60:
                continue
            # reject if the new object hides too much of an earlier one, or is mostly on top of others
            ok = True
            for _c, other, _j, _col in objects:
                other_area = other.sum()
                if (other & mask).sum() > 0.45 * other_area:
                    ok = False
                    break
            if ok:
                break
        else:
            continue
        objects.append((cat, mask, joints, _colour(rng, bg_mean)))

    semantic = np.zeros((height, width), dtype=np.int64)
    for cat, mask, _joints, colour in objects:
        shade = colour + rng.normal(0, 6, size=(height, width, 3))
        canvas[mask] = shade[mask]
        semantic[mask] = cat
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")

    annotations: list[dict] = []
    covered = np.zeros((height, width), dtype=bool)  # union of the masks drawn after object i
    visible_masks: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray]] = []
    for cat, mask, joints, _rgb in reversed(objects):
        visible = mask & ~covered
        visible_masks.append((cat, visible, joints, covered.copy()))
        covered |= mask
    for cat, visible, joints, later in reversed(visible_masks):
        area = int(visible.sum())
        if area == 0:
            continue  # fully occluded: dropped, as in COCO
        ann = {
            "category_id": cat,
            "bbox": mask_bbox(visible),
            "area": float(area),
            "segmentation": mask_to_rle(visible),
            "iscrowd": 0,
        }
        if joints is not None:
            kps: list[float] = []
            for x, y in joints:
                x, y = round(float(x), 2), round(float(y), 2)  # pixel centres at integers, as PIL draws
                xi, yi = math.floor(x + 0.5), math.floor(y + 0.5)
                if not (0 <= xi < width and 0 <= yi < height):
                    kps += [0.0, 0.0, 0]
                else:
                    kps += [x, y, 1 if later[yi, xi] else 2]
            ann["keypoints"] = kps
            ann["num_keypoints"] = int(sum(1 for v in kps[2::3] if v > 0))
        annotations.append(ann)
    return image, annotations, semantic


def build_coco(images: list[tuple[str, int, int]], annotations: list[list[dict]]) -> dict:
    """COCO dict from (file_name, width, height) per image and each image's annotations."""
    coco: dict = {"info": {"description": "Stride generated scenes"}, "images": [], "annotations": [],
                  "categories": [dict(c) for c in CATEGORIES]}
    ann_id = 1
    for image_id, ((file_name, w, h), anns) in enumerate(zip(images, annotations, strict=True), start=1):
        coco["images"].append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for ann in anns:
            coco["annotations"].append({"id": ann_id, "image_id": image_id, **ann})
            ann_id += 1
    return coco


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def generate(count: int, seed: int, width: int = WIDTH, height: int = HEIGHT):
    """Yield (index, image, annotations, semantic map) for `count` scenes of this seed."""
    for i in range(count):
        image, anns, semantic = render_scene(scene_rng(seed, i), width, height)
        yield i, image, anns, semantic


def write_dataset(out_dir: Path, count: int, seed: int, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Write images/NNNNNN.png and instances.json under out_dir; return the json path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records, all_anns = [], []
    for i, image, anns, _semantic in generate(count, seed, width, height):
        name = f"images/{i:06d}.png"
        image.save(out_dir / name)
        records.append((name, width, height))
        all_anns.append(anns)
    coco = build_coco(records, all_anns)
    coco["info"].update({"seed": seed, "count": count, "generator": "training.data.scenes"})
    path = out_dir / "instances.json"
    path.write_text(json.dumps(coco))
    return path
