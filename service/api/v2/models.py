"""Which model a protocol request names, and what its tensors are, read from the ONNX Runtime session."""

from __future__ import annotations

from dataclasses import dataclass

from service.api.v2 import datatypes
from service.api.v2.errors import version_not_found
from service.api.v2.schemas import ModelMetadataResponse, TensorMetadata
from service.contract import Task
from service.registry import ModelEntry, ModelRegistry, ModelStatus

# The protocol's name for the backend that runs the model (Triton's platform string for ONNX Runtime).
PLATFORM = "onnxruntime_onnx"
DYNAMIC = -1


@dataclass(frozen=True, slots=True)
class Signature:
    """A model's input and outputs as the protocol describes them."""

    input: TensorMetadata
    outputs: tuple[TensorMetadata, ...]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def servable_model(registry: ModelRegistry, name: str, version: str | None) -> ModelEntry:
    """The ready model a metadata or inference request names (404 unknown model or version, 503 while it
    loads or when it failed)."""
    entry = registry.resolve(name, *Task)
    check_version(entry, version)
    return entry


def check_version(entry: ModelEntry, version: str | None) -> None:
    if not version or entry.metadata is None:
        return
    if version != entry.metadata.model_version:
        raise version_not_found(entry.name, version, entry.metadata.model_version)


def is_ready(entry: ModelEntry) -> bool:
    return entry.status is ModelStatus.READY


def signature(entry: ModelEntry) -> Signature:
    """Datatypes and shapes from the session; a symbolic axis is -1. The batch axis may be fixed in the
    graph: Stride's batcher still takes any number of items and runs them in graph-sized batches."""
    assert entry.session is not None and entry.metadata is not None
    session = entry.session.session
    (graph_input,) = session.get_inputs()
    spec = entry.metadata.input
    # Symbolic image axes are served at the contract's size: items of one size are what the batcher stacks.
    item_shape = [spec.channels, spec.height, spec.width]
    input_shape = [_dim(graph_input.shape[0]), *item_shape]
    return Signature(
        input=TensorMetadata(name=graph_input.name, datatype=datatypes.from_onnx_runtime(graph_input.type),
                             shape=input_shape),
        outputs=tuple(
            TensorMetadata(name=o.name, datatype=datatypes.from_onnx_runtime(o.type), shape=[_dim(d) for d in o.shape])
            for o in session.get_outputs()
        ),
    )


def model_metadata(entry: ModelEntry) -> ModelMetadataResponse:
    assert entry.metadata is not None
    described = signature(entry)
    return ModelMetadataResponse(name=entry.name, versions=[entry.metadata.model_version], platform=PLATFORM,
                         inputs=[described.input], outputs=list(described.outputs))


def _dim(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else DYNAMIC
