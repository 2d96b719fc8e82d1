"""Several server processes on one port (STRIDE_WORKERS > 1): every core busy, each worker a whole Stride.

A supervisor (the process `python -m service` starts) spawns the workers and does nothing else: each
worker is a complete server (its own ONNX Runtime sessions, batchers, thread pool, model watcher and gRPC
server), so one process's GIL no longer caps the machine. The workers share:

- the port: each binds its own socket with SO_REUSEPORT and the kernel spreads new connections over them
  evenly (measured against one shared listening socket, uvicorn's and gunicorn's model, where the worker
  that wakes first takes the connection: docs/performance.md, "Worker processes"). gRPC's port likewise;
- a run directory: prometheus-client's multiprocess files (service/metrics.py), and one small file per
  worker slot saying whether that worker is ready, so /health/ready, answered by any worker, is 200 only
  when every worker is ready; and a reload generation that a reload in one worker bumps and every worker
  follows (`tell_other_workers_to_reload`). A change in the models directory reaches every worker anyway: each runs
  its own watcher (service/lifecycle.py).

State a request may change is shared or refused: collections in Qdrant's local mode belong to one process,
so with several workers /v1/collections answers 503 saying to set STRIDE_QDRANT_URL (a shared Qdrant
server) or STRIDE_WORKERS=1 (service/collections/runner.py).

SIGTERM (or SIGINT) to the supervisor is passed to every worker, which drains as a single server does
(service/server.py); a second signal is passed on too and ends them at once. A worker that dies is
replaced in its slot (its live gauges are dropped first); one that fails during start-up (a port taken,
settings refused) stops the whole server instead, since its replacement would fail the same way.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from uvicorn.config import STARTUP_FAILURE

from service.config import Settings
from service.metrics import MULTIPROC_DIR_ENV

log = logging.getLogger(__name__)

ListenMode = Literal["reuseport", "shared"]

# How often a worker re-publishes its readiness and looks for a reload announced by another worker.
BOARD_POLL_S = 0.2
# A worker that dies sooner than this after its start is restarted only after this long (no crash loop).
MIN_WORKER_LIFETIME_S = 2.0
# After the drain and the graceful shutdown (request timeout + 5 s), how long stragglers get before SIGKILL.
STOP_MARGIN_S = 15.0


class WorkersRefused(ValueError):
    """Settings that cannot work with several workers (a port taken): said before any worker starts."""


# --- the run directory shared by the workers -----------------------------------------------------


@dataclass(frozen=True)
class WorkerBoard:
    """Files in the supervisor's run directory: one per worker slot (its pid and readiness), and the
    reload generation. Written atomically (rename), read by any worker."""

    run_dir: Path
    workers: int

    def slot_file(self, slot: int) -> Path:
        return self.run_dir / f"worker-{slot}.json"

    def publish(self, slot: int, ready: bool, reason: str) -> None:
        _write_atomically(self.slot_file(slot), json.dumps({"pid": os.getpid(), "ready": ready, "reason": reason}))

    def forget(self, slot: int) -> None:
        self.slot_file(slot).unlink(missing_ok=True)

    def readiness(self) -> tuple[bool, str]:
        """(True, "ok") when every slot holds a live, ready worker; else the first reason it is not."""
        for slot in range(self.workers):
            try:
                state = json.loads(self.slot_file(slot).read_text())
            except (OSError, ValueError):
                return False, f"worker {slot} is starting"
            if not _alive(state["pid"]):
                return False, f"worker {slot} (pid {state['pid']}) died; its replacement is starting"
            if not state["ready"]:
                return False, f"worker {slot} (pid {state['pid']}): {state['reason']}"
        return True, "ok"

    @property
    def reload_file(self) -> Path:
        return self.run_dir / "reload-generation"

    def reload_generation(self) -> int:
        try:
            return int(self.reload_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    def announce_reload(self) -> int:
        """Bump the reload generation (under a lock: two workers may announce at once); every worker,
        this one included, reloads when it sees the new value."""
        import fcntl

        with open(self.run_dir / "reload.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.reload_generation() + 1
            _write_atomically(self.reload_file, str(generation))
        return generation


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def every_worker_ready(state: Any) -> tuple[bool, str]:
    """For readiness answers: (True, "ok") with one process, else what the worker board says."""
    board: WorkerBoard | None = getattr(state, "worker_board", None)
    return (True, "ok") if board is None else board.readiness()


def tell_other_workers_to_reload(state: Any) -> None:
    """After a reload asked of this worker (POST /v1/models/reload), the others do the same: announced on
    the board, each follows within BOARD_POLL_S with a sync of the whole directory (this one's own follow
    finds nothing left to do). With one process there is no one to tell."""
    board: WorkerBoard | None = getattr(state, "worker_board", None)
    if board is not None:
        board.announce_reload()


# --- one worker process ----------------------------------------------------------------------------


def _worker_main(slot: int, overrides: dict[str, Any], run_dir: str, sockets: list[socket.socket]) -> None:
    """A spawned worker: a whole Stride server, publishing its readiness in its slot."""
    from service.app import create_app
    from service.logs import configure_logging
    from service.server import DrainingServer, uvicorn_config

    settings = Settings(**overrides)
    _tag_log_records(slot)
    configure_logging(settings.log_level)
    board = WorkerBoard(Path(run_dir), settings.workers)
    board.publish(slot, False, "starting")
    try:
        app = create_app(settings)
    except Exception:  # would fail the same way in every replacement: the supervisor stops instead
        log.exception("worker %d failed to start", slot)
        raise SystemExit(STARTUP_FAILURE) from None
    app.state.worker_board = board
    threading.Thread(target=_follow_board, args=(app.state, board, slot), name="stride-worker-board",
                     daemon=True).start()
    server = DrainingServer(uvicorn_config(app, settings), app, settings.drain_delay_s)
    server.run(sockets=sockets or [reuseport_socket(settings.host, settings.port)])
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def _tag_log_records(slot: int) -> None:
    """Every log line of this worker says which worker wrote it (`"worker": slot`)."""
    make_record = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.worker = slot
        return record

    logging.setLogRecordFactory(tagged)


def _follow_board(state: Any, board: WorkerBoard, slot: int) -> None:
    """Publish this worker's readiness when it changes; run a reload another worker announced."""
    published: tuple[bool, str] | None = None
    seen_generation = board.reload_generation()
    while True:
        ok, reason = state.registry.readiness()
        if state.draining:
            ok, reason = False, "draining: the server is shutting down"
        if (ok, reason) != published:
            board.publish(slot, ok, reason)
            published = (ok, reason)
        generation = board.reload_generation()
        if generation != seen_generation:
            seen_generation = generation
            _reload(state)
        time.sleep(BOARD_POLL_S)


