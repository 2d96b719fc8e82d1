"""The committed embedder through the HTTP API, on identities it never saw in training.

200 identities are enrolled with one image each (`PUT` + `POST .../items`); two other views of each are
searched (`POST .../search`), and two views each of 200 further identities that are NOT enrolled play the
impostors. Retrieval: recall@1 >= 0.90. Open-set identification: with the threshold that accepts 1% of the
impostors' best matches, the share of enrolled identities' views whose best match is right and above it
(true accept rate) >= 0.80. `identify` with the model's own threshold is checked against the same answers.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from service.contract import Task, from_metadata_props
from tests.conftest import BUNDLED_MODELS, png_bytes
from training.data import identities

ENROLLED = 200
PROBES = 2  # views 1 and 2 of each identity; view 0 is the enrolled one
FIRST = identities.TEST_FIRST
MODEL = BUNDLED_MODELS / "embedder.onnx"
PER_REQUEST = 16  # images per search request (STRIDE_MAX_IMAGES_PER_REQUEST's default)


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing; run `make models`")
    from service.app import create_app
    from service.config import Settings
    from tests.conftest import wait_until_loaded  # module scope: no make_client (function-scoped) here

    folder = tmp_path_factory.mktemp("embedder")
    shutil.copy(MODEL, folder / MODEL.name)
    app = create_app(Settings(models_dir=folder, providers=["CPUExecutionProvider"], workers=1,
                              collections_dir=folder / "collections", watch_models=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_until_loaded(client)
        assert client.put("/v1/collections/faces?model=embedder").status_code == 201
        for identity in range(FIRST, FIRST + ENROLLED):
            response = client.post(f"/v1/collections/faces/items?id={identity}",
                                   files={"file": png_bytes(identities.view(identity, 0))})
            assert response.status_code == 201, response.text
        genuine = search(client, list(range(FIRST, FIRST + ENROLLED)))
        impostor = search(client, list(range(FIRST + ENROLLED, FIRST + 2 * ENROLLED)))
        identified = identify(client, list(range(FIRST, FIRST + 20)) + list(range(FIRST + ENROLLED,
                                                                                  FIRST + ENROLLED + 20)))
        size = client.get("/v1/collections/faces").json()["size"]
    return {"genuine": genuine, "impostor": impostor, "identified": identified, "size": size}


def search(client: TestClient, ids: list[int]) -> list[tuple[int, list[tuple[int, float]]]]:
    """(true identity, [(matched id, score)] best first) for views 1..PROBES of each identity."""
    queries = [(identity, identities.view(identity, v)) for identity in ids for v in range(1, PROBES + 1)]
    found = []
    for start in range(0, len(queries), PER_REQUEST):
        chunk = queries[start:start + PER_REQUEST]
        response = client.post("/v1/collections/faces/search?top_k=5",
                               files=[("file", png_bytes(image)) for _, image in chunk])
        assert response.status_code == 200, response.text
        for (identity, _), answer in zip(chunk, response.json(), strict=True):
            found.append((identity, [(int(m["id"]), m["score"]) for m in answer["matches"]]))
    return found


def identify(client: TestClient, ids: list[int]) -> list[tuple[int, int | None, float]]:
    answers = []
    for identity in ids:
        body = client.post("/v1/collections/faces/identify", files={"file": png_bytes(identities.view(identity, 1))})
        assert body.status_code == 200, body.text
        match = body.json()["match"]
        answers.append((identity, None if match is None else int(match["id"]), body.json()["threshold"]))
    return answers


def test_the_gallery_holds_every_enrolled_identity(answers: dict) -> None:
    assert answers["size"] == ENROLLED
    assert len(answers["genuine"]) == len(answers["impostor"]) == ENROLLED * PROBES


def test_retrieval_recall_on_unseen_identities(answers: dict) -> None:
    genuine = answers["genuine"]
    at_1 = np.mean([matches[0][0] == identity for identity, matches in genuine])
    at_5 = np.mean([identity in [m for m, _ in matches] for identity, matches in genuine])
    print(f"HTTP recall@1 {at_1:.3f}, recall@5 {at_5:.3f} ({len(genuine)} searches, {ENROLLED} enrolled)")
    assert at_1 >= 0.90, f"recall@1 {at_1:.3f}"
    assert at_5 >= at_1


def test_open_set_true_accept_rate_at_one_percent_false_accepts(answers: dict) -> None:
    impostor_best = np.sort([matches[0][1] for _, matches in answers["impostor"]])[::-1]
    threshold = impostor_best[math.floor(0.01 * len(impostor_best))]  # accepts (score >) at most 1%
    assert np.mean(impostor_best > threshold) <= 0.01
    accepted = [matches[0][0] == identity and matches[0][1] > threshold for identity, matches in answers["genuine"]]
    print(f"HTTP TAR {np.mean(accepted):.3f} at FAR 1% (threshold {threshold:.4f}, {len(impostor_best)} impostors)")
    assert np.mean(accepted) >= 0.80, f"TAR {np.mean(accepted):.3f} at FAR 1% (threshold {threshold:.4f})"


def test_identify_uses_the_models_threshold_and_agrees_with_search(answers: dict) -> None:
    meta = from_metadata_props({p.key: p.value for p in onnx.load(str(MODEL)).metadata_props})
    assert meta.embedding is not None and meta.embedding.threshold is not None
    by_query = {identity: matches for identity, matches in answers["genuine"][::PROBES] + answers["impostor"][::PROBES]}
    for identity, matched, threshold in answers["identified"]:
        assert threshold == meta.embedding.threshold
        best_id, best_score = by_query[identity][0]
        assert matched == (best_id if best_score > threshold else None)


def test_the_bundled_file_is_small_and_states_its_contract() -> None:
    meta = from_metadata_props({p.key: p.value for p in onnx.load(str(MODEL)).metadata_props})
    assert meta.task is Task.EMBEDDING and meta.embedding is not None and meta.embedding.normalized
    assert MODEL.stat().st_size < 5 * 1024 * 1024
    assert meta.metrics["recall_at_1"] >= 0.90 and meta.metrics["tar_at_far_1pct"] >= 0.80
    card = (BUNDLED_MODELS / "embedder" / "README.md").read_text()
    assert f"{meta.metrics['recall_at_1']:.3f}" in card and f"{meta.metrics['tar_at_far_1pct']:.3f}" in card
