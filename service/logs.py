"""Structured logs: one JSON object per line, with the request context a log line carries."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes without flushing each line; the listener flushes once its queue is drained, so a burst of
    access-log lines costs one write instead of one per request."""

    def flush_if_idle(self, idle: bool) -> None:
        if idle:
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)


class _Listener(logging.handlers.QueueListener):
    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        for handler in self.handlers:
            if isinstance(handler, BatchedStreamHandler):
                handler.flush_if_idle(self.queue.empty())


_listener: _Listener | None = None


def configure_logging(level: str) -> None:
    """JSON lines on stderr, formatted and written by a background thread: request handling only enqueues."""
    global _listener
    if _listener is not None:
        _listener.stop()
    handler = BatchedStreamHandler()
    handler.setFormatter(JsonFormatter())
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = _Listener(records, handler, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Stride writes its own access log line with the request id; uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").disabled = True


def drain_logging() -> None:
    """At shutdown: write out every queued line, then log directly, so nothing is lost when the process
    exits (uvicorn re-raises SIGTERM after its shutdown, and atexit handlers do not run then)."""
    global _listener
    if _listener is None:
        return
    _listener.stop()
    _listener = None
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
