"""Issue 16 against a real server process (`python -m service`): slow clients are cut off, no `server`
banner, a huge image on every dense route stays within its memory and time target, bad settings refused."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image, ImageDraw

from tests.service.test_hardening import bundle_dir
from tests.service.test_server_process import start_server


@pytest.fixture(scope="module")
def dense_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    models = bundle_dir(tmp_path_factory.mktemp("bundle"))
    base, process = start_server(models, STRIDE_DRAIN_DELAY_S="0", STRIDE_ACCESS_LOG="false",
                                 STRIDE_HEADER_READ_TIMEOUT_S="1", STRIDE_MIN_BODY_RATE_BYTES_S="2000",
                                 STRIDE_WORKER_THREADS="2")
    try:
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection within `limit_s`."""
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


def test_slowloris_connections_are_closed_and_the_server_still_answers(dense_server) -> None:
    base, _ = dense_server
    connections = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port_of(base)), timeout=5)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        connections.append(sock)
    started = time.monotonic()
    for sock in connections:
        sock.sendall(b"X-Slow: 1\r\n")  # a trickle of header bytes keeps a plain keep-alive timer at bay
    outcomes = [read_until_closed(sock, 15) for sock in connections]
    for sock in connections:
        sock.close()
    assert all(closed for _, closed in outcomes), "a slowloris connection was still open after 15 s"
    assert time.monotonic() - started < 15
    answered = [data for data, _ in outcomes if data]
    assert all(data.startswith(b"HTTP/1.1 408") and b"header_timeout" in data for data in answered)
    with urllib.request.urlopen(base + "/health/live", timeout=5) as response:
        assert response.status == 200


def test_an_idle_connection_that_never_sends_is_closed(dense_server) -> None:
    base, _ = dense_server
    with socket.create_connection(("127.0.0.1", port_of(base)), timeout=5) as sock:
        _, closed = read_until_closed(sock, 10)
    assert closed


def test_a_body_slower_than_the_minimum_rate_gets_408(dense_server) -> None:
    base, _ = dense_server
    with socket.create_connection(("127.0.0.1", port_of(base)), timeout=5) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        sock.settimeout(0.2)
        answer = b""
        deadline = time.monotonic() + 15
        while b"body_too_slow" not in answer and time.monotonic() < deadline:
            try:
                sock.sendall(b"\x00" * 100)  # 500 bytes/s, under the 2000 bytes/s minimum
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"body_too_slow" in answer


def test_no_server_banner_and_nosniff_from_the_real_server(dense_server) -> None:
    base, _ = dense_server
    with urllib.request.urlopen(base + "/health/live", timeout=5) as response:
        assert response.headers.get("server") is None
        assert response.headers["x-content-type-options"] == "nosniff"


def huge_scene_png(side: int = 6300) -> bytes:
    """A legal but huge image (under the pixel limit) that compresses to little: the issue's 116 KB case."""
    image = Image.new("RGB", (side, side), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    draw.ellipse((side * 0.1, side * 0.1, side * 0.45, side * 0.45), fill=(220, 40, 40))
    draw.rectangle((side * 0.55, side * 0.55, side * 0.9, side * 0.85), fill=(40, 200, 40))
    draw.polygon([(side * 0.6, side * 0.1), (side * 0.9, side * 0.1), (side * 0.75, side * 0.4)], fill=(40, 40, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


MEMORY_TARGET_MIB = 400
TIME_TARGET_S = 2.0


@pytest.mark.parametrize("query", [
    "/v1/segment?model=segmenter&mask_format=rle",
    "/v1/segment?model=segmenter&mask_format=png",
    "/v1/segment?model=instance_seg&mask_format=rle",
    "/v1/segment?model=instance_seg&mask_format=polygon",
    "/v1/segment?model=instance_seg&mask_format=png",
    "/v1/detect?model=detector",
    "/v1/keypoints?model=keypoints",
])
def test_a_6300_pixel_square_png_stays_within_memory_and_time(tmp_path: Path, query: str) -> None:
    """A fresh process per route, so each peak is its own: <= 400 MiB over idle, answered within 2 s (the
    best of two tries: other load on a shared host only ever makes a try slower)."""
    data = huge_scene_png()
    base, process = start_server(bundle_dir(tmp_path / "bundle"), STRIDE_DRAIN_DELAY_S="0",
                                 STRIDE_ACCESS_LOG="false", STRIDE_WORKER_THREADS="2")
    try:
        server = psutil.Process(process.pid)
        idle = server.memory_info().rss
        timings = []
        for _ in range(2):
            request = urllib.request.Request(base + query, data=data, headers={"Content-Type": "image/png"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200
                response.read()
            timings.append(time.perf_counter() - started)
        peak = _peak_rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    over_idle_mib = (peak - idle) / 2**20
    assert over_idle_mib <= MEMORY_TARGET_MIB, f"{query}: peak {over_idle_mib:.0f} MiB over idle"
    assert min(timings) <= TIME_TARGET_S, f"{query}: {timings}"


def _peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (Linux VmHWM), so no sampling can miss the peak."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


@pytest.mark.parametrize(("env", "named"), [
    ({"STRIDE_MAX_QUEUE": "4"}, "STRIDE_MAX_QUEUE"),
    ({"STRIDE_BATCHING": '{"lenet5": {"max_queue": 2, "max_batch_size": 8}}'}, "STRIDE_BATCHING['lenet5']"),
    ({"STRIDE_BATCHING": '{"lenet5": {"max_qeue": 64}}'}, "max_qeue"),
])
def test_a_queue_below_the_batch_size_is_refused_at_start(tmp_path: Path, env: dict[str, str], named: str) -> None:
    environment = os.environ | {"STRIDE_MODELS_DIR": str(tmp_path), "STRIDE_PORT": "1"} | env
    finished = subprocess.run([sys.executable, "-m", "service"], env=environment, capture_output=True, text=True,
                              timeout=60)
    assert finished.returncode != 0
    assert named in finished.stdout + finished.stderr
