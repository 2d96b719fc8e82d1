"""Reduced-precision variants of an exported classifier: int8 (ONNX Runtime static quantisation, QDQ)
and fp16 (weights and compute in float16, float32 input/output, for GPU execution providers).

Each variant is a complete Stride model of its own, written next to the fp32 file as NAME-int8.onnx or
NAME-fp16.onnx, with `precision` set in its metadata and its own golden samples and tolerance:

- int8: golden outputs are the int8 model's own logits through ONNX Runtime (CPU) on the same golden
  images, preprocessed by the training pipeline; INT8_GOLDEN_ATOL leaves room for integer kernels that
  round differently on other CPUs while still catching preprocessing drift. Held-out metrics are
  measured on the int8 file itself.
- fp16: CPU ONNX Runtime cannot be trusted to run float16 graphs, so golden outputs are the fp32
  model's logits and FP16_GOLDEN_ATOL is looser (float16 has ~3 significant digits). Metrics are left
  out unless the fp16 file could be run here; the service lists it `unavailable` on a CPU-only host.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from PIL import Image

from service.contract import Golden, GoldenSample, ModelMetadata, from_metadata_props
from service.preprocess import prepare
from training.checkpoint import Checkpoint
from training.data import ImageSplits, render_batch
from training.evaluate import EvalReport, evaluate_onnx, open_session
from training.export import ExportError, save_model, verify_saved, write_metadata

INT8_GOLDEN_ATOL = 0.05
FP16_GOLDEN_ATOL = 0.05
CALIBRATION_IMAGES = 256


@dataclass
class VariantResult:
    path: Path
    precision: str
    metadata: ModelMetadata
    test: EvalReport | None  # None when the variant cannot run on this host (fp16 on CPU)
    file_bytes: int


def variant_path(fp32_path: Path, precision: str) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}-{precision}{fp32_path.suffix}")


class _Calibration(CalibrationDataReader):
    """Training images (never test), rendered by the training pipeline, one batch of 1 at a time."""

    def __init__(self, x: np.ndarray, input_name: str) -> None:
        self.items = iter([{input_name: x[i : i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def read_file_metadata(path: Path) -> ModelMetadata:
    return from_metadata_props({p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props})


def golden_from_session(model: onnx.ModelProto | Path, meta: ModelMetadata, atol: float) -> Golden:
    """Re-run the fp32 model's golden images through `model` (ORT) to get its own expected outputs."""
    assert meta.golden is not None
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    session = open_session(source)
    input_name = session.get_inputs()[0].name
    samples = []
    for sample in meta.golden.samples:
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert(meta.input.color_mode)
        x, _ = prepare(image, meta.input)
        logits = session.run(None, {input_name: x[None]})[0].ravel()
        samples.append(GoldenSample(image_png_base64=sample.image_png_base64, expected=logits.tolist()))
    return Golden(atol=atol, samples=samples)


def export_int8(
    checkpoint: Checkpoint | None,
    fp32_path: Path,
    splits: ImageSplits,
    calibration_images: int = CALIBRATION_IMAGES,
) -> VariantResult:
    """NAME-int8.onnx from the exported fp32 NAME.onnx; calibration on (up to) `calibration_images`
    training images, rendered with the model's input spec. `checkpoint` is not needed (the fp32 file's
    metadata has the input spec); it is accepted so callers can pass what they have."""
    del checkpoint
    fp32_path = Path(fp32_path)
    meta = read_file_metadata(fp32_path)
    out = variant_path(fp32_path, "int8")
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(splits.train))[:calibration_images]
    images = [splits.train.images[i].convert(meta.input.color_mode) for i in pick]
    x_cal = render_batch(images, meta.input)  # [n, C, H, W]
    logging.disable(logging.WARNING)  # ORT's "consider pre-processing" advice, printed on every call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            quantized = Path(tmp) / "int8.onnx"
            quantize_static(
                str(fp32_path),
                str(quantized),
                _Calibration(x_cal, meta.input.name),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            proto = onnx.load(str(quantized))
    finally:
        logging.disable(logging.NOTSET)
    return _finish_variant(proto, meta, out, "int8", splits, INT8_GOLDEN_ATOL, own_golden=True)


def _finish_variant(
    proto: onnx.ModelProto,
    meta: ModelMetadata,
    out: Path,
    precision: str,
    splits: ImageSplits,
    atol: float,
    own_golden: bool,
) -> VariantResult:
    golden = golden_from_session(proto, meta, atol) if own_golden else meta.golden.model_copy(update={"atol": atol})  # type: ignore[union-attr]
    variant_meta = meta.model_copy(
        update={"precision": precision, "golden": golden, "metrics": {}, "model_version": meta.model_version}
    )
    write_metadata(proto, variant_meta)
    save_model(proto, out)
    test: EvalReport | None = None
    try:
        test = evaluate_onnx(out, splits.test.images, splits.test.targets)
    except Exception:
        if precision != "fp16":
            raise
    if test is not None:
        variant_meta = variant_meta.model_copy(update={"metrics": test.headline_metrics()})
        write_metadata(proto, variant_meta)
        save_model(proto, out)
        if precision != "fp16":
            verify_saved(out, variant_meta)
    onnx.checker.check_model(str(out))
    return VariantResult(out, precision, variant_meta, test, out.stat().st_size)


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


def export_fp16(checkpoint: Checkpoint, fp32_path: Path, splits: ImageSplits) -> VariantResult:
    del checkpoint  # the fp32 file has everything needed
    fp32_path = Path(fp32_path)
    meta = read_file_metadata(fp32_path)
    proto = convert_float16(onnx.load(str(fp32_path)))
    return _finish_variant(proto, meta, variant_path(fp32_path, "fp16"), "fp16", splits, FP16_GOLDEN_ATOL,
                           own_golden=False)  # fmt: skip
