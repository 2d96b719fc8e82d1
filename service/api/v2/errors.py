"""The protocol's errors: `{"error": "<message>"}` with the status, as StrideErrors so that REST and gRPC
report the same failures (gRPC maps the status to its own codes in service/grpc/server.py)."""

from __future__ import annotations

from collections.abc import Container
from typing import NoReturn

from pydantic import BaseModel

from service.errors import StrideError, public_message


class ProtocolError(BaseModel):
    """The body of every /v2 error response, as the Open Inference Protocol defines it."""

    error: str


def error_body(error: StrideError) -> ProtocolError:
    return ProtocolError(error=public_message(error.message))


def invalid_request(message: str) -> StrideError:
    """Anything wrong with the request's tensors or their encoding: the client must change the request."""
    return StrideError(400, "invalid_inference_request", message)


def fail(message: str) -> NoReturn:
    raise invalid_request(message)


def version_not_found(model: str, version: str, served: str) -> StrideError:
    return StrideError(404, "model_version_not_found",
                       f"model '{model}' has no version '{version}'; this server has version '{served}' "
                       f"(or leave the version out)")


# Protocol extensions Stride does not implement, refused by name instead of being silently ignored.
_SHARED_MEMORY = ("the shared-memory extension is not supported: send the tensor in the request "
                  "(JSON data or the binary data extension)")
UNSUPPORTED_PARAMETERS = {
    "classification": "the classification extension is not supported: ask for the output tensor, or use "
                      "/v1/classify for top-k labels",
    "shared_memory_region": _SHARED_MEMORY,
    "shared_memory_byte_size": _SHARED_MEMORY,
    "shared_memory_offset": _SHARED_MEMORY,
}


def refuse_unsupported_parameters(where: str, parameters: Container[str]) -> None:
    for name, reason in UNSUPPORTED_PARAMETERS.items():
        if name in parameters:
            fail(f"{where}: {reason}")
