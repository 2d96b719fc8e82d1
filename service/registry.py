"""The model registry: every *.onnx in the models directory, loaded once, with a status and a reason.

A model that fails to load (bad file, contract violation, golden-sample drift) is reported and kept out
of service; it never stops the others from loading.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from service import errors
from service.batching import BatchPolicy, BatchStats, DynamicBatcher
from service.config import Settings
from service.contract import ContractError, ModelMetadata, Task
from service.families import ServedModel, recognise
from service.golden import GoldenDrift, verify_golden
from service.runtime import ModelSession, open_session

log = logging.getLogger(__name__)


class ModelStatus(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # valid, but not for this host (an fp16 model without a GPU provider)


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
    entries: dict[str, ModelEntry] = field(default_factory=dict)
    loading: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def discover(self) -> list[ModelEntry]:
        """List the model files (without loading them) so /v1/models shows them while loading."""
        models_dir = self.settings.models_dir
        paths = sorted(models_dir.glob("*.onnx")) if models_dir.is_dir() else []
        with self._lock:
            self.entries = {p.stem: ModelEntry(name=p.stem, path=p) for p in paths}
            return list(self.entries.values())

    def load_all(self) -> None:
        """Load every discovered model; blocking, meant for a worker thread."""
        try:
            for entry in self.discover():
                self._load(entry)
        finally:
            self.loading = False
        ready = [e.name for e in self.entries.values() if e.status is ModelStatus.READY]
        failed = [e.name for e in self.entries.values() if e.status is ModelStatus.FAILED]
        log.info("models loaded", extra={"ready": ready, "failed": failed})

    def _load(self, entry: ModelEntry) -> None:
        started = time.perf_counter()
        try:
            session = open_session(entry.path, self.settings)
            model = recognise(entry.path, session)
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
