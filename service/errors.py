"""One error type and one JSON envelope for every failure the service reports on purpose.

`{"error": {"code": "image_too_large", "message": "...", "request_id": "..."}}`. Codes are stable,
short snake_case strings that clients can branch on; messages are for humans and say what to change.
"""

from __future__ import annotations

from pydantic import BaseModel


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
    return StrideError(408, "body_timeout", f"the client sent no request body data for {seconds:g} s")


def payload_too_large(limit_bytes: int) -> StrideError:
    return StrideError(413, "payload_too_large",
                       f"the request body is larger than the limit of {limit_bytes} bytes")


def image_too_large(width: int, height: int, limit_pixels: int) -> StrideError:
    return StrideError(413, "image_too_large",
                       f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                       f"{limit_pixels} pixels; downscale it before sending")


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


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    """The envelope of every error response."""

    error: ErrorBody
