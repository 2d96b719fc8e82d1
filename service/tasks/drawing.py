"""Answers drawn on their image: the one drawing module behind `format=png|jpeg` and the web page's colours.

Everything is drawn from the response models (the JSON a client gets), never from the decoder's arrays, so
the picture and the JSON cannot disagree. Colours come by class id from `PALETTE`, which the web page reads
from the service (`drawing_style`), so a class has the same colour in an annotated image and on the page.

Drawing order: translucent masks and class maps first, then box outlines, skeletons, labels and panels, so
text always stays readable. Box outlines lie inside their box, so a box clipped to the image border shows
its whole outline.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.schemas import (
    RLE,
    ClassifyResponse,
    Detection,
    DetectResponse,
    ImageInfo,
    InstanceSegmentResponse,
    KeypointsResponse,
    SemanticSegmentResponse,
)
from service.tasks import rle

Answer = ClassifyResponse | DetectResponse | InstanceSegmentResponse | SemanticSegmentResponse | KeypointsResponse
Rgb = tuple[int, int, int]

# Saturated and far apart in hue for the first ids (most models have few classes); none is grey, so a
# colour never vanishes into a grey photo or a greyscale digit.
PALETTE: tuple[str, ...] = (
    "#FF3B30", "#34C759", "#007AFF", "#FFCC00", "#AF52DE", "#FF9500", "#00C7BE", "#FF2D95",
    "#8CE600", "#5856D6", "#A2845E", "#5AC8FA", "#C7003C", "#006B3C", "#FFD1DC", "#7F00FF",
    "#B3A100", "#00429D", "#FF7F50", "#00FF9F",
)
MASK_ALPHA = 0.45  # instance masks and class maps: the image stays visible under the colour
PANEL_ALPHA = 0.6  # the dark backing of the top-k bars and the legend
UNPAINTED_LABELS = ("background",)  # semantic classes left uncoloured: painting them would hide the image
ImageFormat = Literal["png", "jpeg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg"}
JPEG_QUALITY = 90
_PANEL_RGB: Rgb = (0, 0, 0)
_PANEL_TEXT: Rgb = (255, 255, 255)
_JOINT_RING: Rgb = (255, 255, 255)


def class_color(class_id: int) -> Rgb:
    return hex_to_rgb(PALETTE[class_id % len(PALETTE)])


def hex_to_rgb(color: str) -> Rgb:
    value = int(color.lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def text_color_on(background: Rgb) -> Rgb:
    """Black on light colours, white on dark ones (relative luminance, ITU-R BT.709 weights)."""
    red, green, blue = background
    return (0, 0, 0) if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 140 else (255, 255, 255)


def draw_answer(image: Image.Image, answer: Answer) -> Image.Image:
    """The upright image at the answer's original size, in RGB, with the answer drawn on it.

    `image` may be smaller than the original (a JPEG decoded at reduced scale) or in another colour mode
    (a greyscale model's input): it is brought to `answer.image`'s size and RGB first, so coordinates in the
    answer, which are in original pixels, land where they belong.
    """
    canvas = _rgb_at_size(image, answer.image)
    sizes = _Sizes.for_image(*canvas.size)
    if isinstance(answer, ClassifyResponse):
        _draw_top_k(canvas, answer, sizes)
    elif isinstance(answer, SemanticSegmentResponse):
        _draw_class_map(canvas, answer, sizes)
    elif isinstance(answer, InstanceSegmentResponse):
        for instance in answer.instances:
            mask = instance_mask(instance.mask, canvas.height, canvas.width)
            if mask is not None:
                _blend(canvas, mask, class_color(instance.class_id), MASK_ALPHA)
        _draw_detections(canvas, answer.instances, sizes)
    elif isinstance(answer, KeypointsResponse):
        _draw_detections(canvas, answer.instances, sizes)
        _draw_skeletons(canvas, answer, sizes)
    elif isinstance(answer, DetectResponse):
        _draw_detections(canvas, answer.detections, sizes)
    else:
        raise TypeError(f"cannot draw a {type(answer).__name__}")
    return canvas


def encode_image(image: Image.Image, fmt: ImageFormat) -> bytes:
    """PNG (lossless: the pixels outside the drawing are the original's) or JPEG (small, for photos)."""
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=1)  # speed over a few percent of size, per request
    elif fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"image format '{fmt}' is not one of {', '.join(MEDIA_TYPES)}")
    return buffer.getvalue()


def instance_mask(mask: RLE | list[list[list[float]]] | str | None, height: int, width: int) -> np.ndarray | None:
    """An instance mask in any of its wire formats -> [height, width] bool; None when masks were dropped."""
    if mask is None:
        return None
    if isinstance(mask, RLE):
        return _fit(rle.decode(mask.size, mask.counts), height, width)
    if isinstance(mask, str):
        return _fit(np.asarray(_open_png(mask).convert("L")) > 0, height, width)
    return fill_polygons(mask, height, width)


