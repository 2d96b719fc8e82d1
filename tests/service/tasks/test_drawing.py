"""service.tasks.drawing: every answer type drawn where its JSON says, in the class colours, and nowhere else."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from service.contract import Task
from service.schemas import (
    RLE,
    Box,
    ClassifyResponse,
    ClassMask,
    ClassPrediction,
    ClassPresence,
    Detection,
    DetectResponse,
    GeometryInfo,
    ImageInfo,
    Instance,
    InstanceSegmentResponse,
    Joint,
    KeypointsResponse,
    PoseInstance,
    SegmentationMap,
    SemanticSegmentResponse,
)
from service.tasks import masks as mask_formats
from service.tasks import rle
from service.tasks.drawing import (
    MASK_ALPHA,
    PALETTE,
    box_pixels,
    class_color,
    draw_answer,
    encode_image,
    fill_polygons,
    hex_to_rgb,
    instance_mask,
    semantic_masks,
    text_color_on,
)
from service.tasks.polygons import mask_to_polygons

WIDTH, HEIGHT = 120, 90
GREY = (128, 128, 128)


def grey_image(width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def info(width: int = WIDTH, height: int = HEIGHT) -> ImageInfo:
    return ImageInfo(width=width, height=height, format="PNG")


def geometry() -> GeometryInfo:
    return GeometryInfo(exif_orientation=1, resize="letterbox", scale_x=1.0, scale_y=1.0, pad_x=0.0, pad_y=0.0,
                        input_width=WIDTH, input_height=HEIGHT)


def detection(class_id: int, x1: float, y1: float, x2: float, y2: float, label: str = "thing") -> Detection:
    return Detection(class_id=class_id, label=label, score=0.9, box=Box(x1=x1, y1=y1, x2=x2, y2=y2))


def detect_answer(detections: list[Detection], width: int = WIDTH, height: int = HEIGHT) -> DetectResponse:
    return DetectResponse(model="m", task=Task.DETECTION, request_id="r", image=info(width, height),
                          geometry=geometry(), detections=detections)


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before.convert("RGB")) != np.asarray(after)).any(axis=2)


def outline_pixels(d: Detection, width: int) -> np.ndarray:
    """The ring of pixels `width` deep just inside the box."""
    x0, y0, x1, y1 = box_pixels(d)
    ring = np.zeros((HEIGHT, WIDTH), bool)
    ring[y0:y1 + 1, x0:x1 + 1] = True
    ring[y0 + width:y1 + 1 - width, x0 + width:x1 + 1 - width] = False
    return ring


def blended(color: tuple[int, int, int], base: tuple[int, int, int] = GREY) -> np.ndarray:
    return np.round(np.asarray(base) * (1 - MASK_ALPHA) + np.asarray(color) * MASK_ALPHA).astype(np.uint8)


@pytest.mark.parametrize(("color", "text"), [
    ("#FFFFFF", (0, 0, 0)), ("#000000", (255, 255, 255)), ("#FFCC00", (0, 0, 0)), ("#007AFF", (255, 255, 255)),
])
def test_text_colour_reads_on_its_background(color: str, text: tuple[int, int, int]) -> None:
    assert text_color_on(hex_to_rgb(color)) == text


def test_class_colours_come_from_the_palette_and_wrap_around() -> None:
    assert class_color(0) == hex_to_rgb(PALETTE[0])
    assert class_color(len(PALETTE) + 2) == class_color(2)
    assert len(set(PALETTE)) == len(PALETTE)


@pytest.mark.parametrize(("fmt", "pillow_format"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_encode_image_in_each_format_keeps_the_size(fmt: str, pillow_format: str) -> None:
    image = draw_answer(grey_image(), detect_answer([detection(1, 10, 10, 50, 40)]))
    decoded = Image.open(io.BytesIO(encode_image(image, fmt)))  # type: ignore[arg-type]
    assert decoded.format == pillow_format and decoded.size == (WIDTH, HEIGHT)
    if fmt == "png":  # lossless
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(image))


def test_encode_image_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="png, jpeg"):
        encode_image(grey_image(), "gif")  # type: ignore[arg-type]


@pytest.mark.parametrize("detections", [
    [],
    [detection(0, 10.0, 12.0, 60.0, 70.0)],
    [detection(2, 0.0, 0.0, 30.5, 20.2), detection(3, 70.3, 40.7, 120.0, 90.0)],  # at the image's corners
])
def test_boxes_are_outlined_in_their_class_colour_and_nothing_else_changes(detections: list[Detection]) -> None:
    before = grey_image()
    after = draw_answer(before, detect_answer(detections))
    pixels = np.asarray(after)
    allowed = np.zeros((HEIGHT, WIDTH), bool)
    for d in detections:
        x0, y0, x1, y1 = box_pixels(d)
        allowed[y0:y1 + 1, x0:x1 + 1] = True
        allowed[max(0, y0 - 20):y0 + 20, min(x0, WIDTH - 60):] = True  # the label tag, moved in from the edge
        ring = outline_pixels(d, 2)
        # labels may cover the top edge: the other three sides show the class colour throughout
        sides = ring.copy()
        sides[: y0 + 20] = False
        assert (pixels[sides] == class_color(d.class_id)).all()
    assert not (changed(before, after) & ~allowed).any()
    if not detections:
        assert not changed(before, after).any()


def test_a_rotated_box_is_drawn_instead_of_its_enclosing_box() -> None:
    class OrientedBox(BaseModel):
        corners: list[list[float]]
        angle: float

    class RotatedDetection(Detection):
        obb: OrientedBox | None = None

    corners = [[60.0, 10.0], [100.0, 45.0], [60.0, 80.0], [20.0, 45.0]]  # a diamond: 45 degrees
    rotated = RotatedDetection(class_id=1, label="thing", score=0.9, box=Box(x1=20, y1=10, x2=100, y2=80),
                               obb=OrientedBox(corners=corners, angle=math.pi / 4))
    after = np.asarray(draw_answer(grey_image(), detect_answer([rotated])))
    assert (after[45, 21] == class_color(1)).all() and (after[45, 98] == class_color(1)).all()  # left/right tips
    assert (after[78, 21] == GREY).all() and (after[78, 98] == GREY).all()  # enclosing box corners untouched


def disc(cx: int, cy: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2


def two_shapes() -> list[np.ndarray]:
    square = np.zeros((HEIGHT, WIDTH), bool)
    square[5:45, 70:110] = True
    return [disc(30, 40, 15), square]


def in_format(mask: np.ndarray, fmt: str) -> RLE | list[list[list[float]]] | str:
    local = mask_formats.LocalMask(mask, 0, 0)
    if fmt == "rle":
        return RLE.model_validate(mask_formats.as_rle(local, HEIGHT, WIDTH))
    if fmt == "polygon":
        return [[[float(v) for v in point] for point in polygon] for polygon in mask_formats.as_polygons(local)]
    return mask_formats.as_png(local, HEIGHT, WIDTH)


@pytest.mark.parametrize("fmt", ["rle", "polygon", "png"])
@pytest.mark.parametrize("mask", [np.zeros((HEIGHT, WIDTH), bool), *two_shapes()])
def test_every_mask_format_decodes_to_the_mask(fmt: str, mask: np.ndarray) -> None:
    np.testing.assert_array_equal(instance_mask(in_format(mask, fmt), HEIGHT, WIDTH), mask)


def test_a_dropped_mask_decodes_to_none() -> None:
    assert instance_mask(None, HEIGHT, WIDTH) is None


@pytest.mark.parametrize(("polygons", "expected"), [
    ([], np.zeros((4, 5), bool)),
    ([[[1, 1], [3, 1], [3, 3], [1, 3]]], np.pad(np.ones((2, 2), bool), ((1, 1), (1, 2)))),
    ([[[0, 0], [5, 0], [5, 4], [0, 4]]], np.ones((4, 5), bool)),
])
def test_polygons_fill_the_pixels_whose_centres_they_hold(polygons: list, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(fill_polygons(polygons, 4, 5), expected)


def test_service_polygons_rasterise_back_to_their_masks() -> None:
    for mask in two_shapes():
        np.testing.assert_array_equal(fill_polygons(mask_to_polygons(mask), HEIGHT, WIDTH), mask)


@pytest.mark.parametrize("fmt", ["rle", "polygon", "png"])
def test_instance_masks_are_blended_in_their_class_colour(fmt: str) -> None:
    shapes = two_shapes()
    instances = [
        Instance(class_id=c, label="thing", score=0.9, box=Box(x1=float(xs.min()), y1=float(ys.min()),
                                                                x2=float(xs.max() + 1), y2=float(ys.max() + 1)),
                 mask=in_format(m, fmt), area=int(m.sum()))
        for c, m in enumerate(shapes) for ys, xs in [np.nonzero(m)]
    ]
    answer = InstanceSegmentResponse(model="m", task=Task.INSTANCE_SEGMENTATION, request_id="r", image=info(),
                                     geometry=geometry(), mask_format=fmt, instances=instances)
    before = grey_image()
    after = np.asarray(draw_answer(before, answer))
    for instance, mask in zip(instances, shapes, strict=True):
        inside = mask & ~outline_pixels(instance, 3)
        inside[: box_pixels(instance)[1] + 16] = False  # below any label tag
        assert inside.sum() > 50
        assert (after[inside] == blended(class_color(instance.class_id))).all()
    outside = ~np.logical_or.reduce(shapes)
    for instance in instances:
        x0, y0, x1, y1 = box_pixels(instance)
        outside[y0:y1 + 1, x0:x1 + 1] = False
        outside[max(0, y0 - 20):y0 + 20, min(x0, WIDTH - 60):] = False  # the label tag
    assert (after[outside] == GREY).all()


def semantic_answer(fmt: str, ids: np.ndarray) -> SemanticSegmentResponse:
    labels = ["background", "circle", "square"]
    present = [int(c) for c in np.unique(ids)]
    classes = [ClassPresence(class_id=c, label=labels[c], pixel_fraction=float((ids == c).mean())) for c in present]
    if fmt == "png":
        segmentation = SegmentationMap(format="png", size=[HEIGHT, WIDTH],
                                       data=mask_formats.png_base64(Image.fromarray(ids)))
    else:
        segmentation = SegmentationMap(format="rle", size=[HEIGHT, WIDTH], masks=[
            ClassMask(class_id=c, label=labels[c], rle=RLE.model_validate(rle.encode(ids == c))) for c in present])
    return SemanticSegmentResponse(model="m", task=Task.SEMANTIC_SEGMENTATION, request_id="r", image=info(),
                                   geometry=geometry(), segmentation=segmentation, classes=classes)


def class_ids() -> np.ndarray:
    ids = np.zeros((HEIGHT, WIDTH), np.uint8)
    circle, square = two_shapes()
    ids[circle], ids[square] = 1, 2
    return ids


@pytest.mark.parametrize("fmt", ["png", "rle"])
def test_the_class_map_is_painted_except_the_background_and_has_a_legend(fmt: str) -> None:
    ids = class_ids()
    answer = semantic_answer(fmt, ids)
    assert sorted(c for c, _ in semantic_masks(answer)) == [0, 1, 2]
    after = np.asarray(draw_answer(grey_image(), answer))
    legend = np.zeros_like(ids, dtype=bool)
    legend[HEIGHT - 40:, :100] = True  # bottom-left corner: two rows of legend
    for class_id in (1, 2):
        assert (after[(ids == class_id) & ~legend] == blended(class_color(class_id))).all()
    background = (ids == 0) & ~legend
    assert (after[background] == GREY).all()
    assert (after[legend] != GREY).any(axis=1).mean() > 0.2


def test_an_empty_class_map_changes_nothing() -> None:
    answer = semantic_answer("rle", np.zeros((HEIGHT, WIDTH), np.uint8))
    assert not changed(grey_image(), draw_answer(grey_image(), answer)).any()


def test_skeletons_join_visible_joints_only() -> None:
    joints = [Joint(name="head", x=40, y=30, score=0.9, visible=True),
              Joint(name="hip", x=40, y=70, score=0.9, visible=True),
              Joint(name="hand", x=90, y=50, score=0.1, visible=False)]
    person = PoseInstance(class_id=0, label="person", score=0.9, box=Box(x1=20, y1=20, x2=100, y2=85),
                          keypoints=joints)
    answer = KeypointsResponse(model="m", task=Task.KEYPOINTS, request_id="r", image=info(), geometry=geometry(),
                               instances=[person], skeleton=[("head", "hip"), ("hip", "hand")])
    after = np.asarray(draw_answer(grey_image(), answer))
    assert (after[50, 40] == class_color(0)).all()  # on the head-hip limb
    assert (after[50, 70] == GREY).all()  # the hip-hand limb is not drawn: the hand is not visible
    assert (after[50, 90] == GREY).all()


@pytest.mark.parametrize("predictions", [
    [],
    [ClassPrediction(class_id=7, label="7", score=0.9), ClassPrediction(class_id=1, label="1", score=0.05)],
])
def test_classification_draws_one_bar_per_prediction(predictions: list[ClassPrediction]) -> None:
    answer = ClassifyResponse(model="m", task=Task.CLASSIFICATION, request_id="r", image=info(),
                              predictions=predictions)
    after = np.asarray(draw_answer(grey_image(), answer))
    for prediction in predictions:
        assert (after == class_color(prediction.class_id)).all(axis=2).sum() > prediction.score * 40
    if not predictions:
        assert (after == GREY).all()


def test_a_reduced_or_grey_image_is_drawn_at_the_answer_size_in_rgb() -> None:
    small = Image.new("L", (WIDTH // 2, HEIGHT // 2), 128)  # as a JPEG decoded at 1/2 scale for a grey model
    after = draw_answer(small, detect_answer([detection(0, 10, 30, 60, 70)]))
    assert after.size == (WIDTH, HEIGHT) and after.mode == "RGB"
    assert (np.asarray(after)[50, 10] == class_color(0)).all()
