"""uvicorn with a graceful drain: on SIGTERM, readiness turns 503 at once while requests are still
served for `drain_delay_s` (so load balancers and Kubernetes endpoints stop sending), then uvicorn stops
accepting connections, lets in-flight requests finish and exits. A second signal exits at once.
"""

from __future__ import annotations

import logging
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


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