def fill_polygons(polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """Polygons of pixel-corner points -> [height, width] bool: a pixel is inside when its centre is
    (even-odd rule), so the polygons the service sends rasterise back to their mask exactly."""
    crossings = np.zeros((height, width + 1), dtype=np.int32)
    centres = np.arange(height) + 0.5
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        for (x0, y0), (x1, y1) in zip(points, np.roll(points, -1, axis=0), strict=True):
            if y0 == y1:
                continue
            rows = np.flatnonzero((centres >= min(y0, y1)) & (centres < max(y0, y1)))
            xs = x0 + (centres[rows] - y0) * (x1 - x0) / (y1 - y0)
            first_inside = np.clip(np.ceil(xs - 0.5), 0, width).astype(np.int64)  # first pixel centre >= x
            np.add.at(crossings, (rows, first_inside), 1)
    return (np.cumsum(crossings, axis=1)[:, :width] % 2).astype(bool)


def semantic_masks(answer: SemanticSegmentResponse) -> list[tuple[int, np.ndarray]]:
    """(class id, [H, W] bool) for every class present in the map, in either of its wire formats."""
    height, width = answer.segmentation.size
    if answer.segmentation.format == "png" and answer.segmentation.data is not None:
        ids = _fit(np.asarray(_open_png(answer.segmentation.data)), height, width)
        return [(int(c), ids == c) for c in np.unique(ids)]
    return [(m.class_id, _fit(rle.decode(m.rle.size, m.rle.counts), height, width))
            for m in answer.segmentation.masks or []]


class _Sizes:
    """Line width, font and joint radius in proportion to the image, so drawings read alike at any size."""

    def __init__(self, line: int, font_size: int) -> None:
        self.line = line
        self.font = _font(font_size)
        self.joint = line
        self.pad = max(1, font_size // 5)

    @classmethod
    def for_image(cls, width: int, height: int) -> _Sizes:
        longest = max(width, height)
        return cls(line=max(2, round(longest / 400)), font_size=min(40, max(10, round(longest / 50))))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: no system fonts needed


def _rgb_at_size(image: Image.Image, info: ImageInfo) -> Image.Image:
    rgb = image.convert("RGB")
    if rgb.size != (info.width, info.height):
        rgb = rgb.resize((info.width, info.height), Image.Resampling.BILINEAR)
    return rgb


def _fit(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask at the canvas size (they match for every answer the service sends; this guards the rest)."""
    if mask.shape == (height, width):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(mask.dtype)


def _open_png(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def _blend(canvas: Image.Image, mask: np.ndarray, color: Rgb, alpha: float) -> None:
    """Mix `color` into the pixels under `mask`, in place."""
    if not mask.any():
        return
    pixels = np.asarray(canvas, dtype=np.float32).copy()
    pixels[mask] = pixels[mask] * (1.0 - alpha) + np.asarray(color, dtype=np.float32) * alpha
    canvas.paste(Image.fromarray(np.round(pixels).astype(np.uint8)))


def _shade(canvas: Image.Image, box: tuple[int, int, int, int]) -> None:
    """Darken a rectangle, so white text on it reads over any image."""
    x0, y0, x1, y1 = (max(0, box[0]), max(0, box[1]), min(canvas.width, box[2]), min(canvas.height, box[3]))
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((canvas.height, canvas.width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    _blend(canvas, mask, _PANEL_RGB, PANEL_ALPHA)


def _draw_detections(canvas: Image.Image, detections: Iterable[Detection], sizes: _Sizes) -> None:
    draw = ImageDraw.Draw(canvas)
    items = list(detections)
    for detection in items:
        color = class_color(detection.class_id)
        corners = _oriented_corners(detection)
        if corners is not None:
            draw.polygon(corners, outline=color, width=sizes.line)
        else:
            draw.rectangle(box_pixels(detection), outline=color, width=sizes.line)
    for detection in items:  # labels after every outline, so no outline crosses a label
        _draw_label(draw, detection, sizes, canvas.width)


def box_pixels(detection: Detection) -> tuple[int, int, int, int]:
    """The first and last pixel columns and rows a box covers: its outline is drawn inside them."""
    box = detection.box
    x0, y0 = math.floor(box.x1), math.floor(box.y1)
    return x0, y0, max(x0, math.ceil(box.x2) - 1), max(y0, math.ceil(box.y2) - 1)


def _oriented_corners(detection: Detection) -> list[tuple[float, float]] | None:
    """The four corners of a rotated box, when the detection carries one (an optional `obb` field)."""
    obb = getattr(detection, "obb", None)
    if obb is None:
        return None
    corners = obb["corners"] if isinstance(obb, dict) else obb.corners
    return [(float(x), float(y)) for x, y in corners]


def _draw_label(draw: ImageDraw.ImageDraw, detection: Detection, sizes: _Sizes, image_width: int) -> None:
    """`label score` on a class-coloured tag: above the box's top-left corner, or inside it at the image top."""
    color = class_color(detection.class_id)
    text = f"{detection.label} {detection.score:.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=sizes.font)
    tag_width, tag_height = right - left + 2 * sizes.pad, bottom - top + 2 * sizes.pad
    corners = _oriented_corners(detection)
    x, y = (min(corners, key=lambda p: (p[1], p[0])) if corners else (detection.box.x1, detection.box.y1))
    x = min(max(0.0, x), max(0.0, image_width - tag_width))
    y = y - tag_height if y - tag_height >= 0 else y
    draw.rectangle((x, y, x + tag_width - 1, y + tag_height - 1), fill=color)
    draw.text((x + sizes.pad - left, y + sizes.pad - top), text, fill=text_color_on(color), font=sizes.font)


def _draw_skeletons(canvas: Image.Image, answer: KeypointsResponse, sizes: _Sizes) -> None:
    """Limbs between visible joints in the class colour, then each visible joint as a ringed dot."""
    draw = ImageDraw.Draw(canvas)
    for person in answer.instances:
        color = class_color(person.class_id)
        joints = {joint.name: joint for joint in person.keypoints if joint.visible}
        for start, end in answer.skeleton:
            if start in joints and end in joints:
                draw.line((joints[start].x, joints[start].y, joints[end].x, joints[end].y), fill=color,
                          width=sizes.line)
        r = sizes.joint
        for joint in joints.values():
            draw.ellipse((joint.x - r, joint.y - r, joint.x + r, joint.y + r), fill=color, outline=_JOINT_RING,
                         width=max(1, sizes.line // 2))


def _draw_class_map(canvas: Image.Image, answer: SemanticSegmentResponse, sizes: _Sizes) -> None:
    labels = {c.class_id: c.label for c in answer.classes}
    for class_id, mask in semantic_masks(answer):
        if labels.get(class_id) not in UNPAINTED_LABELS:
            _blend(canvas, mask, class_color(class_id), MASK_ALPHA)
    legend = [(class_color(c.class_id), f"{c.label} {100 * c.pixel_fraction:.1f}%")
              for c in answer.classes if c.label not in UNPAINTED_LABELS]
    _draw_legend(canvas, legend, sizes)


def _draw_legend(canvas: Image.Image, rows: list[tuple[Rgb, str]], sizes: _Sizes) -> None:
    """A swatch and a line of text per class, in the bottom-left corner."""
    if not rows:
        return
    draw = ImageDraw.Draw(canvas)
    line_height = _line_height(draw, sizes)
    swatch = line_height - sizes.pad
    width = max(draw.textlength(text, font=sizes.font) for _, text in rows) + swatch + 3 * sizes.pad
    height = len(rows) * line_height + sizes.pad
    top = canvas.height - height
    _shade(canvas, (0, top, math.ceil(width), canvas.height))
    for row, (color, text) in enumerate(rows):
        y = top + sizes.pad + row * line_height
        draw.rectangle((sizes.pad, y, sizes.pad + swatch - 1, y + swatch - 1), fill=color)
        draw.text((2 * sizes.pad + swatch, y), text, fill=_PANEL_TEXT, font=sizes.font)


def _draw_top_k(canvas: Image.Image, answer: ClassifyResponse, sizes: _Sizes) -> None:
    """One bar per prediction, its length the probability, in the class colour, in the top-left corner."""
    if not answer.predictions:
        return
    draw = ImageDraw.Draw(canvas)
    line_height = _line_height(draw, sizes)
    texts = [f"{p.label} {p.score:.2f}" for p in answer.predictions]
    text_width = max(draw.textlength(text, font=sizes.font) for text in texts)
    width = min(canvas.width, math.ceil(max(text_width + 2 * sizes.pad, canvas.width * 0.4)))
    bar_room = width - 2 * sizes.pad
    _shade(canvas, (0, 0, width, len(texts) * line_height + sizes.pad))
    for row, (prediction, text) in enumerate(zip(answer.predictions, texts, strict=True)):
        y = sizes.pad + row * line_height
        bar = round(bar_room * min(1.0, max(0.0, prediction.score)))
        if bar > 0:
            draw.rectangle((sizes.pad, y, sizes.pad + bar - 1, y + line_height - sizes.pad - 1),
                           fill=class_color(prediction.class_id))
        draw.text((sizes.pad, y), text, fill=_PANEL_TEXT, font=sizes.font, stroke_width=1, stroke_fill=_PANEL_RGB)


def _line_height(draw: ImageDraw.ImageDraw, sizes: _Sizes) -> int:
    _, top, _, bottom = draw.textbbox((0, 0), "Hg", font=sizes.font)
    return bottom - top + 2 * sizes.pad
