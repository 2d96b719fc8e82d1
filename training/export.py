"""Checkpoint -> one self-contained ONNX file that the service can serve and verify.

Steps, each a function below:
  1. trace with torch.onnx.export (the dynamo exporter; TorchScript exporter as a fallback), with a
     dynamic batch axis, the input named by the InputSpec and the output named "logits";
  2. check the graph (onnx.checker, full_check) and numerical parity with PyTorch on real test inputs;
  3. write the Stride metadata (service.contract) with golden samples, save, evaluate the saved file with
     ONNX Runtime on the held-out test split, then write those metrics into the metadata and save again;
  4. re-open the final file as the service would and replay the golden samples.
"""

from __future__ import annotations

import base64
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from service.contract import (
    Golden,
    GoldenSample,
    ModelMetadata,
    OutputSpec,
    Task,
    from_metadata_props,
    to_metadata_props,
)
from service.preprocess import prepare
from training.checkpoint import Checkpoint
from training.data import ImageSet, ImageSplits, load_dataset, render_batch
from training.evaluate import EvalReport, evaluate_onnx, open_session, run_logits
from training.models import count_parameters, get_arch

log = logging.getLogger(__name__)

OPSET = 18
OUTPUT_NAME = "logits"
PARITY_ATOL = 1e-4  # max |ORT - PyTorch| on logits, float32 on CPU
GOLDEN_ATOL = 1e-3  # what the service tolerates when it replays golden samples at load time
GOLDEN_COUNT = 8


class ExportError(RuntimeError):
    """The exported file is not faithful to the PyTorch model (graph invalid, parity or metadata)."""


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    test: EvalReport  # measured through ONNX Runtime on the saved file
    parity_max_abs_diff: float
    file_bytes: int
    exporter: str  # "dynamo" or "torchscript"
    parameters: int


def trace_to_onnx(model: nn.Module, example: torch.Tensor, input_name: str) -> tuple[onnx.ModelProto, str]:
    """Export `model` (eval mode) with a dynamic batch axis. example: [B, C, H, W], B >= 2 so the batch
    size is not specialised to 1. Returns the in-memory model and which exporter produced it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecation chatter
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[input_name],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                optimize=True,  # folds constants, e.g. LeNet's C3 weight * mask into one tensor
                verbose=False,
            )
        assert program is not None
        proto = program.model_proto
        if _uses_external_data(proto):
            raise ExportError("dynamo exporter produced external data")
        return proto, "dynamo"
    except Exception as exc:  # the exporter raises many types; any failure means: try the old path
        log.warning(
            "dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter", type(exc).__name__, exc
        )
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=[input_name],
        output_names=[OUTPUT_NAME],
        opset_version=OPSET,
        dynamo=False,
        dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    return onnx.load_model_from_string(buffer.getvalue()), "torchscript"


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node and per-value metadata (source stack traces with absolute paths, FX
    node dumps): it is a third of the file, leaks the build machine's paths and changes with every
    edit of the source, so identical weights would not give identical files."""
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info, *proto.graph.initializer]:
        del value.metadata_props[:]
    del proto.graph.metadata_props[:]


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


