"""Dense checkpoint -> ONNX with Stride metadata, parity checks, ORT evaluation on fresh scenes, model card.

Held-out evaluation: EVAL_COUNT scenes generated with EVAL_SEED (training uses other seeds), each run
through `service.preprocess.prepare`, ONNX Runtime, the service's own decoder (training.decoding) and
pycocotools (training.dense.evaluate).
"""

from __future__ import annotations

import io
import logging
import shlex
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from service.contract import (
    DetectionSpec,
    Golden,
    GoldenSample,
    InputSpec,
    KeypointSpec,
    MaskSpec,
    ModelMetadata,
    OutputSpec,
    Task,
    from_metadata_props,
)
from service.preprocess import prepare
from training.data import scenes
from training.decoding import decode_detections, served_model
from training.dense.evaluate import coco_from_dict, coco_map, coco_results
from training.dense.train import load_dense
from training.evaluate import open_session
from training.export import png_base64, save_model, strip_debug_info, write_metadata

log = logging.getLogger(__name__)

OPSET = 18
EVAL_SEED = 1000
EVAL_COUNT = 200
GOLDEN_SEED = 2000  # golden images: a third seed, never trained or evaluated on
GOLDEN_COUNT = 3
GOLDEN_ATOL = 1e-2  # pixels, on the boxes output
PARITY_ATOL = {"boxes": 1e-3, "scores": 1e-4, "mask_coefficients": 1e-3, "mask_prototypes": 1e-3,
               "keypoints": 1e-3}

LAYOUTS = {
    "boxes": ("batch,candidate,coordinate", "boxes"),
    "scores": ("batch,candidate,class", "scores"),
    "mask_coefficients": ("batch,candidate,prototype", "mask_coefficients"),
    "mask_prototypes": ("batch,prototype,height,width", "mask_prototypes"),
    "keypoints": ("batch,candidate,joint,coordinate", "keypoints"),
}


@dataclass
class DenseExportResult:
    path: Path
    metadata: ModelMetadata
    metrics: dict[str, float]
    parity: dict[str, float]
    file_bytes: int
    parameters: int
    eval_seconds: float


