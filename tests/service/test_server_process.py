"""Start the real server the way `make serve` does (`python -m service`) and POST a PNG to it."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import png_bytes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def start_server(models_dir: Path, **env: str) -> tuple[str, subprocess.Popen]:
    """`python -m service` with STRIDE_* settings from the environment, once /health/ready says 200."""
    port = free_port()
    environment = os.environ | {"STRIDE_PORT": str(port), "STRIDE_MODELS_DIR": str(models_dir),
                                "STRIDE_HOST": "127.0.0.1"} | env
    process = subprocess.Popen([sys.executable, "-m", "service"], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if get_json(base + "/health/ready")[0] == 200:
                return base, process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not become ready:\n{process.communicate()[0]}")
        time.sleep(0.1)


@pytest.fixture
def server(tiny_model_dir: Path):
    base, process = start_server(tiny_model_dir, STRIDE_DRAIN_DELAY_S="0")  # no drain: fast teardown
    try:
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_real_server_classifies_a_posted_png(server) -> None:
    base, _ = server
    request = urllib.request.Request(base + "/v1/classify?top_k=1", data=png_bytes(Image.new("L", (16, 16), 255)),
                                     headers={"Content-Type": "image/png", "X-Request-ID": "proc-1"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.load(response)
        assert response.headers["X-Request-ID"] == "proc-1"
    assert body["predictions"][0]["label"] == "bright"
    status, models = get_json(base + "/v1/models")
    assert status == 200 and models["models"][0]["provider"] == "CPUExecutionProvider"


def test_real_server_logs_json_lines_and_exits_cleanly(server) -> None:
    base, process = server
    get_json(base + "/health/live")
    process.terminate()
    output, _ = process.communicate(timeout=30)
    # uvicorn finishes its shutdown, then re-raises the SIGTERM it caught, so -15 is a clean exit.
    assert process.returncode in (0, -15)
    assert "Application shutdown complete." in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("route") == "/health/live" and line.get("status") == 200 for line in lines)
    assert any("model ready: tiny" in line["message"] for line in lines)


def test_stalled_upload_gets_408_and_the_server_carries_on(tiny_model_dir: Path) -> None:
    base, process = start_server(tiny_model_dir, STRIDE_BODY_READ_TIMEOUT_S="0.5", STRIDE_DRAIN_DELAY_S="0")
    try:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"\x89PNG")  # then nothing more
            answer = b""
            while b'"}}' not in answer:  # the envelope's end; headers and body may come in separate segments
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert '"body_timeout"' in answer
        status, _ = get_json(base + "/health/ready")
        assert status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sigterm_drains_without_failing_requests(tiny_model_dir: Path) -> None:
    """Under load, SIGTERM turns readiness 503 at once; every request sent before the drain ended succeeds."""
    import signal
    import threading

    drain = 1.5
    base, process = start_server(tiny_model_dir, STRIDE_DRAIN_DELAY_S=str(drain), STRIDE_ACCESS_LOG="false")
    image = png_bytes(Image.new("L", (16, 16), 255))
    outcomes: list[tuple[float, str]] = []  # (time the request was sent, "ok" or the failure)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            request = urllib.request.Request(base + "/v1/classify", data=image,
                                             headers={"Content-Type": "image/png"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    outcomes.append((sent, "ok" if response.status == 200 else str(response.status)))
            except urllib.error.HTTPError as exc:
                outcomes.append((sent, f"HTTP {exc.code}"))
            except OSError as exc:
                outcomes.append((sent, f"connection: {exc}"))
                time.sleep(0.01)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    sigterm_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready_status, ready_body = get_json(base + "/health/ready")
    process.wait(timeout=60)
    stop.set()
    for worker in workers:
        worker.join(timeout=30)

    assert ready_status == 503 and "draining" in ready_body["reason"]
    drain_ended = sigterm_at + drain
    before = [outcome for sent, outcome in outcomes if sent < drain_ended - 0.25]  # margin: loaded CI hosts
    failed = [outcome for outcome in before if outcome != "ok"]
    assert len(before) > 20, "the load generator sent too few requests to prove anything"
    assert not failed, f"{len(failed)} of {len(before)} requests sent before the drain ended failed: {failed[:3]}"
    after = [outcome for sent, outcome in outcomes if sent > drain_ended + 1.0]
    assert all(outcome.startswith("connection") for outcome in after), "the server kept accepting after draining"
