"""Image payloads as they arrive: raw bytes, or a JSON document holding base64 / a data URI.

`ImageSource.load` does the potentially large base64 and JSON work; the pipeline calls it in a worker
thread, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import warnings
from dataclasses import dataclass

from PIL import Image

from service import errors

# The document is {"image": "..."}; anything deeper or a longer number is not a request, only an attack on the
# parser (Python's json recurses per level, and int() of thousands of digits is quadratic).
MAX_JSON_DEPTH = 32
MAX_JSON_NUMBER_CHARS = 64


class PixelBudget:
    """The pixels one request may decode, summed over its images; shared by its images' worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._spent = 0
        self._lock = threading.Lock()

    def charge(self, width: int, height: int) -> None:
        with self._lock:
            self._spent += width * height
            spent = self._spent
        if spent > self.limit:
            raise errors.request_pixels_over_budget(spent, self.limit)


@dataclass(frozen=True, slots=True)
class ImageSource:
    payload: bytes
    encoding: str  # "binary" or "json"
    budget: PixelBudget | None = None

    def load(self) -> bytes:
        data = self.payload if self.encoding == "binary" else image_from_json(self.payload)
        if self.budget is not None:
            size = header_size(data)
            if size is not None:
                self.budget.charge(*size)
        return data


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone, no pixel decoded; None when the header cannot be read
    (decoding then reports what is wrong with the image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # any unreadable header is decode_image's to report
        return None


def image_from_json(body: bytes) -> bytes:
    document = parse_bounded_json(body)
    encoded = document.get("image") if isinstance(document, dict) else None
    if not isinstance(encoded, str):
        raise errors.invalid_parameter("image", 'the JSON body needs {"image": "<base64 or data URI>"}')
    if encoded.startswith("data:"):
        header, _, encoded = encoded.partition(",")
        if ";base64" not in header:
            raise errors.bad_request("invalid_base64", "data URIs must be base64-encoded (';base64,')")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.bad_request("invalid_base64", f"the 'image' value is not valid base64: {exc}") from exc
    if not data:
        raise errors.empty_body()
    return data


def parse_bounded_json(body: bytes) -> object:
    """json.loads with the nesting depth and number length bounded; every failure is a 400 invalid_json."""
    # Counting brackets runs at memory speed; only a body with many of them needs the exact scan.
    brackets = body.count(b"[") + body.count(b"{")
    depth = _nesting_depth(body) if brackets > MAX_JSON_DEPTH else brackets
    if depth > MAX_JSON_DEPTH:
        raise errors.bad_request("invalid_json", f"the JSON body nests {depth} levels deep, over the limit of "
                                 f"{MAX_JSON_DEPTH}; send {{\"image\": \"<base64>\"}}")
    try:
        return json.loads(body, parse_int=_bounded_int, parse_float=_bounded_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.bad_request("invalid_json", f"the body is not valid JSON: {exc}") from exc


def _nesting_depth(body: bytes) -> int:
    """Deepest bracket nesting, counting brackets outside strings only: linear and never recursive."""
    deepest = depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _bounded_number(text: str) -> None:
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise errors.bad_request("invalid_json", f"the JSON body holds a number of {len(text)} characters, over "
                                 f"the limit of {MAX_JSON_NUMBER_CHARS}")


def _bounded_int(text: str) -> int:
    _bounded_number(text)
    return int(text)


def _bounded_float(text: str) -> float:
    _bounded_number(text)
    return float(text)
