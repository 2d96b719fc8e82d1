"""How a model file is understood: which family it belongs to, and the contract that follows from it.

Order of precedence, most explicit first:
1. a description beside the file (`NAME.yaml` next to `NAME.onnx`): the user's own statement wins over
   anything embedded, so a wrong or missing embedded value can always be corrected without re-exporting;
2. Stride's own keys embedded in `metadata_props` (what `python -m training export` writes);
3. an Ultralytics YOLO export's own `metadata_props` (`task`, `names`, `imgsz`, ... as Python literals).
Anything else is refused with a reason that names the missing description and the `inspect` command.
"""

from __future__ import annotations

import json
from pathlib import Path

from service.contract import ContractError, from_metadata_props
from service.families.base import ClassifyQuery, EmbedQuery, Query, SemanticQuery, ServedModel
from service.families.described import SIDECAR_SUFFIX, described_model, file_version, sha256_of, sidecar_path
from service.families.stride import StrideModel
from service.families.ultralytics import NotUltralytics, UltralyticsModel, is_ultralytics, ultralytics_model
from service.runtime import ModelSession

__all__ = [
    "SIDECAR_SUFFIX",
    "ClassifyQuery",
    "EmbedQuery",
    "Query",
    "SemanticQuery",
    "ServedModel",
    "StrideModel",
    "UltralyticsModel",
    "file_version",
    "recognise",
    "sha256_of",
    "sidecar_path",
]


def recognise(path: Path, session: ModelSession, sha256: str | None = None) -> ServedModel:
    """The served model for a file, or ContractError saying what is missing and what to do. `sha256` is
    the file's digest when the caller has it (the registry does), so the file is not read twice."""
    props = session.custom_metadata
    sidecar = sidecar_path(path)
    if sidecar.exists():
        return described_model(sidecar, path, session, sha256)
    if _has_stride_keys(props):
        return StrideModel(from_metadata_props(props), source="embedded")
    if is_ultralytics(props):
        shapes = [list(o.shape) for o in session.session.get_outputs()]
        try:
            return ultralytics_model(props, list(session.session.get_inputs()[0].shape), shapes,
                                     list(session.output_names), source="ultralytics metadata",
                                     version=file_version(path, sha256))
        except NotUltralytics as exc:
            raise ContractError(f"looks like an Ultralytics export, but {exc}; describe it in "
                                f"{sidecar.name} (template: `python -m service inspect {path.name}`)") from exc
    raise ContractError(
        f"no description: the file carries neither Stride's metadata nor an Ultralytics export's; describe "
        f"it in {sidecar.name} beside it (run `python -m service inspect {path.name} --write` for a template "
        "to complete; docs/bring-your-own-model.md)"
    )


def _has_stride_keys(props: dict[str, str]) -> bool:
    """Stride's keys are JSON; an Ultralytics 'task' is a bare word, which is not."""
    if "task" not in props:
        return "contract_version" in props
    try:
        json.loads(props["task"])
    except json.JSONDecodeError:
        return False
    return True
