"""Checkpoint of any task -> one self-contained ONNX file the service can serve and verify, and its variants.

One place for the opset, the exporter, the parity and golden tolerances and the checks; the task plug-in
only says what its outputs and metadata are, which images are real inputs, and how to evaluate. Steps:
  1. trace the task's exportable module with torch.onnx.export (the dynamo exporter; TorchScript as a
     fallback) with a dynamic batch axis, the input named by the InputSpec, outputs named by the task;
  2. check the graph (onnx.checker, full_check) and numerical parity with PyTorch per output on real
     inputs, at batch sizes N, 1 and 5 (the batch axis really is dynamic);
  3. write the Stride metadata (service.contract) with golden samples, evaluate the file itself through
     ONNX Runtime and the service's decoders on held-out data (the task's `evaluate`), write those
     metrics into the metadata and save;
  4. re-open the saved file as the service does and replay the golden samples.
Variants: NAME-int8.onnx (ONNX Runtime static QDQ quantisation, calibrated on real inputs, its own golden
outputs and metrics) and NAME-fp16.onnx (float16 weights and compute, float32 input and output, for GPU
providers; the fp32 golden outputs with a looser tolerance, metrics only where it can run).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

from service.contract import (
    Golden,
    GoldenSample,
    InputSpec,
    ModelMetadata,
    Task,
    from_metadata_props,
    to_metadata_props,
)
from training.checkpoint import Checkpoint
from training.data.base import render_batch
from training.registry import count_parameters, get_arch
from training.tasks import get_task
from training.tasks.base import EvalRequest, Evaluation

log = logging.getLogger(__name__)

OPSET = 18
PARITY_SAMPLES = 16  # real inputs the parity check runs (plus batch sizes 1 and 5 of them)
GOLDEN_SEED = 2000  # seed of the images parity and golden samples use, for tasks that generate them
INT8_GOLDEN_ATOL = 0.05
FP16_GOLDEN_ATOL = 0.05
CALIBRATION_IMAGES = 256


class ExportError(RuntimeError):
    """The exported file is not faithful to the PyTorch model (graph invalid, parity or metadata)."""


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    evaluation: Evaluation  # measured through ONNX Runtime on the saved file
    parity: dict[str, float]  # max |ORT - PyTorch| per output
    file_bytes: int
    exporter: str  # "dynamo" or "torchscript"
    parameters: int
    eval_seconds: float


@dataclass
class VariantResult:
    path: Path
    precision: str
    metadata: ModelMetadata
    evaluation: Evaluation | None  # None when the variant cannot run on this host (fp16 on CPU)
    file_bytes: int


def open_session(model: str | Path | bytes) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def read_metadata(model: str | Path | bytes) -> ModelMetadata:
    """The Stride metadata of a file (or serialised model) as the service reads it."""
    if isinstance(model, bytes):
        props = {p.key: p.value for p in onnx.load_model_from_string(model).metadata_props}
    else:
        props = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    return from_metadata_props(props)


def run_outputs(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """x: [N, C, H, W] float32 -> every output with its batch axis, in the session's output order."""
    input_name = session.get_inputs()[0].name
    chunks = [session.run(None, {input_name: x[i : i + batch_size]}) for i in range(0, len(x), batch_size)]
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def as_tuple(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)


def trace_to_onnx(
    model: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str]
) -> tuple[onnx.ModelProto, str]:
    """Export `model` (eval mode) with a dynamic batch axis; the other output axes are fixed to the sizes
    PyTorch gives for `example` ([B, C, H, W], B >= 2 so the batch is not specialised to 1)."""
    proto, exporter = _dynamo(model, example, input_name, output_names)
    if proto is None:
        proto, exporter = _torchscript(model, example, input_name, output_names), "torchscript"
    with torch.no_grad():
        shapes = [t.shape for t in as_tuple(model(example))]
    for output, shape in zip(proto.graph.output, shapes, strict=True):
        for k, dim in enumerate(output.type.tensor_type.shape.dim):
            if k > 0:
                dim.Clear()
                dim.dim_value = int(shape[k])
    return proto, exporter


def _dynamo(
    model: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str]
) -> tuple[onnx.ModelProto | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-internal deprecation chatter
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[input_name],
                output_names=output_names,
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                optimize=True,  # folds constants, e.g. LeNet's C3 weight * mask into one tensor
                verbose=False,
            )
        assert program is not None
        proto = program.model_proto
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            raise ExportError("dynamo exporter produced external data")
        return proto, "dynamo"
    except Exception as exc:  # the exporter raises many types; any failure means: try the TorchScript path
        log.warning(
            "dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter", type(exc).__name__, exc
        )
        return None, ""


