"""One error type and one JSON envelope for every failure the service reports on purpose.

`{"error": {"code": "image_too_large", "message": "...", "request_id": "..."}}`. Codes are stable,
short snake_case strings that clients can branch on; messages are for humans and say what to change.
"""

from __future__ import annotations

import functools
import json
import os
import re

from pydantic import BaseModel

# The answer to a request whose body was not read to its end: the connection cannot carry another request.
_CLOSE = {"Connection": "close"}

# Messages are capped: a parameter value echoed back can be as long as the URL.
MAX_MESSAGE_CHARS = 1000
_MARKUP = re.compile(r"<[^>]*>?|>")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?P<top>[\w.-]+)(?:/[\w.@+-]+)*/(?P<name>[\w.@+-]+)")


class StrideError(Exception):
    """A request failure with an HTTP status, a stable code and an actionable message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def empty_body() -> StrideError:
    return StrideError(400, "empty_body", "the request carries no image: send it as multipart field "
                       "'file', as the raw body with an image/* content type, or as JSON {\"image\": base64}")


def not_an_image(detail: str) -> StrideError:
    return StrideError(400, "not_an_image", f"the data is not a recognised image: {detail}")


def corrupt_image(detail: str) -> StrideError:
    return StrideError(400, "corrupt_image", f"the image is truncated or corrupt: {detail}")


def bad_request(code: str, message: str) -> StrideError:
    return StrideError(400, code, message)


def unsupported_media_type(content_type: str) -> StrideError:
    return StrideError(
        415,
        "unsupported_media_type",
        f"content type '{content_type}' is not accepted; use multipart/form-data with a 'file' field, "
        "a raw image/* body, or application/json {\"image\": base64}",
    )


def unsupported_image_format(fmt: str, allowed: list[str]) -> StrideError:
    return StrideError(415, "unsupported_image_format",
                       f"image format {fmt} is not supported; send one of {', '.join(allowed)}")


def unauthorized() -> StrideError:
    return StrideError(401, "unauthorized", "a valid API key is required: send it as X-API-Key or "
                       "'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})


def body_timeout(seconds: float) -> StrideError:
    return StrideError(408, "body_timeout", f"the client sent no request body data for {seconds:g} s",
                       headers=dict(_CLOSE))


def header_timeout(seconds: float) -> StrideError:
    return StrideError(408, "header_timeout", f"the request headers did not arrive within {seconds:g} s",
                       headers=dict(_CLOSE))


def body_too_slow(min_bytes_per_s: int) -> StrideError:
    return StrideError(408, "body_too_slow", f"the request body arrived slower than the minimum of "
                       f"{min_bytes_per_s} bytes/s; send it faster or from closer", headers=dict(_CLOSE))


def payload_too_large(limit_bytes: int) -> StrideError:
    return StrideError(413, "payload_too_large",
                       f"the request body is larger than the limit of {limit_bytes} bytes", headers=dict(_CLOSE))


def image_too_large(width: int, height: int, limit_pixels: int) -> StrideError:
    return StrideError(413, "image_too_large",
                       f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                       f"{limit_pixels} pixels; downscale it before sending")


def request_pixels_over_budget(pixels: int, limit_pixels: int) -> StrideError:
    return StrideError(413, "request_too_large",
                       f"the request's images hold {pixels} pixels together, over the per-request budget of "
                       f"{limit_pixels} (STRIDE_MAX_REQUEST_PIXELS); send fewer or smaller images per request")


def model_not_found(name: str, available: list[str]) -> StrideError:
    listing = ", ".join(available) if available else "none"
    return StrideError(404, "model_not_found", f"no model named '{name}'; available models: {listing}")


def no_model_for_task(task: str) -> StrideError:
    return StrideError(404, "model_not_found", f"no {task} model is loaded; put one in the models directory")


def wrong_task(model: str, task: str, wanted: list[str]) -> StrideError:
    return StrideError(400, "wrong_task", f"model '{model}' is a {task} model; this endpoint needs a "
                       f"{' or '.join(wanted)} model (see GET /v1/models)")


def invalid_parameter(name: str, message: str) -> StrideError:
    return StrideError(422, "invalid_parameter", f"parameter '{name}': {message}")


def model_unavailable(name: str, reason: str) -> StrideError:
    return StrideError(503, "model_unavailable", f"model '{name}' is not usable: {reason}",
                       headers={"Retry-After": "5"})


def not_ready(reason: str) -> StrideError:
    return StrideError(503, "not_ready", f"the service is not ready: {reason}", headers={"Retry-After": "1"})


def overloaded(model: str, limit: int) -> StrideError:
    return StrideError(503, "overloaded", f"model '{model}' already has {limit} requests in flight; retry shortly",
                       headers={"Retry-After": "1"})


def timed_out_in_queue() -> StrideError:
    return StrideError(504, "timeout", "the request's deadline passed while it waited for inference")


def timed_out(seconds: float) -> StrideError:
    return StrideError(504, "timeout", f"the request did not finish within {seconds:g} s")


def public_message(message: str) -> str:
    """A message fit to send: markup removed (error bodies may end up in a page), absolute paths on this
    machine cut to their last part (they tell an attacker the layout and a user nothing), length capped."""
    without_markup = _MARKUP.sub("", message)
    without_paths = _ABSOLUTE_PATH.sub(_path_to_name, without_markup)
    if len(without_paths) > MAX_MESSAGE_CHARS:
        return without_paths[: MAX_MESSAGE_CHARS - 3] + "..."
    return without_paths


def _path_to_name(match: re.Match[str]) -> str:
    # Only paths rooted in a real top-level directory are paths on this machine; /v1/detect is a route.
    return match["name"] if match["top"] in _top_level_directories() else match[0]


@functools.cache
def _top_level_directories() -> frozenset[str]:
    try:
        return frozenset(entry.name for entry in os.scandir("/") if entry.is_dir())
    except OSError:
        return frozenset()


def envelope(code: str, message: str, request_id: str) -> dict[str, dict[str, str]]:
    """The JSON body of every error response: the one place the envelope is built."""
    return {"error": {"code": code, "message": public_message(message), "request_id": request_id}}


OPEN_INFERENCE_PREFIX = "/v2"


def body_for_path(path: str, code: str, message: str, request_id: str) -> bytes:
    """The error body a client of `path` reads: the Open Inference Protocol's `{"error": "..."}` under /v2
    (what tritonclient and KServe parse), Stride's envelope everywhere else."""
    if path == OPEN_INFERENCE_PREFIX or path.startswith(OPEN_INFERENCE_PREFIX + "/"):
        return json.dumps({"error": public_message(message)}).encode()
    return json.dumps(envelope(code, message, request_id)).encode()


def client_disconnected() -> StrideError:
    # 499 is nginx's "client closed request": nobody reads the answer, it is only logged and counted.
    return StrideError(499, "client_disconnected", "the client closed the connection before the answer")


def unknown_parameters(unknown: list[str], accepted: list[str]) -> StrideError:
    listing = ", ".join(accepted) if accepted else "none"
    return StrideError(400, "unknown_parameter", f"unknown query parameter(s) {', '.join(unknown)}; this "
                       f"endpoint accepts: {listing}")


def internal_error() -> StrideError:
    return StrideError(500, "internal_error", "an internal error occurred; it has been logged",
                       headers=dict(_CLOSE))


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    """The envelope of every error response."""

    error: ErrorBody
