"""STRIDE_WORKERS=2: real `python -m service` processes, and every feature still working across workers."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from service.workers import WorkerBoard
from tests.conftest import png_bytes
from tests.service.test_server_process import free_port, get_json

WORKERS = 2
START_TIMEOUT_S = 120  # two workers loading on a shared 2-core machine


@dataclass
class Workers:
    base: str
    grpc_port: int
    process: subprocess.Popen
    log: Path
    models: Path

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]


def start_workers(models: Path, log: Path, **env: str) -> Workers:
    port, grpc_port = free_port(), free_port()
    environment = os.environ | {"STRIDE_WORKERS": str(WORKERS), "STRIDE_PORT": str(port), "STRIDE_HOST": "127.0.0.1",
                                "STRIDE_GRPC_PORT": str(grpc_port), "STRIDE_MODELS_DIR": str(models),
                                "STRIDE_PROVIDERS": "CPUExecutionProvider", "STRIDE_WATCH_SETTLE_MS": "50"} | env
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, "-m", "service"], env=environment, stdout=output,
                                   stderr=subprocess.STDOUT)
    server = Workers(f"http://127.0.0.1:{port}", grpc_port, process, log, models)
    poll_until(lambda: ready_status(server) == 200, START_TIMEOUT_S, server, "the workers did not become ready")
    return server


def ready_status(server: Workers) -> int | None:
    try:
        return get_json(server.base + "/health/ready")[0]
    except OSError:
        return None


def poll_until(condition: Callable[[], bool], timeout_s: float, server: Workers, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}\n{server.log.read_text()[-4000:]}")
        time.sleep(0.05)


def stop(server: Workers) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise


def worker_pids(server: Workers) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return {int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def classify(server: Workers, image: bytes) -> int:
    request = urllib.request.Request(server.base + "/v1/classify", data=image, headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # a new connection each time
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series of /metrics; 0 when absent."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return 0.0


def scrape(server: Workers) -> str:
    with urllib.request.urlopen(server.base + "/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    from tests.conftest import TINY_SPEC, golden_for, tiny_classifier_graph, tiny_metadata, write_model

    models = tmp_path_factory.mktemp("worker-models")  # as tiny_model_dir, for the whole module
    graph = tiny_classifier_graph()
    goldens = [Image.new("L", (8, 8), v) for v in (0, 128, 255)]
    write_model(models / "tiny.onnx", graph, tiny_metadata(golden=golden_for(graph, TINY_SPEC, goldens)))
    server = start_workers(models, tmp_path_factory.mktemp("worker-logs") / "server.log",
                           STRIDE_DRAIN_DELAY_S="0")
    yield server
    stop(server)


def test_requests_reach_both_workers_and_metrics_add_up(workers: Workers) -> None:
    image = png_bytes(Image.new("L", (16, 16), 255))
    before = scrape(workers)
    sent = 40
    assert [classify(workers, image) for _ in range(sent)] == [200] * sent
    text = scrape(workers)

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("stride_requests_total", route="/v1/classify", status="200") == sent  # counters: summed
    assert grew("stride_request_duration_seconds_count", route="/v1/classify") == sent  # histograms: summed
    assert metric(text, "stride_model_ready", model="tiny") == 1.0  # gauge: min over live workers
    # gauge: sum over live workers, copied from each worker's batcher every FUNCTION_GAUGE_REFRESH_S
    poll_until(lambda: metric(scrape(workers), "stride_inflight_requests", model="tiny") == 0.0, 10, workers,
               "in-flight requests did not return to 0")
    assert metric(text, "stride_model_loads_total", model="tiny", outcome="ready") == WORKERS  # one per worker
    served_by = {line.get("worker") for line in workers.log_lines() if line.get("route") == "/v1/classify"}
    assert served_by == set(range(WORKERS)), "SO_REUSEPORT should spread 40 new connections over both workers"


def test_grpc_port_is_served_by_the_workers(workers: Workers) -> None:
    import tritonclient.grpc as grpcclient

    for _ in range(4):  # a new channel each time: the kernel may pick either worker
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{workers.grpc_port}")
        try:
            assert client.is_server_ready() and client.is_model_ready("tiny")
        finally:
            client.close()


def test_collections_in_local_mode_are_refused_with_workers(workers: Workers) -> None:
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(workers.base + "/v1/collections", timeout=10)
    body = json.load(answer.value)
    assert answer.value.code == 503
    assert "STRIDE_QDRANT_URL" in body["error"]["message"] and "STRIDE_WORKERS" in body["error"]["message"]


def test_a_new_model_file_reaches_every_worker(workers: Workers) -> None:
    shutil.copy(workers.models / "tiny.onnx", workers.models / "tiny2.onnx")
    poll_until(lambda: metric(scrape(workers), "stride_model_loads_total", model="tiny2", outcome="ready") == WORKERS,
               60, workers, "the new model was not loaded by every worker")
    assert get_json(workers.base + "/health/ready")[0] == 200


def test_the_reload_endpoint_reaches_every_worker(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_workers(tiny_model_dir, tmp_path / "server.log", STRIDE_DRAIN_DELAY_S="0",
                           STRIDE_WATCH_MODELS="false")  # only the endpoint can make a worker load the new file
    try:
        shutil.copy(tiny_model_dir / "tiny.onnx", tiny_model_dir / "fresh.onnx")
        request = urllib.request.Request(server.base + "/v1/models/reload", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:  # answered by one worker
            assert any(change["model"] == "fresh" for change in json.load(response)["changes"])
        poll_until(lambda: metric(scrape(server), "stride_model_loads_total", model="fresh", outcome="ready")
                   == WORKERS, 60, server, "the reload did not reach every worker")
    finally:
        stop(server)


def test_a_killed_worker_is_replaced_and_readiness_waits_for_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = start_workers(tiny_model_dir, tmp_path / "server.log", STRIDE_DRAIN_DELAY_S="0")
    try:
        original = worker_pids(server)
        assert len(original) == WORKERS
        victim = min(original)
        os.kill(victim, signal.SIGKILL)
        poll_until(lambda: ready_status(server) == 503, 30, server, "readiness stayed 200 with a worker dead")
        poll_until(lambda: len(worker_pids(server) - original) == 1 and ready_status(server) == 200, 90, server,
                   "the dead worker was not replaced")
        assert victim not in worker_pids(server)
        image = png_bytes(Image.new("L", (16, 16), 255))
        assert [classify(server, image) for _ in range(10)] == [200] * 10
    finally:
        stop(server)


def test_sigterm_drains_every_worker_without_failing_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    """As tests/service/test_server_process.py's drain test, with two workers."""
    drain = 2.0
    server = start_workers(tiny_model_dir, tmp_path / "server.log", STRIDE_DRAIN_DELAY_S=str(drain),
                           STRIDE_ACCESS_LOG="false")
    image = png_bytes(Image.new("L", (16, 16), 255))
    outcomes: list[tuple[float, str]] = []
    stop_load = threading.Event()

    def load() -> None:
        while not stop_load.is_set():
            sent = time.monotonic()
            try:
                status = classify(server, image)
                outcomes.append((sent, "ok" if status == 200 else f"HTTP {status}"))
            except OSError as exc:
                outcomes.append((sent, f"connection: {exc}"))
                stop_load.wait(0.01)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(outcomes) < 20 and time.monotonic() < deadline:  # under load before the signal
        stop_load.wait(0.05)
    sigterm_at = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    poll_until(lambda: ready_status(server) == 503, drain, server, "readiness did not turn 503 when draining")
    server.process.wait(timeout=90)
    stop_load.set()
    for thread in threads:
        thread.join(timeout=30)

    drain_ended = sigterm_at + drain
    before = [outcome for sent, outcome in outcomes if sent < drain_ended - 0.25]
    failed = [outcome for outcome in before if outcome != "ok"]
    assert len(before) > 20, "the load generator sent too few requests to prove anything"
    assert not failed, f"{len(failed)} of {len(before)} requests sent before the drain ended failed: {failed[:3]}"
    assert server.process.returncode == 0
    stopped = [line for line in server.log.read_text().splitlines() if "Application shutdown complete" in line]
    assert {json.loads(line)["worker"] for line in stopped} == set(range(WORKERS))


