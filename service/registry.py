"""The model registry: every *.onnx in the models directory, with a status and a reason.

A model that fails to load (bad file, contract violation, golden-sample drift) is reported and kept out
of service; it never stops the others from loading.

`sync()` makes the registry match the directory: new files are loaded, changed ones (the model file or
its description beside it, compared by SHA-256) are loaded beside the serving version and swapped in only
once they loaded and passed their golden check, removed ones stop serving. An entry is never changed once
it serves: a swap puts a new entry in a new dict, so a request that resolved the old entry finishes on the
old session and batcher, which stops once its last request is done. Driven by the directory's state, not
by events, a sync is idempotent: running it twice, or in every worker process, changes nothing more.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from service import errors
from service.batching import BatchPolicy, BatchStats, DynamicBatcher
from service.config import Settings
from service.contract import ContractError, ModelMetadata, Task
from service.families import ServedModel, recognise, sha256_of, sidecar_path
from service.golden import GoldenDrift, verify_golden
from service.runtime import ModelSession, open_session, warm_up, warmup_batch_sizes

log = logging.getLogger(__name__)


class ModelStatus(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # valid, but not for this host (an fp16 model without a GPU provider)


@dataclass(frozen=True, slots=True)
class FileState:
    """What the directory holds for one model: the hashes decide whether it changed (a touch does not)."""

    model_sha256: str
    description_sha256: str | None  # NAME.yaml beside NAME.onnx, when there is one


@dataclass(frozen=True, slots=True)
class PendingFailure:
    """A replacement that could not be served: the previous version keeps serving, and this says why."""

    files: FileState
    reason: str
    failed_at: datetime


class ChangeKind(StrEnum):
    ADDED = "added"  # a new file, loaded (see the entry's status for how it went)
    REPLACED = "replaced"  # a changed file loaded and swapped in
    KEPT_PREVIOUS = "kept_previous"  # a changed file failed; the previous version still serves
    REMOVED = "removed"  # the file is gone; the model stops serving after its in-flight requests
    UNCHANGED = "unchanged"
    ABSENT = "absent"  # neither a file nor an entry by that name


@dataclass(frozen=True, slots=True)
class Change:
    model: str
    kind: ChangeKind
    status: ModelStatus | None = None  # the status of what now serves under the name, None when removed
    reason: str | None = None


@dataclass
class ModelEvents:
    """Observer hooks, so the registry stays free of any metrics library."""

    on_loaded: Callable[[ModelEntry], None] = lambda entry: None  # every load attempt, whatever its status
    # `new` now stands under its name (serving or not), in place of `old` (None for a new name)
    on_published: Callable[[ModelEntry, ModelEntry | None], None] = lambda new, old: None
    on_removed: Callable[[ModelEntry], None] = lambda entry: None


@dataclass
class ModelEntry:
    name: str
    path: Path
    status: ModelStatus = ModelStatus.LOADING
    reason: str | None = None
    metadata: ModelMetadata | None = None
    model: ServedModel | None = None  # the file as its family understands it (set once recognised)
    session: ModelSession | None = None
    batcher: DynamicBatcher | None = None
    load_seconds: float | None = None
    loaded_at: datetime | None = None
    files: FileState | None = None  # the model file and description this entry was loaded from
    pending_failure: PendingFailure | None = None  # a replacement that failed; this entry still serves

    @property
    def sha256(self) -> str | None:
        return self.files.model_sha256 if self.files else None

    @property
    def serving(self) -> bool:
        return self.status is ModelStatus.READY

    @property
    def provider(self) -> str | None:
        return self.session.provider if self.session else None

    @property
    def task(self) -> Task | None:
        return self.metadata.task if self.metadata else None

    @property
    def family(self) -> str | None:
        return self.model.family if self.model else None

    @property
    def metadata_source(self) -> str | None:
        return self.model.source if self.model else None

    @property
    def ready_model(self) -> ServedModel:
        """The served model of a ready entry (resolve() only hands out ready entries)."""
        if self.model is None or self.batcher is None:
            raise errors.model_unavailable(self.name, self.reason or "not loaded")
        return self.model


@dataclass
class ModelRegistry:
    settings: Settings
    stats_for: Callable[[str], BatchStats] = field(default=lambda name: BatchStats())
    events: ModelEvents = field(default_factory=ModelEvents)
    # Replaced as a whole, never changed in place: readers on other threads iterate a dict that stays whole.
    entries: dict[str, ModelEntry] = field(default_factory=dict)
    loading: bool = True
    closed: bool = False
    _sync_lock: threading.Lock = field(default_factory=threading.Lock)  # one load or sync at a time
    _hashes: dict[Path, tuple[tuple[int, int, int], str]] = field(default_factory=dict)  # stat -> sha256

    def discover(self) -> list[ModelEntry]:
        """List the model files (without loading them) so /v1/models shows them while loading."""
        self.entries = {p.stem: ModelEntry(name=p.stem, path=p) for p in self._model_files().values()}
        return list(self.entries.values())

    def load_all(self) -> None:
        """Load every discovered model; blocking, meant for a worker thread."""
        try:
            with self._sync_lock:
                for entry in self.discover():
                    self._load_into(entry)
                    self.events.on_loaded(entry)
                    self.events.on_published(entry, None)
        finally:
            self.loading = False
        ready = [e.name for e in self.entries.values() if e.status is ModelStatus.READY]
        failed = [e.name for e in self.entries.values() if e.status is ModelStatus.FAILED]
        log.info("models loaded", extra={"ready": ready, "failed": failed})

    # --- following the directory ----------------------------------------------------------------

    def sync(self, name: str | None = None) -> list[Change]:
        """Make the registry match the models directory (or only `name` in it); blocking, for a thread.
        New and changed files are loaded, removed ones retired; unchanged ones cost a stat()."""
        with self._sync_lock:
            files = self._model_files()
            names = sorted(set(files) | set(self.entries)) if name is None else [name]
            return [self._sync_one(n, files.get(n)) for n in names]

    def _sync_one(self, name: str, path: Path | None) -> Change:
        current = self.entries.get(name)
        files = self._file_state(path) if path is not None else None
        if files is None:  # no file, or it vanished while being read
            if current is None:
                return Change(name, ChangeKind.ABSENT)
            self._remove(current)
            return Change(name, ChangeKind.REMOVED)
        assert path is not None
        if current is not None and current.files == files:
            current.pending_failure = None  # the served file is back: nothing is pending any more
            return Change(name, ChangeKind.UNCHANGED, current.status, current.reason)
        if current is not None and current.pending_failure and current.pending_failure.files == files:
            return Change(name, ChangeKind.KEPT_PREVIOUS, current.status, current.pending_failure.reason)
        candidate = ModelEntry(name=name, path=path)
        self._load_into(candidate, files)
        self.events.on_loaded(candidate)
        if current is None:
            self._publish(candidate, None)
            return Change(name, ChangeKind.ADDED, candidate.status, candidate.reason)
        if current.serving and not candidate.serving:
            reason = candidate.reason or "failed to load"
            current.pending_failure = PendingFailure(files, reason, candidate.loaded_at or _now())
            log.error("model %s: the replacement is not served, the previous version stays: %s", name, reason)
            return Change(name, ChangeKind.KEPT_PREVIOUS, current.status, reason)
        self._publish(candidate, current)
        return Change(name, ChangeKind.REPLACED, candidate.status, candidate.reason)

    def _publish(self, entry: ModelEntry, previous: ModelEntry | None) -> None:
        """Serve `entry` from the next request on; `previous` finishes what it admitted, then stops."""
        self.entries = {**self.entries, entry.name: entry}
        if previous is not None and previous.batcher is not None:
            previous.batcher.retire()
        if self.closed and entry.batcher is not None:  # loaded while the server stopped
            entry.batcher.retire()
        self.events.on_published(entry, previous)

    def _remove(self, entry: ModelEntry) -> None:
        self.entries = {n: e for n, e in self.entries.items() if n != entry.name}
        if entry.batcher is not None:
            entry.batcher.retire()
        self.events.on_removed(entry)
        log.info("model removed: %s (its file is gone; in-flight requests finish)", entry.name)

    def _model_files(self) -> dict[str, Path]:
        models_dir = self.settings.models_dir
        paths = sorted(models_dir.glob("*.onnx")) if models_dir.is_dir() else []
        return {p.stem: p for p in paths}

    def _file_state(self, path: Path) -> FileState | None:
        try:
            model = self._sha256(path)
            sidecar = sidecar_path(path)
            description = self._sha256(sidecar) if sidecar.exists() else None
        except FileNotFoundError:
            return None
        return FileState(model, description)

    def _sha256(self, path: Path) -> str:
        """The file's SHA-256, hashed again only when its size, mtime or inode changed."""
        info = os.stat(path)
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        cached = self._hashes.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        digest = sha256_of(path)
        self._hashes[path] = (key, digest)
        return digest

    # --- loading one file -----------------------------------------------------------------------

    def _load_into(self, entry: ModelEntry, files: FileState | None = None) -> None:
        """Load the entry's file (status READY, FAILED or UNAVAILABLE), recording what was loaded."""
        try:
            entry.files = files or self._file_state(entry.path)
        except OSError as exc:
            self._fail(entry, f"the file could not be read: {exc}")
            return
        entry.loaded_at = _now()
        self._load(entry)

    def _load(self, entry: ModelEntry) -> None:
        started = time.perf_counter()
        try:
            session = open_session(entry.path, self.settings)
            model = recognise(entry.path, session, entry.files.model_sha256 if entry.files else None)
            metadata = model.metadata
            session = session_in_contract_order(session, metadata)
            entry.model = model
            if metadata.precision == "fp16" and session.provider == "CPUExecutionProvider":
                entry.metadata = metadata
                entry.status = ModelStatus.UNAVAILABLE
                entry.reason = ("an fp16 model needs a GPU execution provider; this host runs "
                                "CPUExecutionProvider (serve the fp32 or int8 variant here)")
                log.warning("model %s unavailable: %s", entry.name, entry.reason)
                return
            if model.family != "ultralytics":
                check_input_shape(session, metadata)
            if self.settings.verify_golden:
                verify_golden(session, metadata)
            policy = BatchPolicy(**self.settings.batch_policy_for(entry.name))  # type: ignore[arg-type]
            spec = metadata.input  # before readiness, so that no request is the slow first one of its shape
            warm_up(session, (spec.channels, spec.height, spec.width),
                    warmup_batch_sizes(self.settings, session, policy.max_batch_size))
        except (ContractError, GoldenDrift, ValueError) as exc:
            self._fail(entry, str(exc))
            return
        except Exception as exc:  # onnxruntime raises its own types for unreadable or invalid graphs
            self._fail(entry, f"ONNX Runtime could not load the file: {exc}")
            return
        entry.session, entry.metadata = session, metadata
        entry.batcher = DynamicBatcher(entry.name, session.run, policy, fixed_batch=session.fixed_batch,
                                       stats=self.stats_for(entry.name))
        entry.status = ModelStatus.READY
        entry.load_seconds = time.perf_counter() - started
        log.info("model ready: %s (%s on %s, %.2fs)", entry.name, metadata.task, session.provider,
                 entry.load_seconds)

    @staticmethod
    def _fail(entry: ModelEntry, reason: str) -> None:
        entry.status, entry.reason = ModelStatus.FAILED, reason
        log.error("model %s failed to load: %s", entry.name, reason)

    def close(self) -> None:
        self.closed = True  # a load still in progress retires its batcher as it publishes it
        for entry in self.entries.values():
            if entry.batcher:
                entry.batcher.close()

    # --- lookups used by the routes -------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self.entries)

    def default_name(self, task: Task) -> str | None:
        configured = self.settings.default_models.get(task.value)
        if configured:
            return configured
        of_task = [e for e in self.entries.values() if e.task is task]
        ready = [e for e in of_task if e.status is ModelStatus.READY]
        chosen = sorted(ready or of_task, key=lambda e: e.name)
        return chosen[0].name if chosen else None

    def get(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise errors.model_not_found(name, self.names())
        return entry

    def resolve(self, name: str | None, *tasks: Task) -> ModelEntry:
        """The ready model a request for one of `tasks` should use (default: the first task's default
        model, then the next's), or the error that says why there is none."""
        if self.loading and (name is None or name not in self.entries):
            raise errors.not_ready("models are still loading")
        chosen = name or next((d for d in map(self.default_name, tasks) if d), None)
        if chosen is None:
            raise errors.no_model_for_task(" or ".join(t.value for t in tasks))
        entry = self.get(chosen)
        if entry.status is ModelStatus.LOADING:
            raise errors.not_ready(f"model '{entry.name}' is still loading")
        if entry.status in (ModelStatus.FAILED, ModelStatus.UNAVAILABLE):
            raise errors.model_unavailable(entry.name, entry.reason or "failed to load")
        if entry.task not in tasks:
            raise errors.wrong_task(entry.name, str(entry.task), [str(t) for t in tasks])
        return entry

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /health/ready."""
        if self.loading:
            return False, "models are still loading"
        statuses = [e.status for e in self.entries.values()]
        if not statuses:
            return False, f"no *.onnx model files in {self.settings.models_dir}"
        failed = [e.name for e in self.entries.values() if e.status is ModelStatus.FAILED]
        if self.settings.require_all_models and failed:
            return False, f"STRIDE_REQUIRE_ALL_MODELS is set and these models failed: {', '.join(failed)}"
        if ModelStatus.READY not in statuses:
            return False, f"no model is usable; failed: {', '.join(failed)}"
        return True, "ok"


def _now() -> datetime:
    return datetime.now(UTC)


def session_in_contract_order(session: ModelSession, metadata: ModelMetadata) -> ModelSession:
    """Run the outputs in the order the contract lists them (a description may list them in any order)."""
    wanted = tuple(spec.name for spec in metadata.outputs)
    if set(wanted) <= set(session.output_names) and wanted != session.output_names[: len(wanted)]:
        return dataclasses.replace(session, output_names=wanted)
    return session


def check_input_shape(session: ModelSession, metadata: ModelMetadata) -> None:
    """The graph's input must be [N, C, H, W] as the metadata says (symbolic dims accepted)."""
    shape = session.session.get_inputs()[0].shape
    spec = metadata.input
    expected = (spec.channels, spec.height, spec.width)
    if len(shape) != 4:
        raise ValueError(f"input tensor has rank {len(shape)}, the contract needs [N, C, H, W]")
    for axis, (actual, wanted) in enumerate(zip(shape[1:], expected, strict=True), start=1):
        if isinstance(actual, int) and actual != wanted:
            raise ValueError(f"input axis {axis} is {actual} in the graph but {wanted} in the metadata")
