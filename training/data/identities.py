"""Generated identities: many procedurally drawn faces, each seen under varied pose, scale, light and noise.

An identity is a fixed set of traits drawn from `numpy.random.default_rng([SALT, identity])`: head shape,
skin tone, hair colour and style, eye spacing, size and colour, brows, nose, mouth, and sometimes glasses, a
beard, a hat or a mole. A view of it is drawn from `default_rng([SALT, identity, view])`: head roll, yaw
(features shift sideways and the head narrows), scale, position, expression (mouth curve, blinking),
lighting (gain, a directional gradient, a colour cast), background, blur and sensor noise. So any view of any
identity can be regenerated alone, and disjoint identity ranges give identities never seen in training:

    TRAIN: 0 .. 99_999        CALIBRATION (threshold, early checks): 100_000 ..        TEST: 200_000 ..

Images are 64 x 64 RGB, drawn at 128 x 128 and downsampled (antialiased edges), as a user would send them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SALT = 7_311  # separates these streams from every other generator in the project
SIZE = 64  # the delivered image side
_CANVAS = 128  # drawn at twice the size, then downsampled
TRAIN_FIRST = 0
CALIBRATION_FIRST = 100_000
TEST_FIRST = 200_000


@dataclass(frozen=True)
class Identity:
    """The traits that stay the same in every view (fractions of the canvas unless stated)."""

    skin: tuple[int, int, int]
    head_w: float
    head_h: float
    hair: tuple[int, int, int]
    hair_style: int  # 0 short cap, 1 long sides, 2 fringe, 3 bald
    hair_volume: float
    eye_y: float
    eye_dx: float
    eye_r: float
    iris: tuple[int, int, int]
    brow_tilt: float
    brow_w: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_curve: float
    lips: tuple[int, int, int]
    glasses: tuple[int, int, int] | None
    beard: bool
    hat: tuple[int, int, int] | None
    mole: tuple[float, float] | None  # offset from the face centre


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))  # type: ignore[return-value]


def identity(index: int) -> Identity:
    """The traits of identity `index` (deterministic)."""
    rng = np.random.default_rng([SALT, index])
    tone = rng.uniform(0.25, 1.0)
    skin = (int(110 + 135 * tone), int(70 + 130 * tone * rng.uniform(0.8, 1.0)),
            int(50 + 120 * tone * rng.uniform(0.6, 1.0)))
    return Identity(
        skin=skin,
        head_w=float(rng.uniform(0.26, 0.36)),
        head_h=float(rng.uniform(0.34, 0.44)),
        hair=_colour(rng),
        hair_style=int(rng.integers(4)),
        hair_volume=float(rng.uniform(0.04, 0.12)),
        eye_y=float(rng.uniform(-0.10, 0.0)),
        eye_dx=float(rng.uniform(0.08, 0.15)),
        eye_r=float(rng.uniform(0.025, 0.05)),
        iris=_colour(rng, 0, 200),
        brow_tilt=float(rng.uniform(-0.4, 0.4)),
        brow_w=float(rng.uniform(0.008, 0.025)),
        nose_len=float(rng.uniform(0.06, 0.14)),
        nose_w=float(rng.uniform(0.02, 0.05)),
        mouth_y=float(rng.uniform(0.14, 0.24)),
        mouth_w=float(rng.uniform(0.06, 0.16)),
        mouth_curve=float(rng.uniform(-1.0, 1.0)),
        lips=_colour(rng, 60, 230),
        glasses=_colour(rng, 0, 256) if rng.random() < 0.3 else None,
        beard=bool(rng.random() < 0.25),
        hat=_colour(rng) if rng.random() < 0.25 else None,
        mole=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.05, 0.2))) if rng.random() < 0.4 else None,
    )


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A plain, gradient or noisy background: it changes with every view, so it says nothing of the identity."""
    base = rng.uniform(20, 235, size=3)
    other = rng.uniform(20, 235, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    pixels = base + ramp * (other - base) * rng.uniform(0, 1) + rng.normal(0, rng.uniform(0, 12), (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_face(person: Identity, rng: np.random.Generator) -> Image.Image:
    """The face, upright and centred, on a transparent canvas; yaw and expression vary per view."""
    c = _CANVAS
    face = Image.new("RGBA", (c, c), (0, 0, 0, 0))
    draw = ImageDraw.Draw(face)
    yaw = float(rng.uniform(-1, 1))
    shift = yaw * 0.05 * c  # features slide towards the side the head turns to
    cx, cy = c / 2, c / 2 + 0.04 * c
    hw, hh = person.head_w * c * (1 - 0.12 * abs(yaw)), person.head_h * c
    hair = person.hair
    if person.hair_style == 1:  # long sides, behind the head
        draw.rectangle((cx - hw - 0.05 * c, cy - hh * 0.6, cx + hw + 0.05 * c, cy + hh * 0.6), fill=hair)
    ear = 0.05 * c
    draw.ellipse((cx - hw - ear * 0.6, cy - ear, cx - hw + ear * 0.6, cy + ear), fill=person.skin)
    draw.ellipse((cx + hw - ear * 0.6, cy - ear, cx + hw + ear * 0.6, cy + ear), fill=person.skin)
    draw.ellipse((cx - hw, cy - hh, cx + hw, cy + hh), fill=person.skin)
    if person.beard:
        draw.chord((cx - hw, cy - hh, cx + hw, cy + hh), 20, 160, fill=hair)
    top = cy - hh
    if person.hair_style in (0, 1, 2):
        draw.chord((cx - hw - 2, top - person.hair_volume * c, cx + hw + 2, cy + hh * 0.2), 180, 360, fill=hair)
    if person.hair_style == 2:  # fringe
        draw.rectangle((cx - hw * 0.8 + shift, top + 0.02 * c, cx + hw * 0.5 + shift, cy - hh * 0.45), fill=hair)
    if person.hat is not None:
        draw.rectangle((cx - hw * 1.1, top - 0.12 * c, cx + hw * 1.1, top + 0.04 * c), fill=person.hat)
    eye_y = cy + person.eye_y * c
    blink = 0.25 if rng.random() < 0.12 else 1.0
    r = person.eye_r * c
    for side in (-1, 1):
        ex = cx + shift + side * person.eye_dx * c
        draw.ellipse((ex - r, eye_y - r * blink, ex + r, eye_y + r * blink), fill=(245, 245, 245))
        ir = r * 0.6
        draw.ellipse((ex - ir, eye_y - ir * blink, ex + ir, eye_y + ir * blink), fill=person.iris)
        by = eye_y - r - 0.035 * c
        tilt = side * person.brow_tilt * 0.04 * c
        draw.line((ex - r * 1.3, by + tilt, ex + r * 1.3, by - tilt), fill=tuple(v // 2 for v in hair),
                  width=max(1, int(person.brow_w * c)))
        if person.glasses is not None:
            g = r * 1.7
            draw.ellipse((ex - g, eye_y - g, ex + g, eye_y + g), outline=person.glasses, width=3)
    if person.glasses is not None:
        draw.line((cx + shift - person.eye_dx * c + r * 1.7, eye_y, cx + shift + person.eye_dx * c - r * 1.7, eye_y),
                  fill=person.glasses, width=3)
    nose_top, nose_w = eye_y + 0.02 * c, person.nose_w * c
    nose_x = cx + shift * 1.3
    shade = tuple(int(v * 0.75) for v in person.skin)
    draw.polygon([(nose_x, nose_top), (nose_x - nose_w, nose_top + person.nose_len * c),
                  (nose_x + nose_w, nose_top + person.nose_len * c)], fill=shade)
    mouth_y, mouth_w = cy + person.mouth_y * c, person.mouth_w * c
    curve = (person.mouth_curve + rng.uniform(-0.3, 0.3)) * 0.04 * c
    box = (cx + shift - mouth_w, mouth_y - abs(curve) - 2, cx + shift + mouth_w, mouth_y + abs(curve) + 2)
    if curve >= 0:  # a smile: the lower arc
        draw.arc(box, 0, 180, fill=person.lips, width=4)
    else:
        draw.arc(box, 180, 360, fill=person.lips, width=4)
    if person.mole is not None:
        mx, my = cx + shift + person.mole[0] * c, cy + person.mole[1] * c
        draw.ellipse((mx - 2.5, my - 2.5, mx + 2.5, my + 2.5), fill=(60, 35, 25))
    return face


def _light(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gain, a directional gradient and a colour cast; then blur sometimes and sensor noise."""
    pixels = np.asarray(image, dtype=np.float32)
    size = pixels.shape[0]
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gradient = 1 + rng.uniform(0, 0.5) * (np.cos(angle) * xx + np.sin(angle) * yy)
    cast = rng.uniform(0.9, 1.1, size=3)
    pixels = pixels * rng.uniform(0.65, 1.3) * gradient[..., None] * cast
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    noisy = np.asarray(out, dtype=np.float32) + rng.normal(0, rng.uniform(0, 10), size=pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def view(index: int, view_index: int) -> Image.Image:
    """View `view_index` of identity `index`: a 64 x 64 RGB image (deterministic)."""
    person = identity(index)
    rng = np.random.default_rng([SALT, index, view_index])
    face = _draw_face(person, rng)
    scale = rng.uniform(0.8, 1.15)
    roll = rng.uniform(-15, 15)
    face = face.rotate(roll, resample=Image.Resampling.BILINEAR, center=(_CANVAS / 2, _CANVAS / 2))
    side = max(8, round(_CANVAS * scale))
    face = face.resize((side, side), Image.Resampling.BILINEAR)
    canvas = _background(rng, _CANVAS).convert("RGBA")
    dx, dy = (rng.uniform(-0.07, 0.07, size=2) * _CANVAS).round().astype(int)
    canvas.alpha_composite(face, (int((_CANVAS - side) / 2 + dx), int((_CANVAS - side) / 2 + dy))) if side <= _CANVAS \
        else canvas.alpha_composite(_crop_centre(face, _CANVAS, dx, dy))
    small = canvas.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return _light(small, rng)


def _crop_centre(face: Image.Image, size: int, dx: int, dy: int) -> Image.Image:
    """A face scaled beyond the canvas: its centre `size` pixels, moved by (dx, dy)."""
    left = (face.width - size) // 2 - dx
    top = (face.height - size) // 2 - dy
    return face.crop((left, top, left + size, top + size))


def views(identities: Sequence[int], per_identity: int, first_view: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """`per_identity` views of each identity, in order; targets are identity numbers."""
    images = [view(i, first_view + v) for i in identities for v in range(per_identity)]
    targets = np.repeat(np.asarray(identities, dtype=np.int64), per_identity)
    return images, targets


DESCRIPTION = (
    "generated identities (training.data.identities): procedurally drawn faces, each identity seen under "
    "varied roll (+-15 deg), yaw, scale (0.8-1.15), position, expression, lighting, background, blur and noise"
)
