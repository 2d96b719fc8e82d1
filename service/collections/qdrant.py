"""QdrantStore: the VectorStore on Qdrant, embedded on disk (local mode) or a Qdrant server / cluster.

Local mode (`QdrantClient(path=...)`) keeps everything in one folder and needs no server; Qdrant takes an
exclusive lock on that folder, so a second process that opens it gets StoreUnavailable and touches nothing.
With a URL every Stride process shares the server's collections, which is how several workers stay
consistent. Stride's collections are Qdrant collections named `stride_<name>`, so a shared server's other
collections are never listed or touched; the model name and file hash live in the collection's metadata.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from service.collections.store import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionSpec,
    DuplicateItem,
    Item,
    ItemNotFound,
    Match,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

PREFIX = "stride_"
# Item ids are the user's strings; Qdrant wants an integer or a UUID, so the point id is derived from it.
_ID_NAMESPACE = uuid.UUID("8c2f4d0e-3b1a-5e7c-9f00-5354524944ff")


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


class QdrantStore:
    def __init__(self, client: QdrantClient, backend: str) -> None:
        self.client = client
        self.backend = backend

    @classmethod
    def local(cls, path: Path) -> QdrantStore:
        try:
            path.mkdir(parents=True, exist_ok=True)
            client = QdrantClient(path=str(path))
        except RuntimeError as exc:  # Qdrant's message when another process holds the folder's lock
            raise StoreUnavailable(
                f"the collections folder {path} is open in another process; local mode serves one process "
                "(set STRIDE_QDRANT_URL to a Qdrant server to share collections between processes)") from exc
        except OSError as exc:  # not writable, not a folder, disk full
            raise StoreUnavailable(f"the collections folder {path} cannot be used: {exc.strerror or exc} "
                                   "(STRIDE_COLLECTIONS_DIR must be a writable folder)") from exc
        return cls(client, "local")

    @classmethod
    def server(cls, url: str, api_key: str | None = None, timeout_s: float = 10.0) -> QdrantStore:
        client = QdrantClient(url=url, api_key=api_key, timeout=int(max(1, timeout_s)))
        try:
            client.get_collections()  # fail at start, not at the first request, when the server is unreachable
        except Exception as exc:  # connection errors come in several types (httpx, grpc, qdrant's own)
            raise StoreUnavailable(f"the Qdrant server at {url} did not answer: {exc}") from exc
        return cls(client, "server")

    # ------------------------------------------------------------------------------------------ collections
    def create(self, spec: CollectionSpec) -> None:
        name = PREFIX + spec.name
        if self.client.collection_exists(name):
            raise CollectionExists(spec.name)
        self.client.create_collection(
            name, vectors_config=qm.VectorParams(size=spec.dimension, distance=qm.Distance.COSINE),
            metadata={"stride": 1, "model": spec.model, "model_sha256": spec.model_sha256,
                      "dimension": spec.dimension})

    def info(self, name: str) -> CollectionInfo:
        spec = self._spec(name)
        return CollectionInfo(spec, self.client.count(PREFIX + name, exact=True).count)

    def list(self) -> list[CollectionInfo]:
        names = sorted(c.name[len(PREFIX):] for c in self.client.get_collections().collections
                       if c.name.startswith(PREFIX))
        found = []
        for name in names:
            try:
                found.append(self.info(name))
            except CollectionNotFound:  # dropped meanwhile by another process, or not one of ours
                continue
        return found

    def drop(self, name: str) -> None:
        self._spec(name)
        self.client.delete_collection(PREFIX + name)

    def _spec(self, name: str) -> CollectionSpec:
        if not self.client.collection_exists(PREFIX + name):
            raise CollectionNotFound(name)
        meta: dict[str, Any] = self.client.get_collection(PREFIX + name).config.metadata or {}
        if meta.get("stride") != 1:
            raise CollectionNotFound(name)
        return CollectionSpec(name=name, model=str(meta["model"]), model_sha256=str(meta["model_sha256"]),
                              dimension=int(meta["dimension"]))

    # ---------------------------------------------------------------------------------------------- items
    def add(self, name: str, item: Item, vector: np.ndarray, replace: bool) -> bool:
        self._spec(name)
        pid = point_id(item.id)
        exists = bool(self.client.retrieve(PREFIX + name, ids=[pid], with_payload=False, with_vectors=False))
        if exists and not replace:
            raise DuplicateItem(item.id)
        payload = {"id": item.id, "label": item.label, "metadata": item.metadata}
        self.client.upsert(PREFIX + name, wait=True,
                           points=[qm.PointStruct(id=pid, vector=vector.astype(np.float32).tolist(), payload=payload)])
        return exists

    def remove(self, name: str, item_id: str) -> None:
        self._spec(name)
        pid = point_id(item_id)
        if not self.client.retrieve(PREFIX + name, ids=[pid], with_payload=False, with_vectors=False):
            raise ItemNotFound(item_id)
        self.client.delete(PREFIX + name, points_selector=qm.PointIdsList(points=[pid]), wait=True)

    def search(self, name: str, vector: np.ndarray, top_k: int) -> list[Match]:
        self._spec(name)
        found = self.client.query_points(PREFIX + name, query=vector.astype(np.float32).tolist(), limit=top_k,
                                         with_payload=True).points
        matches = [Match(Item(id=p.payload["id"], label=p.payload.get("label"),  # type: ignore[index, union-attr]
                              metadata=p.payload.get("metadata") or {}), float(p.score))  # type: ignore[union-attr]
                   for p in found]
        # Equal scores (equal vectors) come back in storage order, which a restart may change: ties go by id.
        return sorted(matches, key=lambda m: (-round(m.score, 6), m.item.id))

    def close(self) -> None:
        self.client.close()
