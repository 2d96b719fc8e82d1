"""Models that change while serving, in process: the reload endpoints, /v1/models and the watcher."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.lifecycle import ModelWatcher
from tests.conftest import TINY_SPEC, golden_for, png_bytes, tiny_classifier_graph, tiny_metadata, write_model

BRIGHT = png_bytes(Image.new("L", (8, 8), 255))
V2_LABELS = ["low", "middle", "high"]  # the same graph answering in other words: which version spoke is visible


def write_version(path: Path, version: str) -> Path:
    graph = tiny_classifier_graph()
    labels = V2_LABELS if version == "v2" else ["dark", "mid", "bright"]
    golden = golden_for(graph, TINY_SPEC, [Image.new("L", (8, 8), 40)])
    return write_model(path, graph, tiny_metadata(model_version=version, labels=labels, golden=golden))


def label_of(client: TestClient, model: str) -> str:
    answer = client.post(f"/v1/classify?model={model}", content=BRIGHT, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]["label"]


def model_info(client: TestClient, name: str) -> dict:
    return {m["name"]: m for m in client.get("/v1/models").json()["models"]}[name]


@pytest.fixture
def static_client(make_client: Callable[..., TestClient], tmp_path: Path) -> TestClient:
    """Serving `m` v1 with the watcher off: only the reload endpoints change what is served."""
    write_version(tmp_path / "m.onnx", "v1")
    return make_client(tmp_path, watch_models=False)


def reload(client: TestClient, name: str | None = None) -> dict[str, dict]:
    answer = client.post("/v1/models/reload" if name is None else f"/v1/models/{name}/reload")
    assert answer.status_code == 200, answer.text
    return {c["model"]: c for c in answer.json()["changes"]}


def test_models_show_the_served_file_hash_load_time_and_version(static_client: TestClient) -> None:
    info = model_info(static_client, "m")
    directory = static_client.app.state.settings.models_dir
    assert info["sha256"] == hashlib.sha256((directory / "m.onnx").read_bytes()).hexdigest()
    assert info["version"] == "v1" and info["loaded_at"] and info["load_seconds"] > 0
    assert info["pending_failure"] is None


def test_reload_with_nothing_changed_reports_unchanged(static_client: TestClient) -> None:
    assert reload(static_client) == {"m": {"model": "m", "change": "unchanged", "status": "ready", "reason": None}}


def test_reload_adds_replaces_keeps_the_previous_and_removes(static_client: TestClient) -> None:
    directory: Path = static_client.app.state.settings.models_dir
    write_version(directory / "extra.onnx", "v1")
    assert reload(static_client)["extra"]["change"] == "added" and label_of(static_client, "extra") == "bright"

    write_version(directory / "m.onnx", "v2")
    assert reload(static_client, "m")["m"]["change"] == "replaced"
    assert label_of(static_client, "m") == "high" and model_info(static_client, "m")["version"] == "v2"

    (directory / "m.onnx").write_bytes(b"half a model")
    change = reload(static_client, "m")["m"]
    assert change["change"] == "kept_previous" and "ONNX Runtime could not load" in change["reason"]
    info = model_info(static_client, "m")
    assert info["status"] == "ready" and info["version"] == "v2", "the broken file must not be served"
    assert info["pending_failure"]["sha256"] == hashlib.sha256(b"half a model").hexdigest()
    assert "ONNX Runtime could not load" in info["pending_failure"]["reason"]
    assert label_of(static_client, "m") == "high"

    (directory / "extra.onnx").unlink()
    assert reload(static_client)["extra"]["change"] == "removed"
    gone = static_client.post("/v1/classify?model=extra", content=BRIGHT, headers={"content-type": "image/png"})
    assert gone.status_code == 404
    assert "extra" not in {m["name"] for m in static_client.get("/v1/models").json()["models"]}

    metrics = static_client.get("/metrics").text
    assert 'stride_model_loads_total{model="m",outcome="ready"} 2.0' in metrics
    assert 'stride_model_loads_total{model="m",outcome="failed"} 1.0' in metrics
    assert 'stride_model_swaps_total{model="m"} 1.0' in metrics
    assert 'stride_model_removals_total{model="extra"} 1.0' in metrics
    assert 'stride_model_ready{model="extra"' not in metrics, "a removed model's series must go"


def test_reload_of_an_unknown_model_is_404(static_client: TestClient) -> None:
    answer = static_client.post("/v1/models/nope/reload")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_reload_needs_the_api_key_when_keys_are_set(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    write_version(tmp_path / "m.onnx", "v1")
    client = make_client(tmp_path, watch_models=False, api_key="secret")
    assert client.post("/v1/models/reload").status_code == 401
    assert client.post("/v1/models/reload", headers={"X-API-Key": "secret"}).status_code == 200


def wait_for(watcher: ModelWatcher, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait sync by sync (no sleeping) until the predicate holds."""
    while not predicate():
        assert watcher.wait_for_sync(watcher.syncs, timeout_s), "the watcher did not sync in time"


def test_the_watcher_follows_the_directory(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    write_version(tmp_path / "m.onnx", "v1")
    client = make_client(tmp_path, watch_settle_ms=50)
    watcher: ModelWatcher = client.app.state.watcher
    registry = client.app.state.registry

    write_version(tmp_path / "new.onnx", "v2")
    wait_for(watcher, lambda: "new" in registry.entries)
    assert label_of(client, "new") == "high"

    write_version(tmp_path / "m.onnx", "v2")
    wait_for(watcher, lambda: registry.get("m").metadata.model_version == "v2")
    assert label_of(client, "m") == "high"

    (tmp_path / "new.onnx").unlink()
    wait_for(watcher, lambda: "new" not in registry.entries)


def test_no_watcher_runs_when_watching_is_off(static_client: TestClient) -> None:
    assert not static_client.app.state.watcher._thread.is_alive()