def _reload(state: Any) -> None:
    try:
        state.registry.sync()
    except Exception:  # a failed reload must not stop this worker from publishing its readiness
        log.exception("reloading the models failed")


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket that shares its port with the other workers' (the kernel balances)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def ensure_port_free(host: str, port: int, what: str) -> None:
    """With SO_REUSEPORT another of our own processes on the port would silently share its traffic:
    check it is free first, without the option, and say so clearly if not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise WorkersRefused(f"cannot bind the {what} port {port} on {host}: {exc.strerror}; "
                                 f"another server is using it") from exc


# --- the supervisor --------------------------------------------------------------------------------


@dataclass
class _Slot:
    process: BaseProcess
    started: float


class Supervisor:
    """Starts `settings.workers` workers, replaces the ones that die, and stops them all on a signal."""

    def __init__(self, settings: Settings, overrides: dict[str, Any], listen: ListenMode = "reuseport") -> None:
        self.settings = settings
        self.overrides = overrides
        self.listen = listen
        self._context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked ORT threads
        self._slots: dict[int, _Slot] = {}
        self._signals = 0
        self._shared_sockets: list[socket.socket] = []

    def run(self) -> int:
        self._claim_ports()
        with tempfile.TemporaryDirectory(prefix="stride-workers-") as run_dir:
            metrics_dir = Path(run_dir) / "metrics"
            metrics_dir.mkdir()
            os.environ[MULTIPROC_DIR_ENV] = str(metrics_dir)  # inherited by every worker
            self._board = WorkerBoard(Path(run_dir), self.settings.workers)
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                log.info("starting %d workers on %s:%d (%s)", self.settings.workers, self.settings.host,
                         self.settings.port, self.listen)
                for slot in range(self.settings.workers):
                    self._start(slot)
                code = self._supervise()
                self._stop_all()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                for sock in self._shared_sockets:
                    sock.close()
        return code

    def _claim_ports(self) -> None:
        if self.listen == "shared":
            import uvicorn

            self._shared_sockets = [uvicorn.Config(app=None, host=self.settings.host,  # type: ignore[arg-type]
                                                   port=self.settings.port).bind_socket()]
        else:
            ensure_port_free(self.settings.host, self.settings.port, "HTTP")
        if self.settings.grpc_port:
            ensure_port_free(self.settings.host, self.settings.grpc_port, "gRPC")

    def _start(self, slot: int) -> None:
        process = self._context.Process(
            target=_worker_main, name=f"stride-worker-{slot}",
            args=(slot, self.overrides, str(self._board.run_dir), self._shared_sockets))
        process.start()
        self._slots[slot] = _Slot(process, time.monotonic())
        log.info("worker %d started (pid %s)", slot, process.pid)

    def _supervise(self) -> int:
        """Until a signal: wait for a worker to end and replace it. Returns the exit status."""
        while not self._signals:
            sentinels = {slot.process.sentinel: index for index, slot in self._slots.items()}
            for sentinel in wait(list(sentinels), timeout=1.0):
                if self._signals:
                    break
                index = sentinels[sentinel]
                if not self._replace(index):
                    return 1
        return 0

    def _replace(self, index: int) -> bool:
        slot = self._slots[index]
        process = slot.process
        process.join()
        self._forget(index, process)
        if process.exitcode == STARTUP_FAILURE:
            log.error("worker %d failed to start (exit %s): stopping the server", index, process.exitcode)
            return False
        log.error("worker %d (pid %s) ended with exit code %s: replacing it", index, process.pid,
                  process.exitcode)
        too_soon = MIN_WORKER_LIFETIME_S - (time.monotonic() - slot.started)
        if too_soon > 0:
            time.sleep(too_soon)
        if not self._signals:
            self._start(index)
        return True

    def _forget(self, index: int, process: BaseProcess) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid, os.environ[MULTIPROC_DIR_ENV])
        self._board.forget(index)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        """First signal: every worker drains. Second: every worker stops at once (as one server does)."""
        self._signals += 1
        log.info("signal %d: passing it to %d workers", sig, len(self._slots), extra={"signal": sig})
        for slot in self._slots.values():
            if slot.process.is_alive() and slot.process.pid is not None:
                os.kill(slot.process.pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        deadline = (time.monotonic() + self.settings.drain_delay_s + self.settings.request_timeout_s + 5
                    + STOP_MARGIN_S)
        for index, slot in self._slots.items():
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error("worker %d did not stop in time: killing it", index)
                slot.process.kill()
                slot.process.join()