def trace(model: torch.nn.Module, example: torch.Tensor, input_name: str) -> onnx.ModelProto:
    names = model.output_names
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buffer, input_names=[input_name], output_names=names, opset_version=OPSET,
            dynamo=False, dynamic_axes={input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    with torch.no_grad():
        shapes = [t.shape for t in model(example)]
    for output, shape in zip(proto.graph.output, shapes, strict=True):  # static sizes except the batch axis
        for k, dim in enumerate(output.type.tensor_type.shape.dim):
            if k > 0:
                dim.Clear()
                dim.dim_value = int(shape[k])
    return proto


def run_session(session, x: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    chunks = [session.run(None, {input_name: x[i:i + batch_size]}) for i in range(0, len(x), batch_size)]
    return {n: np.concatenate([c[k] for c in chunks]) for k, n in enumerate(names)}


@torch.no_grad()
def check_parity(proto: onnx.ModelProto, model: torch.nn.Module, x: np.ndarray) -> dict[str, float]:
    """Max |ORT - PyTorch| per output over x and over batch sizes 1 and 5 (dynamic batch)."""
    session = open_session(proto.SerializeToString())
    worst = {n: 0.0 for n in model.output_names}
    for batch in (x, x[:1], x[:5]):
        expected = dict(zip(model.output_names, (t.numpy() for t in model(torch.from_numpy(batch))), strict=True))
        got = run_session(session, batch, batch_size=len(batch))
        for n in worst:
            if got[n].shape != expected[n].shape:
                raise RuntimeError(f"{n}: ORT shape {got[n].shape} != PyTorch {expected[n].shape}")
            worst[n] = max(worst[n], float(np.abs(got[n] - expected[n]).max()))
    for n, d in worst.items():
        if d > PARITY_ATOL[n]:
            raise RuntimeError(f"parity: {n} max abs diff {d:.3g} > {PARITY_ATOL[n]}")
    return worst


def heldout(seed: int = EVAL_SEED, count: int = EVAL_COUNT):
    """Fresh scenes: (PIL images, COCO ground-truth dict)."""
    images, anns = [], []
    for _i, image, a, _sem in scenes.generate(count, seed):
        images.append(image)
        anns.append(a)
    gt = scenes.build_coco([(f"{i:06d}.png", im.width, im.height) for i, im in enumerate(images)], anns)
    return images, gt


def evaluate_model(path_or_bytes, seed: int = EVAL_SEED, count: int = EVAL_COUNT) -> dict[str, float]:
    """Held-out COCO metrics of an exported dense model through ONNX Runtime."""
    session = open_session(path_or_bytes)
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    images, gt_dict = heldout(seed, count)
    prepared = [prepare(im, meta.input) for im in images]
    x = np.stack([p[0] for p in prepared])
    outputs = run_session(session, x)
    label_ids = {c["name"]: c["id"] for c in gt_dict["categories"]}
    cat_ids = [label_ids[name] for name in meta.labels]
    model = served_model(meta)
    results: dict[str, list[dict]] = {"bbox": [], "segm": [], "keypoints": []}
    for i, (_x, geometry) in enumerate(prepared):
        det = decode_detections(model, [v[i] for v in outputs.values()], geometry)
        for k, v in coco_results(det, i + 1, cat_ids, geometry.original_height, geometry.original_width).items():
            results[k] += v
    gt = coco_from_dict(gt_dict)
    restrict = cat_ids if meta.task is Task.KEYPOINTS else None
    metrics = {"eval_seed": float(seed), "eval_count": float(count)}
    metrics["box_map50"], metrics["box_map"] = coco_map(gt, results["bbox"], "bbox", restrict)
    if meta.task is Task.INSTANCE_SEGMENTATION:
        metrics["mask_map50"], metrics["mask_map"] = coco_map(gt, results["segm"], "segm")
    if meta.task is Task.KEYPOINTS:
        metrics["oks_ap50"], metrics["oks_ap"] = coco_map(gt, results["keypoints"], "keypoints", restrict)
    return metrics


ARCH_TEXT = {
    "detection": "FCOS-style anchor-free single-stage detector",
    "instance_segmentation": "FCOS-style detector with YOLACT-style prototype masks",
    "keypoints": "FCOS-style person detector with YOLO-pose-style per-candidate joints",
}


def export_dense(checkpoint_path: Path, out_path: Path, model_version: str = "1.0.0",
                 eval_seed: int = EVAL_SEED, eval_count: int = EVAL_COUNT) -> DenseExportResult:
    model, ckpt = load_dense(checkpoint_path)
    cfg = model.config
    spec = InputSpec.model_validate(ckpt["input_spec"])
    golden_images = [im for _i, im, _a, _s in scenes.generate(GOLDEN_COUNT, GOLDEN_SEED)]
    parity_images = [im for _i, im, _a, _s in scenes.generate(16, GOLDEN_SEED + 1)]
    x = np.stack([prepare(im, spec)[0] for im in parity_images])
    proto = trace(model, torch.from_numpy(x[:4]), spec.name)
    strip_debug_info(proto)
    onnx.checker.check_model(proto, full_check=True)
    parity = check_parity(proto, model, x)

    with torch.no_grad():
        golden = Golden(atol=GOLDEN_ATOL, samples=[
            GoldenSample(image_png_base64=png_base64(im),
                         expected=model(torch.from_numpy(prepare(im, spec)[0])[None])[0][0].reshape(-1).tolist())
            for im in golden_images])
    candidates = (spec.height // cfg.stride) * (spec.width // cfg.stride)
    task = Task(cfg.task)
    sections: dict = {"detection": DetectionSpec(strides=[cfg.stride], candidates=candidates)}
    if task is Task.INSTANCE_SEGMENTATION:
        sections["masks"] = MaskSpec(prototype_stride=cfg.prototype_stride, prototypes=cfg.prototypes, threshold=0.5)
    if task is Task.KEYPOINTS:
        sections["keypoints"] = KeypointSpec(names=list(ckpt["keypoint_names"]),
                                             skeleton=[tuple(e) for e in ckpt["skeleton"]])
    params = sum(p.numel() for p in model.parameters())
    info = ckpt.get("data_info") or {}
    meta = ModelMetadata(
        task=task,
        labels=list(ckpt["labels"]),
        input=spec,
        outputs=[OutputSpec(name=n, layout=LAYOUTS[n][0], kind=LAYOUTS[n][1]) for n in model.output_names],
        model_version=model_version,
        architecture=(f"dense-{cfg.task}: {ARCH_TEXT[cfg.task]}, stride {cfg.stride}, width {cfg.width}, "
                      f"head {cfg.head_width}, {params:,} parameters"),
        training_data=(f"{ckpt['train_images']} generated scenes (training.data.scenes, seed {info.get('seed', '?')})"
                       if info.get("generator") else f"COCO dataset {ckpt['data']}"),
        golden=golden,
        **sections,
    )
    proto.doc_string = f"Stride {ARCH_TEXT[cfg.task]}"
    write_metadata(proto, meta)
    t0 = time.time()
    metrics = evaluate_model(proto.SerializeToString(), eval_seed, eval_count)
    eval_seconds = time.time() - t0
    meta = meta.model_copy(update={"metrics": metrics})
    write_metadata(proto, meta)
    save_model(proto, out_path)
    onnx.checker.check_model(str(out_path), full_check=True)
    verify_golden(out_path, meta)
    return DenseExportResult(out_path, meta, metrics, parity, out_path.stat().st_size, params, eval_seconds)


def verify_golden(path: Path, expected: ModelMetadata) -> None:
    import base64

    from PIL import Image

    session = open_session(path)
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    if meta != expected:
        raise RuntimeError("metadata read back differs from what was written")
    for n, sample in enumerate(meta.golden.samples):
        image = Image.open(io.BytesIO(base64.b64decode(sample.image_png_base64))).convert("RGB")
        x, _ = prepare(image, meta.input)
        got = session.run(None, {session.get_inputs()[0].name: x[None]})[0].ravel()
        diff = float(np.abs(got - np.asarray(sample.expected, np.float32)).max())
        if diff > meta.golden.atol:
            raise RuntimeError(f"golden sample {n}: max abs diff {diff:.3g} > {meta.golden.atol}")


def machine() -> str:
    from training.bundle import describe_machine

    return describe_machine()


def command_of(ckpt: dict) -> str:
    return ckpt.get("command") or shlex.join(["python", "-m", "training", "train", "--task", ckpt["task"]])


