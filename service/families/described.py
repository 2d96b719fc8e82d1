"""Any ONNX model, described by a YAML file beside it (`resnet50.onnx` + `resnet50.yaml`).

The description states the same contract as Stride's embedded metadata (service.contract.ModelMetadata,
validated by the same pydantic model), with conveniences for files made elsewhere: `labels_file` (one
label per line, relative to the description), and `model_version`, `architecture` and `training_data`
optional. Errors name the file and the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from service.contract import ContractError, ModelMetadata
from service.families.stride import StrideModel
from service.runtime import ModelSession

SIDECAR_SUFFIX = ".yaml"
NOT_STATED = "not stated"


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(SIDECAR_SUFFIX)


def described_model(sidecar: Path, model_path: Path, session: ModelSession, sha256: str | None = None) -> StrideModel:
    fields = read_description(sidecar)
    fields.setdefault("model_version", file_version(model_path, sha256))
    fields.setdefault("architecture", model_path.stem)
    fields.setdefault("training_data", NOT_STATED)
    try:
        metadata = ModelMetadata.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ContractError(f"{sidecar.name}: {problems}") from exc
    _check_output_names(metadata, session, sidecar)
    return StrideModel(metadata, source=f"sidecar {sidecar.name}")


def read_description(sidecar: Path) -> dict[str, Any]:
    try:
        fields = yaml.safe_load(sidecar.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ContractError(f"{sidecar.name}: not valid YAML ({exc})") from exc
    if not isinstance(fields, dict):
        raise ContractError(f"{sidecar.name}: expected a mapping of contract fields at the top level")
    labels_file = fields.pop("labels_file", None)
    if labels_file is not None:
        if "labels" in fields:
            raise ContractError(f"{sidecar.name}: give either labels or labels_file, not both")
        path = sidecar.parent / str(labels_file)
        if not path.is_file():
            raise ContractError(f"{sidecar.name}: labels_file: {labels_file} not found beside the description")
        fields["labels"] = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return fields


def _check_output_names(metadata: ModelMetadata, session: ModelSession, sidecar: Path) -> None:
    names = set(session.output_names)
    for spec in metadata.outputs:
        if spec.name not in names:
            raise ContractError(f"{sidecar.name}: outputs: '{spec.name}' is not an output of the graph "
                                f"(it has {', '.join(sorted(names))})")


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_version(path: Path, sha256: str | None = None) -> str:
    """The version of a file that states none: the first 12 hex digits of its SHA-256 (given when the
    caller has hashed the file already)."""
    return (sha256 or sha256_of(path))[:12]


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def template_for(model_path: Path, session: ModelSession) -> dict[str, Any]:
    """A description to complete, guessed from the graph's shapes: the task from the outputs' ranks,
    the input size from the graph, torchvision's ImageNet preprocessing for 3-channel classifiers."""
    shape = list(session.session.get_inputs()[0].shape)
    channels = shape[1] if len(shape) == 4 and shape[1] in (1, 3) else 3
    height = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else 224
    width = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else 224
    outputs = session.session.get_outputs()
    ranks = [len(o.shape) for o in outputs]
    first = list(outputs[0].shape)
    classes = first[1] if len(first) >= 2 and isinstance(first[1], int) else None
    if ranks[0] == 4:
        task, specs = "semantic_segmentation", [{"name": outputs[0].name, "layout": "batch,class,height,width",
                                                  "kind": "logits"}]
    elif ranks[0] == 2:
        task, specs = "classification", [{"name": outputs[0].name, "layout": "batch,class", "kind": "logits"}]
    else:
        task = "detection"
        specs = [{"name": o.name, "layout": "batch,candidate,4" if o.shape[-1] == 4 else "batch,candidate,class",
                  "kind": "boxes" if o.shape[-1] == 4 else "scores"} for o in outputs]
    imagenet = channels == 3 and task == "classification"
    template: dict[str, Any] = {
        "task": task,
        "labels": [f"class{i}" for i in range(classes)] if isinstance(classes, int) and classes < 50 else None,
        "labels_file": f"{model_path.stem}.labels.txt" if not (isinstance(classes, int) and classes < 50) else None,
        "input": {
            "name": session.input_name,
            "height": height,
            "width": width,
            "channels": channels,
            "resize": "center_crop" if imagenet else ("letterbox" if task == "detection" else "stretch"),
            "crop_fraction": 0.875 if imagenet else 1.0,
            "interpolation": "bilinear",
            "scale": 1 / 255,
            "mean": list(IMAGENET_MEAN) if channels == 3 else [0.5],
            "std": list(IMAGENET_STD) if channels == 3 else [0.5],
            "dynamic_batch": not isinstance(shape[0], int),
        },
        "outputs": specs,
    }
    if task == "detection":
        template["detection"] = {"confidence": 0.25, "iou": 0.45, "max_detections": 100}
    return {key: value for key, value in template.items() if value is not None}
