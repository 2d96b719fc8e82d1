"""`format=png|jpeg`: the answer drawn on the original (upright) image instead of JSON.

The picture is drawn from the same pydantic answer the JSON route would send (service.tasks.drawing), on
the image decoded again at full size in colour, so what is drawn is exactly what the JSON says. It takes
one image per request: several pictures have no single-response encoding that clients read easily.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated

from fastapi import Query
from pydantic import BaseModel

from service.errors import StrideError
from service.imaging import decode_image
from service.payload import ImageSource
from service.tasks.drawing import MEDIA_TYPES, draw_answer, encode_image

ANSWER_FORMATS = ("json", *MEDIA_TYPES)

Format = Annotated[str, Query(description="json (default), or png / jpeg: the original image with the answer "
                                          "drawn on it (one image per request)")]


def check_format(fmt: str) -> None:
    if fmt not in ANSWER_FORMATS:
        raise StrideError(400, "invalid_format", "parameter 'format' must be one of json, png or jpeg "
                                                  "(png and jpeg answer with the picture, the answer drawn on it)")


def check_one_image(fmt: str, sources: list[ImageSource]) -> None:
    if fmt != "json" and len(sources) != 1:
        raise StrideError(400, "one_image_per_picture", f"format={fmt} answers with one picture: send one image "
                                                        f"per request (this one has {len(sources)}), or ask for json")


def drawing(source: ImageSource, fmt: str, max_pixels: int,
            to_answer: Callable[..., BaseModel]) -> Callable[..., bytes]:
    """A `finish` for the engine: the JSON answer drawn on the full-size colour image, encoded as `fmt`."""

    def finish(result: object) -> bytes:
        answer = to_answer(result)
        unbudgeted = dataclasses.replace(source, budget=None)  # the request's pixel budget was charged once
        original = decode_image(unbudgeted.load(), mode="RGB", max_pixels=max_pixels)
        return encode_image(draw_answer(original.image, answer), fmt)  # type: ignore[arg-type]

    return finish


def media_type(fmt: str) -> str:
    return MEDIA_TYPES[fmt]