def _torchscript(model: nn.Module, example: torch.Tensor, input_name: str, output_names: list[str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[input_name],
            output_names=output_names,
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}},
        )
    return onnx.load_model_from_string(buffer.getvalue())


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node and per-value metadata (source stack traces with absolute paths, FX
    node dumps): it is a third of the file, leaks the build machine's paths and changes with every
    edit of the source, so identical weights would not give identical files."""
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info, *proto.graph.initializer]:
        del value.metadata_props[:]
    del proto.graph.metadata_props[:]


@torch.no_grad()
def check_parity(
    proto: onnx.ModelProto, model: nn.Module, x: np.ndarray, atol: Mapping[str, float]
) -> dict[str, float]:
    """Max |ORT - PyTorch| per output over x [N, C, H, W] and its first 1 and 5 (the batch axis is dynamic);
    raises ExportError above the output's tolerance."""
    session = open_session(proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    for batch in (x, x[:1], x[:5]):
        expected = [t.numpy() for t in as_tuple(model(torch.from_numpy(batch)))]
        got = run_outputs(session, batch, batch_size=len(batch))
        for name, e, g in zip(names, expected, got, strict=True):
            if g.shape != e.shape:
                raise ExportError(f"{name}: ORT output shape {g.shape} != PyTorch {e.shape}")
            worst[name] = max(worst[name], float(np.abs(g - e).max()) if e.size else 0.0)
    for name, diff in worst.items():
        if diff > atol[name]:
            raise ExportError(f"parity: {name} max abs diff {diff:.3g} > {atol[name]} (ORT vs PyTorch)")
    return worst


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@torch.no_grad()
def golden_samples(model: nn.Module, spec: InputSpec, images: Sequence[Image.Image], atol: float) -> Golden:
    """Images exactly as a user would POST them (PNG) and the PyTorch model's first output for
    `prepare(image)`, flattened, so the service checks at load time that its preprocessing + runtime match."""
    samples = []
    for image in images:
        x = render_batch([image.convert(spec.color_mode)], spec)
        first = as_tuple(model(torch.from_numpy(x)))[0][0]
        # Rounded to atol/20: full-precision floats made a 128x128 segmenter's metadata 6.9 MB.
        decimals = math.ceil(-math.log10(atol)) + 1
        expected = np.round(first.reshape(-1).numpy().astype(np.float64), decimals).tolist()
        samples.append(GoldenSample(image_png_base64=png_base64(image), expected=expected))
    return Golden(atol=atol, samples=samples)


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
    service.preprocess.prepare -> ORT, first output flattened."""
    session = open_session(path)
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    if meta != expected:
        raise ExportError("metadata read back from the saved file differs from what was written")
    assert meta.golden is not None
    for n, sample in enumerate(meta.golden.samples):
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert(meta.input.color_mode)
        got = run_outputs(session, render_batch([image], meta.input))[0].ravel()
        diff = float(np.abs(got - np.asarray(sample.expected, dtype=np.float32)).max())
        if diff > meta.golden.atol:
            raise ExportError(f"golden sample {n}: max abs diff {diff:.3g} > atol {meta.golden.atol}")


def describe_architecture(checkpoint: Checkpoint, parameters: int) -> str:
    options = ", ".join(f"{k}={v}" for k, v in checkpoint.arch_config.items())
    return f"{checkpoint.arch}: {get_arch(checkpoint.arch).title}; {options}; {parameters:,} parameters"


def export_checkpoint(
    checkpoint: Checkpoint, out_path: str | Path, model_version: str = "1.0.0", evaluation: EvalRequest | None = None
) -> ExportResult:
    """Export, verify and annotate `checkpoint` as `out_path`; its metrics come from the task's held-out
    evaluation of the saved file (`evaluation`, default: the task's own held-out data)."""
    out_path = Path(out_path)
    task = get_task(checkpoint.task)
    model = task.exportable(checkpoint).eval()
    spec = checkpoint.input_spec
    outputs = task.outputs(checkpoint)
    x = render_batch(
        [im.convert(spec.color_mode) for im in task.sample_images(checkpoint, PARITY_SAMPLES, GOLDEN_SEED + 1)], spec
    )
    proto, exporter = trace_to_onnx(model, torch.from_numpy(x[:8]), spec.name, [o.name for o in outputs])
    strip_debug_info(proto)
    onnx.checker.check_model(proto, full_check=True)
    parity = check_parity(proto, model, x, task.parity_atol)
    parameters = count_parameters(model)
    meta = ModelMetadata(
        task=Task(checkpoint.task),
        labels=list(checkpoint.labels),
        input=spec,
        outputs=outputs,
        model_version=model_version,
        architecture=describe_architecture(checkpoint, parameters),
        training_data=task.training_data_text(checkpoint),
        golden=golden_samples(
            model, spec, task.sample_images(checkpoint, task.golden_count, GOLDEN_SEED), task.golden_atol
        ),
        **task.metadata_fields(checkpoint),
    )
    proto.doc_string = f"{get_arch(checkpoint.arch).title}, exported by Stride's training package"
    write_metadata(proto, meta)
    started = time.perf_counter()
    result = task.evaluate(proto.SerializeToString(), meta, evaluation or task.eval_request_for(checkpoint))
    eval_seconds = time.perf_counter() - started
    meta = meta.model_copy(update={"metrics": result.metrics})
    write_metadata(proto, meta)
    save_model(proto, out_path)
    onnx.checker.check_model(str(out_path), full_check=True)
    verify_saved(out_path, meta)
    return ExportResult(out_path, meta, result, parity, out_path.stat().st_size, exporter, parameters, eval_seconds)


# ------------------------------------------------------------------------------------------- variants
def variant_path(fp32_path: Path, precision: str) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}-{precision}{fp32_path.suffix}")


def export_int8(
    fp32_path: Path, calibration: Sequence[Image.Image], evaluate: Callable[[Path, ModelMetadata], Evaluation]
) -> VariantResult:
    """NAME-int8.onnx from the exported NAME.onnx, calibrated on `calibration` (training images, never
    test ones) rendered with the model's input spec; golden outputs and metrics of the int8 file itself."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32_path = Path(fp32_path)
    meta = read_metadata(fp32_path)
    x = render_batch([im.convert(meta.input.color_mode) for im in calibration[:CALIBRATION_IMAGES]], meta.input)

    class Calibration(CalibrationDataReader):  # one image at a time
        def __init__(self) -> None:
            self.items = iter([{meta.input.name: x[i : i + 1]} for i in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    logging.disable(logging.WARNING)  # ORT's "consider pre-processing" advice, printed on every call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            quantized = Path(tmp) / "int8.onnx"
            quantize_static(
                str(fp32_path),
                str(quantized),
                Calibration(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            proto = onnx.load(str(quantized))
    finally:
        logging.disable(logging.NOTSET)
    golden = golden_from_session(proto, meta, INT8_GOLDEN_ATOL)
    return finish_variant(proto, meta, variant_path(fp32_path, "int8"), "int8", golden, evaluate)


def export_fp16(fp32_path: Path, evaluate: Callable[[Path, ModelMetadata], Evaluation]) -> VariantResult:
    fp32_path = Path(fp32_path)
    meta = read_metadata(fp32_path)
    assert meta.golden is not None
    golden = meta.golden.model_copy(update={"atol": FP16_GOLDEN_ATOL})  # CPU ORT cannot be trusted with fp16
    proto = convert_float16(onnx.load(str(fp32_path)))
    return finish_variant(proto, meta, variant_path(fp32_path, "fp16"), "fp16", golden, evaluate)


def golden_from_session(proto: onnx.ModelProto, meta: ModelMetadata, atol: float) -> Golden:
    """Re-run the fp32 model's golden images through `proto` (ORT) to get its own expected outputs."""
    assert meta.golden is not None
    session = open_session(proto.SerializeToString())
    samples = []
    for sample in meta.golden.samples:
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert(meta.input.color_mode)
        first = run_outputs(session, render_batch([image], meta.input))[0].ravel()
        samples.append(GoldenSample(image_png_base64=sample.image_png_base64, expected=first.tolist()))
    return Golden(atol=atol, samples=samples)


def finish_variant(
    proto: onnx.ModelProto,
    meta: ModelMetadata,
    out: Path,
    precision: str,
    golden: Golden,
    evaluate: Callable[[Path, ModelMetadata], Evaluation],
) -> VariantResult:
    variant_meta = meta.model_copy(update={"precision": precision, "golden": golden, "metrics": {}})
    write_metadata(proto, variant_meta)
    save_model(proto, out)
    evaluation: Evaluation | None = None
    try:
        evaluation = evaluate(out, variant_meta)
    except Exception:
        if precision != "fp16":
            raise
        log.info("%s cannot run on this host's ONNX Runtime; metrics left out", out)
    if evaluation is not None:
        variant_meta = variant_meta.model_copy(update={"metrics": evaluation.metrics})
        write_metadata(proto, variant_meta)
        save_model(proto, out)
        if precision != "fp16":
            verify_saved(out, variant_meta)
    onnx.checker.check_model(str(out))
    return VariantResult(out, precision, variant_meta, evaluation, out.stat().st_size)


def convert_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """float32 -> float16 for every weight, constant and Cast in the graph, keeping float32 input and
    output (a Cast at each end): what onnxconverter_common's convert_float_to_float16(keep_io_types=True)
    does for these plain graphs, written with onnx helpers only."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    if model.functions:
        raise ExportError("fp16 conversion does not handle ONNX local functions")
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    casts_in, casts_out = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = f"{value.name}_fp16"
        for node in graph.node:
            node.input[:] = [inner if name == value.name else name for name in node.input]
        casts_in.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT16))
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = f"{value.name}_fp16"
        for node in graph.node:
            node.output[:] = [inner if name == value.name else name for name in node.output]
            node.input[:] = [inner if name == value.name else name for name in node.input]
        casts_out.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT))
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; types are re-inferred
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)
