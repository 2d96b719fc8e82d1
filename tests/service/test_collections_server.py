"""Collections persist across a real server restart: enrol, stop the process, start a new one, same answers."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.conftest import png_bytes
from tests.service.embedding_models import BLUE, GREEN, RED, solid, write_colour_embedder
from tests.service.test_server_process import get_json, start_server

QUERIES = [(250, 20, 10), (20, 250, 60), (60, 20, 240), (200, 200, 0)]


def call(method: str, url: str, image: tuple[int, int, int] | None = None) -> dict:
    data = png_bytes(solid(image)) if image is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def answers(base: str) -> list[list[tuple[str, str, float]]]:
    found = []
    for colour in QUERIES:
        matches = call("POST", f"{base}/v1/collections/people/search?top_k=3", colour)["matches"]
        found.append([(m["id"], m["label"], m["score"]) for m in matches])
    return found


def same_answers(after: list[list[tuple[str, str, float]]], before: list[list[tuple[str, str, float]]]) -> bool:
    """Same items in the same order; scores equal up to float32 storage (the store keeps float32 vectors)."""
    return all(len(a) == len(b) and all(x[:2] == y[:2] and abs(x[2] - y[2]) < 1e-5 for x, y in zip(a, b, strict=True))
               for a, b in zip(after, before, strict=True)) and len(after) == len(before)


def test_items_survive_a_restart_of_the_server_process(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_colour_embedder(models / "colours.onnx")
    env = {"STRIDE_COLLECTIONS_DIR": str(tmp_path / "collections"), "STRIDE_WORKERS": "1",
           "STRIDE_DRAIN_DELAY_S": "0"}
    base, process = start_server(models, **env)
    try:
        call("PUT", f"{base}/v1/collections/people?model=colours")
        for item_id, colour in (("r", RED), ("g", GREEN), ("b", BLUE)):
            call("POST", f"{base}/v1/collections/people/items?id={item_id}&label={item_id.upper()}", colour)
        before = answers(base)
    finally:
        process.terminate()
        process.wait(timeout=60)

    base, process = start_server(models, **env)
    try:
        assert same_answers(answers(base), before)
        assert [m[0] for m in before[0]] == ["r", "g", "b"]
        status, listed = get_json(f"{base}/v1/collections")
        assert status == 200 and listed["collections"][0]["size"] == 3
    finally:
        process.terminate()
        process.wait(timeout=60)
