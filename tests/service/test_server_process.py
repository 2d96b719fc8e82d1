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


@pytest.fixture
def server(tiny_model_dir: Path):
    port = free_port()
    env = os.environ | {"STRIDE_PORT": str(port), "STRIDE_MODELS_DIR": str(tiny_model_dir),
                        "STRIDE_HOST": "127.0.0.1"}
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if get_json(base + "/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{process.stdout.read() if process.stdout else ''}")
            time.sleep(0.1)
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
