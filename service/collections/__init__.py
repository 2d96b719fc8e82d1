"""Collections of embeddings behind /v1/collections: the store interface, Qdrant under it, off the loop."""

from service.collections.runner import Collections, open_collections, open_collections_for, unavailable
from service.collections.store import (
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionSpec,
    DuplicateItem,
    Item,
    ItemNotFound,
    Match,
    StoreError,
    StoreUnavailable,
    VectorStore,
)

__all__ = [
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
    "CollectionSpec",
    "Collections",
    "DuplicateItem",
    "Item",
    "ItemNotFound",
    "Match",
    "StoreError",
    "StoreUnavailable",
    "VectorStore",
    "open_collections",
    "open_collections_for",
    "unavailable",
]
