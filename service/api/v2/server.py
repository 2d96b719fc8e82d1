"""Server-level answers shared by REST and gRPC: identity, extensions, liveness and readiness."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.api.v2.schemas import ServerMetadataResponse
from service.workers import every_worker_ready

SERVER_NAME = "stride"
# Triton's names for the protocol extensions Stride implements.
EXTENSIONS = ["binary_tensor_data"]


def server_metadata() -> ServerMetadataResponse:
    return ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


def server_ready(state: Any) -> bool:
    """The same answer as /health/ready: loading finished, a model usable, and not draining."""
    ok, _ = state.registry.readiness()
    return ok and not state.draining and every_worker_ready(state)[0]
