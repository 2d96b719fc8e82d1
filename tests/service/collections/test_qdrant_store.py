"""QdrantStore in local mode: the store interface on a real embedded Qdrant in a temporary folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.collections import (
    CollectionExists,
    CollectionNotFound,
    CollectionSpec,
    DuplicateItem,
    Item,
    ItemNotFound,
    StoreUnavailable,
)
from service.collections.qdrant import QdrantStore

SPEC = CollectionSpec(name="people", model="colours", model_sha256="ab" * 32, dimension=3)


@pytest.fixture
def store(tmp_path: Path):
    opened = QdrantStore.local(tmp_path / "store")
    yield opened
    opened.close()


def vector(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_a_new_collection_is_empty_and_listed(store: QdrantStore) -> None:
    assert store.list() == []
    store.create(SPEC)
    [info] = store.list()
    assert info.spec == SPEC and info.size == 0
    assert store.search("people", vector(1, 0, 0), 5) == []


def test_creating_twice_is_refused(store: QdrantStore) -> None:
    store.create(SPEC)
    with pytest.raises(CollectionExists):
        store.create(SPEC)


@pytest.mark.parametrize("call", [
    lambda s: s.info("nobody"), lambda s: s.drop("nobody"), lambda s: s.search("nobody", vector(1, 0, 0), 1),
    lambda s: s.add("nobody", Item("a"), vector(1, 0, 0), False), lambda s: s.remove("nobody", "a"),
])
def test_unknown_collections_are_reported(store: QdrantStore, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CollectionNotFound):
        call(store)


@pytest.mark.parametrize(("query", "expected"), [
    (vector(1, 0, 0), ["x", "xy", "y"]),
    (vector(0, 1, 0), ["y", "xy", "x"]),
    (vector(0, 0, 1), None),  # orthogonal to x and y, equal to neither: only the scores are checked
])
def test_search_is_best_first_by_cosine(store: QdrantStore, query: np.ndarray, expected: list[str] | None) -> None:
    store.create(SPEC)
    for item_id, v in (("x", vector(2, 0, 0)), ("y", vector(0, 3, 0)), ("xy", vector(1, 1, 0))):
        store.add("people", Item(item_id, label=item_id.upper(), metadata={"n": len(item_id)}), v, False)
    matches = store.search("people", query, 3)
    scores = [m.score for m in matches]
    assert scores == sorted(scores, reverse=True)
    if expected is not None:
        assert [m.item.id for m in matches] == expected
        assert matches[0].score == pytest.approx(1.0, abs=1e-6)
        assert matches[1].score == pytest.approx(1 / np.sqrt(2), abs=1e-6)
        assert matches[0].item.label == matches[0].item.id.upper()
    else:
        assert scores == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert len(store.search("people", query, 1)) == 1


def test_duplicate_ids_are_refused_unless_replaced(store: QdrantStore) -> None:
    store.create(SPEC)
    assert store.add("people", Item("ann", "first"), vector(1, 0, 0), False) is False
    with pytest.raises(DuplicateItem):
        store.add("people", Item("ann", "second"), vector(0, 1, 0), False)
    assert store.add("people", Item("ann", "second"), vector(0, 1, 0), True) is True
    [match] = store.search("people", vector(0, 1, 0), 5)
    assert (match.item.label, store.info("people").size) == ("second", 1)


def test_items_and_collections_are_deleted(store: QdrantStore) -> None:
    store.create(SPEC)
    store.add("people", Item("ann"), vector(1, 0, 0), False)
    store.remove("people", "ann")
    with pytest.raises(ItemNotFound):
        store.remove("people", "ann")
    assert store.info("people").size == 0
    store.drop("people")
    assert store.list() == []


def test_collections_persist_across_reopening(tmp_path: Path) -> None:
    first = QdrantStore.local(tmp_path / "store")
    first.create(SPEC)
    first.add("people", Item("ann", "Ann", {"team": "blue"}), vector(1, 2, 3), False)
    before = first.search("people", vector(1, 2, 2), 1)
    first.close()
    again = QdrantStore.local(tmp_path / "store")
    try:
        assert again.info("people").spec == SPEC
        [after] = again.search("people", vector(1, 2, 2), 1)
        assert after.item == before[0].item
        assert after.score == pytest.approx(before[0].score, abs=1e-6)  # float32 storage: the last bits may differ
    finally:
        again.close()


def test_a_second_process_gets_a_clear_error_and_changes_nothing(store: QdrantStore, tmp_path: Path) -> None:
    store.create(SPEC)
    store.add("people", Item("ann"), vector(1, 0, 0), False)
    code = ("import sys; from pathlib import Path; from service.collections.qdrant import QdrantStore\n"
            "from service.collections import StoreUnavailable\n"
            "try:\n    QdrantStore.local(Path(sys.argv[1]))\nexcept StoreUnavailable as exc:\n"
            "    print(exc); sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 3, result.stderr
    assert "open in another process" in result.stdout and "STRIDE_QDRANT_URL" in result.stdout
    assert store.info("people").size == 1 and store.search("people", vector(1, 0, 0), 1)[0].item.id == "ann"


def test_the_same_folder_opened_twice_in_one_process_is_refused_too(store: QdrantStore, tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable):
        QdrantStore.local(tmp_path / "store")


def test_a_folder_that_cannot_be_used_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreUnavailable, match="STRIDE_COLLECTIONS_DIR"):
        QdrantStore.local(tmp_path / "file" / "store")


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_an_unreachable_server_is_reported_at_open() -> None:
    with pytest.raises(StoreUnavailable, match="did not answer"):
        QdrantStore.server("http://127.0.0.1:9", timeout_s=1)
