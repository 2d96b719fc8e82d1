"""Image payloads as they arrive: raw bytes, or a JSON document holding base64 / a data URI.

`ImageSource.load` does the potentially large base64 and JSON work; the pipeline calls it in a worker
thread, never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from service import errors


@dataclass(frozen=True, slots=True)
class ImageSource:
    payload: bytes
    encoding: str  # "binary" or "json"

    def load(self) -> bytes:
        if self.encoding == "binary":
            return self.payload
        return image_from_json(self.payload)


def image_from_json(body: bytes) -> bytes:
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.bad_request("invalid_json", f"the body is not valid JSON: {exc}") from exc
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
