"""A real server process under load while its model files are added, replaced, corrupted and deleted:
no request fails, each step's version answers once the step is visible, a broken file is never served."""

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.service.test_lifecycle import BRIGHT, write_version
from tests.service.test_server_process import get_json, start_server

LABEL_OF = {"v1": "bright", "v2": "high"}  # what each version answers for a bright image


class Load:
    """Threads posting to one model without pause; every answer is kept with the time it was sent."""

    def __init__(self, base: str, model: str, threads: int = 4) -> None:
        self.url = f"{base}/v1/classify?model={model}&top_k=1"
        self.answers: list[tuple[float, str]] = []  # (sent at, label or the failure)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            request = urllib.request.Request(self.url, data=BRIGHT, headers={"Content-Type": "image/png"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    outcome = json.load(response)["predictions"][0]["label"]
            except urllib.error.HTTPError as exc:
                outcome = f"HTTP {exc.code}: {exc.read()[:200]!r}"
            except OSError as exc:
                outcome = f"connection: {exc}"
            self.answers.append((sent, outcome))

    def since(self, moment: float) -> list[str]:
        return [outcome for sent, outcome in list(self.answers) if sent >= moment]


def served(base: str, name: str) -> dict | None:
    status, body = get_json(base + "/v1/models")
    assert status == 200
    return {m["name"]: m for m in body["models"]}.get(name)


def wait_until(condition, what: str, in_a_row: int = 1, timeout_s: float = 60.0) -> float:
    """Poll (a new connection each time) until the condition holds `in_a_row` times running, so that with
    several workers sharing the port every one of them has most likely been asked; returns that moment."""
    deadline = time.monotonic() + timeout_s
    held = 0
    while held < in_a_row:
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        held = held + 1 if condition() else 0
        if held < in_a_row:
            time.sleep(0.02)
    return time.monotonic()


@pytest.mark.parametrize("workers", [1, 2])
def test_files_change_under_load_without_a_failed_request(tmp_path: Path, workers: int) -> None:
    """With two workers each follows the directory itself; the kernel spreads connections over both."""
    write_version(tmp_path / "m.onnx", "v1")
    base, process = start_server(tmp_path, STRIDE_WATCH_SETTLE_MS="100", STRIDE_DRAIN_DELAY_S="0",
                                 STRIDE_ACCESS_LOG="false", STRIDE_WORKERS=str(workers))
    everywhere = 1 if workers == 1 else 16  # the chance that 16 polls all missed one of two workers: 1/2^15
    try:
        with Load(base, "m") as load:
            wait_until(lambda: len(load.answers) > 20, "the load to start")

            write_version(tmp_path / "extra.onnx", "v1")  # add
            wait_until(lambda: (served(base, "extra") or {}).get("status") == "ready", "extra to be served",
                       everywhere)

            write_version(tmp_path / "m.onnx", "v2")  # replace
            swapped = wait_until(lambda: served(base, "m")["version"] == "v2", "m v2 to be served", everywhere)
            wait_until(lambda: len(load.since(swapped)) > 20, "answers after the swap")
            assert set(load.since(swapped)) == {LABEL_OF["v2"]}, "a request sent after the swap got the old version"

            broken = b"not a model at all"
            (tmp_path / "m.onnx").write_bytes(broken)  # corrupt replacement
            refused = wait_until(lambda: (served(base, "m")["pending_failure"] or {}).get("sha256")
                                 == hashlib.sha256(broken).hexdigest(), "the broken replacement to be refused",
                                 everywhere)
            wait_until(lambda: len(load.since(refused)) > 20, "answers after the broken replacement")
            info = served(base, "m")
            assert info["status"] == "ready" and info["version"] == "v2"

            (tmp_path / "extra.onnx").unlink()  # delete
            wait_until(lambda: served(base, "extra") is None, "extra to be retired", everywhere)
            status, _ = get_json(base + "/v1/models/extra")
            assert status == 404

        failed = [outcome for _, outcome in load.answers if outcome not in LABEL_OF.values()]
        assert len(load.answers) > 100, "the load generator sent too few requests to prove anything"
        assert not failed, f"{len(failed)} of {len(load.answers)} requests failed: {failed[:3]}"
        assert set(load.since(swapped)) == {LABEL_OF["v2"]}, "the broken file answered"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert f'stride_model_swaps_total{{model="m"}} {float(workers)}' in metrics  # once in each worker
    finally:
        process.terminate()
        process.wait(timeout=30)
