"""The vector store behind /v1/collections, as an interface: collections of (id, label, metadata, vector).

A collection remembers the embedding model it was built with (name and file hash): vectors of one model mean
nothing to another, so the routes refuse to mix them. Implementations are blocking; `service.collections.
runner` calls them off the event loop. Scores are cosine similarity, higher is better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

# Letters, digits, '-' and '_', starting with a letter or digit: safe in a URL path and as a store name.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_ID_CHARS = 256


class StoreError(Exception):
    """A request the store cannot do; the routes turn each kind into its HTTP answer."""


class CollectionNotFound(StoreError):
    pass


class CollectionExists(StoreError):
    pass


class ItemNotFound(StoreError):
    pass


class DuplicateItem(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The store could not be opened (e.g. the local folder is held by another process)."""


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    name: str
    model: str
    model_sha256: str
    dimension: int


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    spec: CollectionSpec
    size: int


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Match:
    item: Item
    score: float  # cosine similarity


class VectorStore(Protocol):
    """What the routes need from a vector store; QdrantStore is the one implementation."""

    backend: str  # "local" (one process, on disk) or "server" (shared by every process that points at it)

    def create(self, spec: CollectionSpec) -> None: ...  # CollectionExists
    def info(self, name: str) -> CollectionInfo: ...  # CollectionNotFound
    def list(self) -> list[CollectionInfo]: ...
    def drop(self, name: str) -> None: ...  # CollectionNotFound
    def add(self, name: str, item: Item, vector: np.ndarray, replace: bool) -> bool: ...  # True: replaced one
    def remove(self, name: str, item_id: str) -> None: ...  # ItemNotFound
    def search(self, name: str, vector: np.ndarray, top_k: int) -> list[Match]: ...
    def close(self) -> None: ...
