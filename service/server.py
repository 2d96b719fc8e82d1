"""uvicorn as Stride runs it: hardened connections and a graceful drain.

`uvicorn_config` is the one place the server is configured: no `server` banner, the keep-alive and
graceful-shutdown timeouts, and a header-read deadline (uvicorn has none: a slowloris client that trickles
header bytes would hold its connection forever).

Drain: on SIGTERM, readiness turns 503 at once while requests are still served for `drain_delay_s` (so load
balancers and Kubernetes endpoints stop sending), each answer saying `Connection: close` (the middleware
reads `app.state.draining`), then uvicorn stops accepting connections, lets in-flight requests finish and
exits. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import errors
from service.config import Settings

log = logging.getLogger(__name__)


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=header_deadline_protocol(settings.header_read_timeout_s),
        log_config=None,  # keep our JSON logging
        access_log=False,  # Stride writes its own access line, with the request id
        server_header=False,  # the software and its version only help an attacker pick an exploit
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.request_timeout_s + 5,
    )


def header_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, closing a connection that has not sent a request's complete headers
    within `timeout_s` of opening or of its previous answer (a 408 in the JSON envelope, then close)."""

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._disarm_header_deadline()
            self._header_deadline = self.loop.call_later(timeout_s, self._on_header_deadline)

        def _disarm_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _on_header_deadline(self) -> None:
            self._header_deadline = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if busy or self.transport.is_closing():  # a pipelined request is being answered: not idle
                return
            self.transport.write(_header_timeout_response(timeout_s))
            self.transport.close()

    return HeaderDeadlineProtocol


def _header_timeout_response(timeout_s: float) -> bytes:
    error = errors.header_timeout(timeout_s)
    body = json.dumps(errors.envelope(error.code, error.message, "")).encode()
    head = (f"HTTP/1.1 {error.status} Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n")
    return head.encode() + body


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_delay_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_delay_s = drain_delay_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._drain_delay_s <= 0:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._app.state.draining = True
        log.info("draining: readiness is 503; still serving for %.1fs", self._drain_delay_s,
                 extra={"signal": sig})
        timer = threading.Timer(self._drain_delay_s, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()