@torch.no_grad()
def check_parity(proto: onnx.ModelProto, model: nn.Module, x: np.ndarray) -> float:
    """Max |ORT - PyTorch| over the logits of x [N, C, H, W]; also runs batch sizes 1 and 7 through ORT
    to prove the batch axis is dynamic. Raises ExportError above PARITY_ATOL."""
    session = open_session(proto.SerializeToString())
    worst = 0.0
    for batch in (x, x[:1], x[:7]):
        expected = model(torch.from_numpy(batch)).numpy()  # [b, classes]
        got = run_logits(session, batch, batch_size=len(batch))
        if got.shape != expected.shape:
            raise ExportError(f"ORT output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > PARITY_ATOL:
        raise ExportError(f"ORT vs PyTorch max abs diff {worst:.3g} > {PARITY_ATOL}")
    return worst


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pick_golden(subset: ImageSet, count: int = GOLDEN_COUNT) -> list[int]:
    """Positions in `subset` of the first image of each class, classes in order, up to `count`."""
    picked: list[int] = []
    for cls in np.unique(subset.targets):
        picked.append(int(np.flatnonzero(subset.targets == cls)[0]))
        if len(picked) == count:
            break
    return picked


@torch.no_grad()
def golden_samples(model: nn.Module, checkpoint: Checkpoint, subset: ImageSet) -> Golden:
    """Test images exactly as a user would POST them (the original image, PNG) and the PyTorch logits
    for `prepare(image)`, so the service can check at load time that its preprocessing + runtime match."""
    samples = []
    for i in pick_golden(subset):
        image = subset.images[i]
        x, _ = prepare(image, checkpoint.input_spec)  # [C, H, W]
        logits = model(torch.from_numpy(x)[None])[0]  # [classes]
        samples.append(GoldenSample(image_png_base64=png_base64(image), expected=logits.tolist()))
    return Golden(atol=GOLDEN_ATOL, samples=samples)


def describe_architecture(checkpoint: Checkpoint) -> str:
    options = ", ".join(f"{k}={v}" for k, v in checkpoint.arch_config.items())
    return f"{checkpoint.arch}: {get_arch(checkpoint.arch).title}; {options}"


def write_metadata(proto: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Replace the Stride keys in `proto.metadata_props`, keeping any other tool's keys."""
    props = to_metadata_props(meta)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in ModelMetadata.model_fields]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        proto.metadata_props.add(key=key, value=value)


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def verify_saved(path: Path, expected: ModelMetadata) -> None:
    """Read the file back as the service does: metadata via ORT, golden samples via PNG decode ->
    service.preprocess.prepare -> ORT."""
    session = open_session(path)
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    if meta != expected:
        raise ExportError("metadata read back from the saved file differs from what was written")
    assert meta.golden is not None
    input_name = session.get_inputs()[0].name
    for n, sample in enumerate(meta.golden.samples):
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert(meta.input.color_mode)
        x, _ = prepare(image, meta.input)
        got = session.run(None, {input_name: x[None]})[0].ravel()
        diff = float(np.abs(got - np.asarray(sample.expected, dtype=np.float32)).max())
        if diff > meta.golden.atol:
            raise ExportError(f"golden sample {n}: max abs diff {diff:.3g} > atol {meta.golden.atol}")


def load_checkpoint_splits(checkpoint: Checkpoint) -> ImageSplits:
    """The data split a checkpoint was trained on, rebuilt from its source; for a folder dataset the
    file lists must match the ones recorded at training time (files added or removed since: an error)."""
    splits = load_dataset(checkpoint.data["name"], checkpoint.data["split_seed"])
    recorded = checkpoint.data.get("split")
    if recorded is not None:
        files = splits.extra["files"]
        for part in ("train", "val", "test"):
            now = [files[i] for i in getattr(splits, part).source_indices]  # type: ignore[index]
            if now != list(recorded[part]):
                raise ExportError(
                    f"the {part} files under {checkpoint.data['name']} differ from those recorded in the "
                    "checkpoint; export from the data as it was at training time"
                )
    return splits


def export_checkpoint(
    checkpoint: Checkpoint,
    out_path: str | Path,
    splits: ImageSplits | None = None,
    model_version: str = "1.0.0",
    parity_samples: int = 64,
) -> ExportResult:
    """Export, verify and annotate `checkpoint` as `out_path`; metrics come from the held-out test split
    of the data it was trained on (rebuilt from the checkpoint unless `splits` is given)."""
    out_path = Path(out_path)
    splits = splits or load_dataset(checkpoint.data["name"], checkpoint.data["split_seed"])
    if list(splits.labels) != list(checkpoint.labels):
        raise ExportError(f"data labels {splits.labels} != checkpoint labels {checkpoint.labels}")
    model = checkpoint.build_model()
    spec = checkpoint.input_spec
    x_test = render_batch(splits.test.images[:parity_samples], spec)  # [n, C, H, W], real inputs

    proto, exporter = trace_to_onnx(model, torch.from_numpy(x_test[:8]), spec.name)
    strip_debug_info(proto)
    onnx.checker.check_model(proto, full_check=True)
    parity = check_parity(proto, model, x_test)

    meta = ModelMetadata(
        task=Task.CLASSIFICATION,
        labels=list(checkpoint.labels),
        input=spec,
        outputs=[OutputSpec(name=OUTPUT_NAME, layout="batch,class", kind="logits")],
        model_version=model_version,
        architecture=describe_architecture(checkpoint),
        training_data=checkpoint.data.get("description", checkpoint.data["name"]),
        golden=golden_samples(model, checkpoint, splits.test),
    )
    proto.doc_string = f"{get_arch(checkpoint.arch).title}, exported by Stride's training package"
    write_metadata(proto, meta)
    save_model(proto, out_path)

    # Metrics of the saved file itself, through ONNX Runtime and the service's preprocessing.
    test = evaluate_onnx(out_path, splits.test.images, splits.test.targets)
    meta = meta.model_copy(update={"metrics": test.headline_metrics()})
    write_metadata(proto, meta)
    save_model(proto, out_path)
    onnx.checker.check_model(str(out_path), full_check=True)
    verify_saved(out_path, meta)

    return ExportResult(
        path=out_path,
        metadata=meta,
        test=test,
        parity_max_abs_diff=parity,
        file_bytes=out_path.stat().st_size,
        exporter=exporter,
        parameters=count_parameters(model),
    )
