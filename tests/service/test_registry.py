"""Loading rules: contract violations, golden drift and shape mismatches fail one model, not the service."""

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from PIL import Image

from service.config import Settings
from service.contract import InputSpec
from service.registry import ChangeKind, ModelEntry, ModelEvents, ModelRegistry, ModelStatus
from tests.conftest import TINY_SPEC, golden_for, tiny_classifier_graph, tiny_metadata, write_model


def load(models_dir: Path, **settings: object) -> ModelRegistry:
    registry = ModelRegistry(Settings(models_dir=models_dir, providers=["CPUExecutionProvider"], **settings))
    registry.load_all()
    return registry


def test_good_model_loads_on_cpu(tiny_model_dir: Path) -> None:
    entry = load(tiny_model_dir).get("tiny")
    assert entry.status is ModelStatus.READY and entry.provider == "CPUExecutionProvider"
    assert entry.load_seconds is not None


def test_model_without_metadata_is_failed_with_a_reason(tmp_path: Path) -> None:
    write_model(tmp_path / "bare.onnx", tiny_classifier_graph(), None)
    entry = load(tmp_path).get("bare")
    assert entry.status is ModelStatus.FAILED
    assert "bare.yaml" in entry.reason and "python -m service inspect bare.onnx" in entry.reason


def test_golden_drift_refuses_the_model(tmp_path: Path) -> None:
    graph = tiny_classifier_graph()
    golden = golden_for(graph, TINY_SPEC, [Image.new("L", (8, 8), 200)])
    tampered = golden.model_copy(update={"samples": [golden.samples[0].model_copy(
        update={"expected": [v + 0.01 for v in golden.samples[0].expected]})]})
    write_model(tmp_path / "drift.onnx", graph, tiny_metadata(golden=tampered))
    write_model(tmp_path / "fine.onnx", graph, tiny_metadata(golden=golden))
    registry = load(tmp_path)
    drift = registry.get("drift")
    assert drift.status is ModelStatus.FAILED
    assert "golden sample 0 drifted" in (drift.reason or "") and "preprocessing" in (drift.reason or "")
    assert registry.get("fine").status is ModelStatus.READY
    assert registry.readiness() == (True, "ok")


def test_preprocessing_drift_is_caught(tmp_path: Path) -> None:
    """Golden outputs recorded with one normalisation, served with another: the check must notice."""
    graph = tiny_classifier_graph()
    recorded = TINY_SPEC.model_copy(update={"mean": (0.45,)})
    golden = golden_for(graph, recorded, [Image.new("L", (8, 8), 180)])
    write_model(tmp_path / "m.onnx", graph, tiny_metadata(golden=golden))  # metadata says mean 0.5
    entry = load(tmp_path).get("m")
    assert entry.status is ModelStatus.FAILED, "drift between recorded and served preprocessing went unseen"
    assert load(tmp_path, verify_golden=False).get("m").status is ModelStatus.READY


def test_input_shape_must_match_the_metadata(tmp_path: Path) -> None:
    graph = tiny_classifier_graph(InputSpec(height=4, width=16, channels=1, resize="stretch", mean=(0,), std=(1,)))
    write_model(tmp_path / "shape.onnx", graph, tiny_metadata())  # metadata says 8x8
    entry = load(tmp_path).get("shape")
    assert entry.status is ModelStatus.FAILED and "input axis 2" in (entry.reason or "")


# --- following the directory: sync() ------------------------------------------------------------

def write_version(path: Path, version: str) -> Path:
    """A good tiny classifier whose metadata says `version` (so each version is a different file)."""
    graph = tiny_classifier_graph()
    golden = golden_for(graph, TINY_SPEC, [Image.new("L", (8, 8), 30)])
    return write_model(path, graph, tiny_metadata(model_version=version, golden=golden))


def write_drifting(path: Path) -> Path:
    graph = tiny_classifier_graph()
    golden = golden_for(graph, TINY_SPEC, [Image.new("L", (8, 8), 200)])
    tampered = golden.model_copy(update={"samples": [golden.samples[0].model_copy(
        update={"expected": [v + 0.5 for v in golden.samples[0].expected]})]})
    return write_model(path, graph, tiny_metadata(golden=tampered))


@dataclass
class RecordedEvents:
    loads: list[tuple[str, str]] = field(default_factory=list)
    published: list[tuple[str, bool]] = field(default_factory=list)  # (name, replaced something)
    removed: list[str] = field(default_factory=list)

    def hooks(self) -> ModelEvents:
        return ModelEvents(on_loaded=lambda e: self.loads.append((e.name, e.status.value)),
                           on_published=lambda new, old: self.published.append((new.name, old is not None)),
                           on_removed=lambda e: self.removed.append(e.name))


def registry_on(models_dir: Path, events: RecordedEvents | None = None) -> ModelRegistry:
    registry = ModelRegistry(Settings(models_dir=models_dir, providers=["CPUExecutionProvider"]),
                             events=(events or RecordedEvents()).hooks())
    registry.load_all()
    return registry


def test_sync_of_an_empty_directory_changes_nothing(tmp_path: Path) -> None:
    registry = registry_on(tmp_path)
    assert registry.sync() == [] and registry.entries == {}


