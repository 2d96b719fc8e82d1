"""Where the image is in a request: multipart field `file`, a raw image/* body, or JSON {"image": base64}.

Only reading the body happens here, on the event loop; decoding waits for the worker thread.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from service import errors
from service.payload import ImageSource, PixelBudget

RAW_TYPES = ("application/octet-stream",)


async def read_image_sources(request: Request, max_images: int) -> list[ImageSource]:
    """The request's images, in order: several only from repeated multipart `file` fields."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        sources = await _from_multipart(request, max_images)
    else:
        sources = [await _from_body(request, content_type)]
    # Image sizes are read from the headers in the worker threads (the event loop never decodes).
    budget = PixelBudget(request.app.state.settings.max_request_pixels)
    return [ImageSource(source.payload, source.encoding, budget) for source in sources]


async def _from_body(request: Request, content_type: str) -> ImageSource:
    body = await request.body()
    if not content_type:
        if not body:
            raise errors.empty_body()
        raise errors.unsupported_media_type("(none)")
    if content_type.startswith("image/") or content_type in RAW_TYPES:
        if not body:
            raise errors.empty_body()
        return ImageSource(body, "binary")
    if content_type == "application/json" or content_type.endswith("+json"):
        if not body:
            raise errors.empty_body()
        return ImageSource(body, "json")
    raise errors.unsupported_media_type(content_type)


async def _from_multipart(request: Request, max_images: int) -> list[ImageSource]:
    try:
        form = await request.form(max_files=max_images, max_fields=max_images + 16)
    except (errors.StrideError, ClientDisconnect):
        raise
    except Exception as exc:  # the multipart parser raises several types for malformed bodies or too many parts
        raise errors.bad_request("invalid_multipart", f"the multipart body could not be parsed: {exc}") from exc
    try:
        fields = form.getlist("file")
        if not fields:
            raise errors.bad_request("missing_file", "multipart body has no 'file' field holding the image")
        sources = []
        for field in fields:
            data = await field.read() if isinstance(field, UploadFile) else field.encode()
            if not data:
                raise errors.empty_body()
            sources.append(ImageSource(data, "binary"))
        return sources
    finally:
        await form.close()
