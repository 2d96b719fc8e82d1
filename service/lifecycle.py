"""Following the models directory while serving: a change to it makes the registry sync with it.

watchfiles (inotify on Linux; `WATCHFILES_FORCE_POLLING=1` for network and some container filesystems)
reports changes once the directory has been quiet for `settle_ms`, so a file still being copied is loaded
once, complete; a copy that is caught half-written fails its load and is retried when the write ends,
since its hash changes again. Events only say *that* something changed: what to do is decided by
comparing the directory with the registry (`ModelRegistry.sync`), so a missed or repeated event, or one
watcher per worker process, leaves every process serving what the directory holds.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from watchfiles import watch

from service.registry import ModelRegistry

log = logging.getLogger(__name__)

# How long the first wait for events lasts: its end (with or without events) is the moment the watch is
# surely running, and one sync then covers whatever changed between the initial load's scan and it.
FIRST_SYNC_AFTER_MS = 1000


class ModelWatcher:
    def __init__(self, registry: ModelRegistry, models_dir: Path, settle_ms: int) -> None:
        self.registry = registry
        self.models_dir = models_dir
        self.settle_ms = settle_ms
        self.syncs = 0  # completed syncs, for tests and logs
        self.synced = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stride-model-watcher", daemon=True)

    def start(self) -> None:
        if not self.models_dir.is_dir():
            log.warning("not watching %s: it is not a directory", self.models_dir)
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def wait_for_sync(self, after: int, timeout_s: float) -> bool:
        """Block until more than `after` syncs have completed (tests wait on this instead of sleeping)."""
        with self.synced:
            return self.synced.wait_for(lambda: self.syncs > after, timeout=timeout_s)

    def _run(self) -> None:
        first = True
        changes_seen = watch(self.models_dir, stop_event=self._stop, step=self.settle_ms,
                             debounce=max(1600, 4 * self.settle_ms), recursive=False,
                             yield_on_timeout=True, rust_timeout=FIRST_SYNC_AFTER_MS)
        for changes in changes_seen:
            if changes or first:
                first = False
                self._sync()

    def _sync(self) -> None:
        try:
            done = self.registry.sync()
        except Exception:  # a bug must not end the watch: the next change tries again
            log.exception("syncing the models directory failed")
            return
        changed = [f"{c.model}: {c.kind.value}" for c in done if c.kind.value != "unchanged"]
        if changed:
            log.info("models directory changed: %s", "; ".join(changed))
        with self.synced:
            self.syncs += 1
            self.synced.notify_all()