def test_an_unchanged_directory_loads_nothing_again(tmp_path: Path) -> None:
    write_version(tmp_path / "m.onnx", "v1")
    events = RecordedEvents()
    registry = registry_on(tmp_path, events)
    os.utime(tmp_path / "m.onnx")  # a touch: new mtime, same bytes
    assert [c.kind for c in registry.sync()] == [ChangeKind.UNCHANGED]
    assert events.loads == [("m", "ready")]


@pytest.mark.parametrize(("version", "kind"), [("v1", ChangeKind.UNCHANGED), ("v2", ChangeKind.REPLACED)])
def test_a_changed_file_is_swapped_in_and_the_old_batcher_retires(tmp_path: Path, version: str,
                                                                  kind: ChangeKind) -> None:
    write_version(tmp_path / "m.onnx", "v1")
    events = RecordedEvents()
    registry = registry_on(tmp_path, events)
    old = registry.get("m")
    in_flight = old.batcher.admit()  # a request admitted on the old version before the swap
    write_version(tmp_path / "m.onnx", version)
    (change,) = registry.sync()
    new = registry.get("m")
    assert change.kind is kind
    assert new.metadata.model_version == version and new.status is ModelStatus.READY
    if kind is ChangeKind.REPLACED:
        assert new is not old and new.sha256 != old.sha256 and new.loaded_at >= old.loaded_at
        assert old.batcher.running, "the old version must finish its in-flight request"
        in_flight.__exit__(None, None, None)
        assert not old.batcher.running and new.batcher.running
        assert events.published[-1] == ("m", True)
    else:
        assert new is old
        in_flight.__exit__(None, None, None)
    registry.close()


BROKEN_REPLACEMENTS = {
    "not an onnx file": lambda path: path.write_bytes(b"this is not a model"),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:200]),
    "golden drift": write_drifting,
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_REPLACEMENTS))
def test_a_broken_replacement_leaves_the_previous_version_serving(tmp_path: Path, breakage: str) -> None:
    path = write_version(tmp_path / "m.onnx", "v1")
    good_bytes = path.read_bytes()
    events = RecordedEvents()
    registry = registry_on(tmp_path, events)
    serving = registry.get("m")
    BROKEN_REPLACEMENTS[breakage](path)

    (change,) = registry.sync()
    assert change.kind is ChangeKind.KEPT_PREVIOUS and change.reason
    assert registry.resolve("m", serving.task) is serving and serving.batcher.running
    assert serving.pending_failure is not None and serving.pending_failure.reason == change.reason
    assert serving.pending_failure.files.model_sha256 != serving.sha256

    assert [c.kind for c in registry.sync()] == [ChangeKind.KEPT_PREVIOUS]
    assert len(events.loads) == 2, "the same broken file must not be loaded again on every sync"

    path.write_bytes(good_bytes)  # the served file is back
    assert [c.kind for c in registry.sync()] == [ChangeKind.UNCHANGED]
    assert registry.get("m") is serving and serving.pending_failure is None
    registry.close()


def test_a_removed_file_stops_serving_after_its_in_flight_requests(tmp_path: Path) -> None:
    path = write_version(tmp_path / "m.onnx", "v1")
    events = RecordedEvents()
    registry = registry_on(tmp_path, events)
    old = registry.get("m")
    in_flight = old.batcher.admit()
    path.unlink()
    assert [c.kind for c in registry.sync()] == [ChangeKind.REMOVED]
    assert registry.names() == [] and events.removed == ["m"]
    with pytest.raises(Exception) as gone:
        registry.resolve("m", old.task)
    assert getattr(gone.value, "status", None) == 404
    assert old.batcher.running
    in_flight.__exit__(None, None, None)
    assert not old.batcher.running


def test_new_files_are_added_and_a_failed_one_can_be_fixed(tmp_path: Path) -> None:
    registry = registry_on(tmp_path)
    write_version(tmp_path / "a.onnx", "v1")
    write_drifting(tmp_path / "b.onnx")
    changes = {c.model: c for c in registry.sync()}
    assert changes["a"].kind is ChangeKind.ADDED and changes["a"].status is ModelStatus.READY
    assert changes["b"].kind is ChangeKind.ADDED and changes["b"].status is ModelStatus.FAILED
    write_version(tmp_path / "b.onnx", "v2")
    (fixed,) = registry.sync("b")
    assert fixed.kind is ChangeKind.REPLACED and registry.get("b").status is ModelStatus.READY
    registry.close()


def test_a_changed_description_reloads_its_model(tmp_path: Path) -> None:
    write_model(tmp_path / "d.onnx", tiny_classifier_graph(), None)
    description = tiny_metadata().model_dump(mode="json", exclude_none=True)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(description))
    registry = registry_on(tmp_path)
    assert registry.get("d").metadata.labels == ["dark", "mid", "bright"]
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(description | {"labels": ["black", "grey", "white"]}))
    assert [c.kind for c in registry.sync()] == [ChangeKind.REPLACED]
    entry: ModelEntry = registry.get("d")
    assert entry.metadata.labels == ["black", "grey", "white"] and entry.files.description_sha256
    registry.close()


def test_sync_of_one_name_without_file_or_model_is_absent(tmp_path: Path) -> None:
    registry = registry_on(tmp_path)
    assert [c.kind for c in registry.sync("nothing")] == [ChangeKind.ABSENT]
