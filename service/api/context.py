"""Per-request context kept in the ASGI scope's state: the request id and the model the route used."""

from __future__ import annotations

from starlette.requests import Request


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def tag_model(request: Request, name: str) -> None:
    """Record the model a request was routed to, for metrics and the access log."""
    request.scope.setdefault("state", {})["model"] = name