def test_a_taken_port_is_a_clear_error(tiny_model_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = os.environ | {"STRIDE_WORKERS": "2", "STRIDE_PORT": str(port), "STRIDE_HOST": "127.0.0.1",
                                    "STRIDE_MODELS_DIR": str(tiny_model_dir)}
        done = subprocess.run([sys.executable, "-m", "service"], env=environment, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 2
    assert f"cannot bind the HTTP port {port}" in done.stderr and "another server is using it" in done.stderr


# --- the worker board, in one process --------------------------------------------------------------


def test_board_is_ready_only_when_every_slot_holds_a_live_ready_worker(tmp_path: Path) -> None:
    board = WorkerBoard(tmp_path, workers=2)
    assert board.readiness() == (False, "worker 0 is starting")
    board.publish(0, True, "ok")
    board.publish(1, False, "models are still loading")
    assert board.readiness() == (False, f"worker 1 (pid {os.getpid()}): models are still loading")
    board.publish(1, True, "ok")
    assert board.readiness() == (True, "ok")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    board.slot_file(1).write_text(json.dumps({"pid": int(dead.stdout), "ready": True, "reason": "ok"}))
    assert board.readiness()[1].endswith("died; its replacement is starting")


def test_a_reload_announced_once_is_seen_by_every_reader(tmp_path: Path) -> None:
    board = WorkerBoard(tmp_path, workers=2)
    assert board.reload_generation() == 0
    assert [board.announce_reload() for _ in range(3)] == [1, 2, 3]
    assert WorkerBoard(tmp_path, workers=2).reload_generation() == 3  # another worker's view
