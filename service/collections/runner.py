"""The store as the routes use it: opened once per process, every call on the store's own threads.

Store calls block (disk in local mode, the network with a server, a brute-force scan in local search), so
they never run on the event loop. Local mode gets ONE thread: calls on this process's store are serialised,
so a check-then-write (duplicate ids) cannot interleave. A server gets a few threads; the server orders
writes itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from service.collections.qdrant import QdrantStore
from service.collections.store import StoreUnavailable, VectorStore
from service.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVER_THREADS = 4


class Collections:
    def __init__(self, store: VectorStore | None, reason: str | None = None) -> None:
        self.store = store
        self.reason = reason  # why there is no store, for the 503 answers
        threads = SERVER_THREADS if store is not None and store.backend == "server" else 1
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="stride-collections")
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._hash_lock = threading.Lock()

    @property
    def backend(self) -> str | None:
        return self.store.backend if self.store is not None else None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the store's threads; StoreUnavailable when the store could not be opened."""
        if self.store is None:
            raise StoreUnavailable(self.reason or "the collections store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    async def model_sha256(self, path: Path) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._threads, self._sha256, path)

    def _sha256(self, path: Path) -> str:
        """The model file's SHA-256, cached while its size and modification time stay the same."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._hash_lock:
            if key in self._hashes:
                return self._hashes[key]
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        with self._hash_lock:
            self._hashes[key] = digest.hexdigest()
        return self._hashes[key]

    def close(self) -> None:
        self._threads.shutdown(wait=True)  # writes in flight finish before the store closes
        if self.store is not None:
            self.store.close()


def open_store(settings: Settings) -> VectorStore:
    if settings.qdrant_url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantStore.server(settings.qdrant_url, key, timeout_s=settings.request_timeout_s)
    return QdrantStore.local(settings.collections_dir)


def open_collections(settings: Settings) -> Collections:
    """The process's collections; a store that cannot be opened leaves inference serving and makes every
    collections request answer 503 with the reason."""
    try:
        return Collections(open_store(settings))
    except StoreUnavailable as exc:
        log.error("collections unavailable: %s", exc)
        return Collections(None, str(exc))


def unavailable(reason: str) -> Collections:
    return Collections(None, reason)


def open_collections_for(settings: Settings) -> Collections:
    """The collections of one server process. Local mode is one process's store: with several workers each
    would see its own half of the requests (or find the folder locked), so they all answer 503 instead of
    answering differently; a Qdrant server is shared by all of them."""
    workers = getattr(settings, "workers", 1)
    if not settings.qdrant_url and workers > 1:
        reason = (f"the local collections store serves one process and STRIDE_WORKERS is {workers}; set "
                  "STRIDE_QDRANT_URL to a Qdrant server (shared by every worker) or STRIDE_WORKERS=1")
        log.warning("collections unavailable: %s", reason)
        return unavailable(reason)
    return open_collections(settings)
