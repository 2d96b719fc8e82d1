"""The `embedding` task, a self-contained plug-in: model builder, data, CosFace loss, metrics, export, card.

    python -m training train --task embedding --out runs/embedder [--epochs 8 --identities 1500 ...]
    python -m training export runs/embedder/checkpoint.pt --out models/embedder.onnx [--card]
    python -m training evaluate models/embedder.onnx
    python -m training bundle --only embedder

The model maps a 32 x 32 RGB face (training.data.identities) to a 128-d L2-normalised vector. It is trained
as a classifier over the training identities with a CosFace head (large margin cosine loss: the target
class's cosine is lowered by a margin before the scaled softmax), the loss face recognition uses, so
vectors of one identity cluster tightly and unseen identities still separate. The classifier head is
dropped at export; only the vector leaves the graph.

Metrics are measured on identities never seen in training, through ONNX Runtime on the exported file:
retrieval recall@1 and @5 (one enrolled image per identity, the other views searched), and open-set
identification: with a threshold set so that 1% of probes of identities NOT enrolled are accepted (false
accept rate), the true accept rate is the share of enrolled identities' probes whose best match is the
right identity with a score above that threshold. The threshold written into the model is measured on a
separate calibration range of identities, so the test figures are not tuned on themselves.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import math
import os
import shlex
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from service.contract import (
    EmbeddingSpec,
    Golden,
    GoldenSample,
    InputSpec,
    ModelMetadata,
    OutputSpec,
    ResizePolicy,
    Task,
    from_metadata_props,
)
from training.data import identities
from training.data.base import render_batch

log = logging.getLogger(__name__)

TASK = "embedding"
BUNDLE_NAME = "embedder"
FORMAT_VERSION = 1
OUTPUT_NAME = "embedding"
OPSET = 18
PARITY_ATOL = 1e-4
GOLDEN_ATOL = 1e-3
TARGET_FAR = 0.01

INPUT_SPEC = InputSpec(height=32, width=32, channels=3, resize=ResizePolicy.STRETCH, mean=(0.5, 0.5, 0.5),
                       std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class EmbeddingConfig:
    identities: int = 2000  # training identities (classes of the CosFace head)
    views: int = 12  # generated views per training identity
    dimension: int = 128
    width: int = 32  # channels of the first stage; later stages double it
    epochs: int = 14
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    scale: float = 30.0  # CosFace s
    margin: float = 0.35  # CosFace m
    seed: int = 0
    max_cpu_minutes: float = 13.0  # the cosine schedule is compressed to this much CPU time (all threads)
    threads: int = 1  # torch intra-op threads (1: the least CPU per sample when other jobs share the cores)
    eval_identities: int = 300  # held-out identities for the card's figures (and as many impostors)
    eval_probes: int = 3  # probe views per held-out identity


# ------------------------------------------------------------------------------------------------ model
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout))


class EmbedNet(nn.Module):
    """Three stride-2 stages (32 -> 16 -> 8 -> 4), then a global depthwise conv (MobileFaceNet's GDC: keeps
    where in the face a feature is, unlike average pooling) and a linear layer to the vector."""

    def __init__(self, width: int = 32, dimension: int = 128) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv(3, w), _conv(w, w, 2), _conv(w, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w),
        )
        self.gdc = nn.Sequential(nn.Conv2d(4 * w, 4 * w, 4, groups=4 * w, bias=False), nn.BatchNorm2d(4 * w))
        self.project = nn.Linear(4 * w, dimension, bias=False)
        self.bn = nn.BatchNorm1d(dimension)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gdc(self.features(x)).flatten(1)
        return F.normalize(self.bn(self.project(z)), dim=1)


class CosFace(nn.Module):
    """Large margin cosine loss: logits s * (cos(theta_y) - m) for the target class, s * cos(theta_j) else."""

    def __init__(self, dimension: int, classes: int, scale: float, margin: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dimension) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        cosine = embeddings @ F.normalize(self.weight, dim=1).T
        margin = F.one_hot(targets, cosine.shape[1]).to(cosine.dtype) * self.margin
        return F.cross_entropy(self.scale * (cosine - margin), targets)


def build_model(config: EmbeddingConfig) -> EmbedNet:
    return EmbedNet(config.width, config.dimension)


# ------------------------------------------------------------------------------------------------- data
def training_tensors(config: EmbeddingConfig) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, 32, 32] inputs (through the service's preprocessing) and [N] class indices."""
    ids = list(range(identities.TRAIN_FIRST, identities.TRAIN_FIRST + config.identities))
    images, targets = identities.views(ids, config.views)
    return render_batch(images, INPUT_SPEC), (targets - identities.TRAIN_FIRST).astype(np.int64)


@dataclass(frozen=True)
class Protocol:
    """Held-out images for the figures: one enrolled view per identity, probes of the enrolled identities,
    probes of identities that are not enrolled (impostors)."""

    gallery: list[Image.Image]
    gallery_ids: np.ndarray
    probes: list[Image.Image]
    probe_ids: np.ndarray
    impostors: list[Image.Image]


def protocol(first: int, count: int, probes: int) -> Protocol:
    """Enrolled identities first .. first+count-1 (view 0 enrolled, views 1..probes searched); impostors are
    the next `count` identities (`probes` views each), never enrolled."""
    enrolled = list(range(first, first + count))
    gallery, gallery_ids = identities.views(enrolled, 1)
    probe_images, probe_ids = identities.views(enrolled, probes, first_view=1)
    impostors, _ = identities.views(list(range(first + count, first + 2 * count)), probes, first_view=1)
    return Protocol(gallery, gallery_ids, probe_images, probe_ids, impostors)


# ---------------------------------------------------------------------------------------------- metrics
def recall_at(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray,
              k: int) -> float:
    """Share of probes whose identity is among the k most similar gallery vectors (cosine)."""
    if len(probes) == 0:
        return float("nan")
    scores = _unit(probes) @ _unit(gallery).T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([probe_ids[i] in gallery_ids[top[i]] for i in range(len(probes))]))


def threshold_at_far(impostor_best: np.ndarray, far: float = TARGET_FAR) -> float:
    """The lowest score threshold that accepts at most `far` of the impostors' best matches (accept: >)."""
    if len(impostor_best) == 0:
        return float("nan")
    ordered = np.sort(impostor_best)[::-1]
    allowed = math.floor(far * len(ordered))
    return float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])


def open_set(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray,
             impostors: np.ndarray, threshold: float | None = None, far: float = TARGET_FAR) -> dict[str, float]:
    """Open-set identification: threshold (at `far` unless given), true accept rate (right identity and
    score above the threshold), and the false accept rate that threshold actually gives."""
    g = _unit(gallery)
    genuine = _unit(probes) @ g.T
    impostor_best = (_unit(impostors) @ g.T).max(axis=1) if len(impostors) else np.zeros(0)
    chosen = threshold_at_far(impostor_best, far) if threshold is None else threshold
    best = genuine.argmax(axis=1)
    correct = gallery_ids[best] == probe_ids
    accepted = genuine[np.arange(len(best)), best] > chosen
    return {"threshold": chosen, "tar": float(np.mean(correct & accepted)) if len(best) else float("nan"),
            "far": float(np.mean(impostor_best > chosen)) if len(impostor_best) else float("nan")}


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------- training
def train(config: EmbeddingConfig, out_dir: Path, progress: bool = True) -> Path:
    """Train and write out_dir/checkpoint.pt (loadable with torch.load(weights_only=True))."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    x, y = training_tensors(config)
    log.info("rendered %d training views of %d identities in %.0f s", len(x), config.identities,
             time.perf_counter() - started)
    model, head = build_model(config), CosFace(config.dimension, config.identities, config.scale, config.margin)
    params = [*model.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # CPU time, not wall time: on a shared machine the wall clock says more about the neighbours than the run.
    budget, history = config.max_cpu_minutes * 60, []
    train_started, cpu_started = time.perf_counter(), time.process_time()
    generator = torch.Generator().manual_seed(config.seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    step = 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        losses = []
        for start in range(0, len(order), config.batch_size):
            fraction = max(step / total_steps, (time.process_time() - cpu_started) / budget)
            for group in optimiser.param_groups:  # cosine schedule over steps or CPU time, whichever is further
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
            batch = order[start:start + config.batch_size]
            loss = head(model(_augment(inputs[batch], generator)), targets[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
        elapsed, cpu = time.perf_counter() - train_started, time.process_time() - cpu_started
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": elapsed, "cpu_seconds": cpu,
                        "lr": optimiser.param_groups[0]["lr"]})
        if progress:
            log.info("epoch %d/%d loss %.3f (%.0f s, %.0f CPU s)", epoch + 1, config.epochs, history[-1]["loss"],
                     elapsed, cpu)
        if cpu >= budget:
            log.warning("CPU budget of %.1f min reached after epoch %d", config.max_cpu_minutes, epoch + 1)
            break
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "checkpoint.pt"
    torch.save({"format_version": FORMAT_VERSION, "kind": TASK, "config": asdict(config),
                "state_dict": model.eval().state_dict(), "history": history,
                "summary": {"train_seconds": time.perf_counter() - train_started,
                            "train_cpu_seconds": time.process_time() - cpu_started, "epochs_run": len(history),
                            "views": len(x)}}, path)
    return path


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness/contrast on top of the generated variation: cheap, and it widens the light range."""
    n = batch.shape[0]
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    shift = 0.2 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    return batch * gain + shift


def load_checkpoint(path: Path) -> tuple[EmbedNet, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("kind") != TASK or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an embedding checkpoint of format {FORMAT_VERSION}")
    config = EmbeddingConfig(**payload["config"])
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def is_embedding_checkpoint(path: str | Path) -> bool:
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one that is not plain containers: not ours
        return False
    return isinstance(payload, dict) and payload.get("kind") == TASK


# ----------------------------------------------------------------------------------------------- export
@dataclass
class EmbedExport:
    path: Path
    metadata: ModelMetadata
    parity: float
    file_bytes: int
    parameters: int


def embed_onnx(path: Path, images: list[Image.Image], batch: int = 256) -> np.ndarray:
    """Vectors of `images` from an ONNX file through ONNX Runtime and the service's preprocessing."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: render_batch(images[i:i + batch], meta.input)})[0]
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def measure(path: Path, first: int, count: int, probes: int, threshold: float | None = None) -> dict[str, float]:
    """Recall@1/@5 and open-set figures of an ONNX file on held-out identities `first`.."""
    p = protocol(first, count, probes)
    gallery, probe_vectors = embed_onnx(path, p.gallery), embed_onnx(path, p.probes)
    impostors = embed_onnx(path, p.impostors)
    figures = open_set(gallery, p.gallery_ids, probe_vectors, p.probe_ids, impostors, threshold)
    return {"recall_at_1": recall_at(gallery, p.gallery_ids, probe_vectors, p.probe_ids, 1),
            "recall_at_5": recall_at(gallery, p.gallery_ids, probe_vectors, p.probe_ids, 5),
            "tar_at_far_1pct": figures["tar"], "far": figures["far"], "threshold": figures["threshold"]}


def export(checkpoint: Path, out: Path, model_version: str = "1.0.0") -> EmbedExport:
    """ONNX with the Stride contract (task embedding, threshold from calibration identities), verified."""
    import onnx

    from training.export import check_parity, png_base64, save_model, strip_debug_info, trace_to_onnx, write_metadata

    model, payload = load_checkpoint(checkpoint)
    config = EmbeddingConfig(**payload["config"])
    examples, _ = identities.views(list(range(identities.TEST_FIRST, identities.TEST_FIRST + 16)), 4, first_view=50)
    x = render_batch(examples, INPUT_SPEC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto, _exporter = trace_to_onnx(model, torch.from_numpy(x[:8]), INPUT_SPEC.name)
    _rename_output(proto, OUTPUT_NAME)
    strip_debug_info(proto)
    onnx.checker.check_model(proto, full_check=True)
    parity = check_parity(proto, model, x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x[:4])).numpy()
    golden = Golden(atol=GOLDEN_ATOL, samples=[GoldenSample(image_png_base64=png_base64(img), expected=e.tolist())
                                               for img, e in zip(examples[:4], expected, strict=True)])
    meta = ModelMetadata(
        task=Task.EMBEDDING, input=INPUT_SPEC,
        outputs=[OutputSpec(name=OUTPUT_NAME, layout="batch,dimension", kind="embedding")],
        model_version=model_version,
        architecture=f"EmbedNet (3 stride-2 conv stages, GDC, {config.dimension}-d, L2-normalised), width "
        f"{config.width}, CosFace s={config.scale} m={config.margin}",
        training_data=f"{identities.DESCRIPTION}; {config.identities} identities x {config.views} views",
        golden=golden, embedding=EmbeddingSpec(normalized=True),
    )
    write_metadata(proto, meta)
    save_model(proto, out)
    calibration = measure(out, identities.CALIBRATION_FIRST, config.eval_identities, config.eval_probes)
    test = measure(out, identities.TEST_FIRST, config.eval_identities, config.eval_probes)
    at_calibrated = measure(out, identities.TEST_FIRST, config.eval_identities, config.eval_probes,
                            threshold=calibration["threshold"])
    metrics = {"recall_at_1": test["recall_at_1"], "recall_at_5": test["recall_at_5"],
               "tar_at_far_1pct": test["tar_at_far_1pct"],
               "tar_at_threshold": at_calibrated["tar_at_far_1pct"], "far_at_threshold": at_calibrated["far"],
               "heldout_identities": float(config.eval_identities)}
    meta = meta.model_copy(update={"metrics": metrics,
                                   "embedding": EmbeddingSpec(normalized=True,
                                                              threshold=round(calibration["threshold"], 4))})
    write_metadata(proto, meta)
    save_model(proto, out)
    onnx.checker.check_model(str(out), full_check=True)
    _verify_golden(out, meta)
    return EmbedExport(out, meta, parity, out.stat().st_size, sum(p.numel() for p in model.parameters()))


def _rename_output(proto: Any, name: str) -> None:
    """trace_to_onnx names the output "logits"; an embedding model's output says what it is."""
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    proto.graph.output[0].name = name


def _verify_golden(path: Path, meta: ModelMetadata) -> None:
    assert meta.golden is not None
    images = [Image.open(io.BytesIO(base64.b64decode(s.image_png_base64))).convert("RGB") for s in meta.golden.samples]
    got = embed_onnx(path, images)
    want = np.asarray([s.expected for s in meta.golden.samples], dtype=np.float32)
    if float(np.abs(got - want).max()) > meta.golden.atol:
        raise RuntimeError(f"{path}: golden samples drift from the PyTorch vectors")


# ------------------------------------------------------------------------------------------------- card
def write_card(card: Path, result: EmbedExport, payload: dict[str, Any], command: str, machine: str) -> None:
    m, config = result.metadata.metrics, EmbeddingConfig(**payload["config"])
    assert result.metadata.embedding is not None
    threshold = result.metadata.embedding.threshold
    history = payload["history"]
    lines = [
        f"# {result.path.stem}: face-style embeddings for search and recognition of enrolled identities",
        "",
        "A 32 x 32 RGB image in, a 128-d L2-normalised vector out (`task: embedding`); compare vectors by cosine "
        "similarity. Served by `/v1/embed` and behind `/v1/collections` (search, identify).",
        "",
        "## Held-out figures (ONNX Runtime, this file)",
        "",
        f"Identities never seen in training ({identities.TEST_FIRST}.."
        f"{identities.TEST_FIRST + config.eval_identities - 1} of `training.data.identities`): "
        f"{config.eval_identities} enrolled with one view each, {config.eval_probes} other views of each searched, "
        f"and {config.eval_identities * config.eval_probes} views "
        f"of {config.eval_identities} further identities that are not enrolled (impostors).",
        "",
        "| metric | value |",
        "|---|---|",
        f"| retrieval recall@1 | {m['recall_at_1']:.3f} |",
        f"| retrieval recall@5 | {m['recall_at_5']:.3f} |",
        f"| open-set true accept rate at 1% false accepts (threshold set on these impostors) | "
        f"{m['tar_at_far_1pct']:.3f} |",
        f"| true accept rate at the shipped threshold {threshold} | {m['tar_at_threshold']:.3f} |",
        f"| false accept rate at the shipped threshold | {m['far_at_threshold']:.3f} |",
        "",
        f"The shipped threshold ({threshold}, cosine similarity; `embedding.threshold` in the metadata, the default "
        "of `identify`) is the 1%-false-accept point measured on a separate calibration range "
        f"({identities.CALIBRATION_FIRST}..), not on the test identities. True accept: the best match is the "
        "right identity and scores above the threshold.",
        "",
        "## Training",
        "",
        f"{config.identities} generated identities x {config.views} views (pose, scale, light, noise vary per view); "
        f"CosFace (large margin cosine loss, s={config.scale}, m={config.margin}) over the identities, AdamW "
        f"lr {config.lr}, batch {config.batch_size}, cosine schedule, {len(history)} epochs in "
        f"{payload['summary']['train_cpu_seconds'] / 60:.1f} CPU minutes "
        f"({payload['summary']['train_seconds'] / 60:.1f} min wall clock) on {machine}. "
        f"{result.parameters:,} parameters, "
        f"{result.file_bytes:,} bytes; ONNX vs PyTorch max abs diff {result.parity:.1e}.",
        "",
        "```sh",
        command,
        "```",
        "",
        "| epoch | loss | CPU minutes | wall minutes |",
        "|---|---|---|---|",
        *[f"| {h['epoch']} | {h['loss']:.3f} | {h.get('cpu_seconds', math.nan) / 60:.1f} | "
          f"{h['seconds'] / 60:.1f} |" for h in history],
        "",
        "## Limitations",
        "",
        "Trained only on drawn faces (`training.data.identities`); it is a demonstration of the embedding, "
        "search and enrol/identify flow, not a face recogniser for photographs. For real faces, serve a "
        "face-recognition ONNX file with a description beside it (`task: embedding`, an `embedding` output).",
        "",
    ]
    card.write_text("\n".join(lines))


# -------------------------------------------------------------------------------------------------- CLI
def wants_embedding(argv: Sequence[str]) -> bool:
    """Whether `python -m training ARGV` belongs to this task."""
    if not argv:
        return False
    command, rest = argv[0], list(argv[1:])
    if command == "train":
        return any(a == f"--task={TASK}" for a in rest) or any(
            a == "--task" and i + 1 < len(rest) and rest[i + 1] == TASK for i, a in enumerate(rest))
    target = next((a for a in rest if not a.startswith("-")), None)
    if command == "export" and target and target.endswith(".pt") and Path(target).is_file():
        return is_embedding_checkpoint(target)
    if command == "evaluate" and target and target.endswith(".onnx") and Path(target).is_file():
        import onnx

        props = {p.key: p.value for p in onnx.load(target, load_external_data=False).metadata_props}
        return props.get("task") == json.dumps(TASK)
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="The embedding task.")
    commands = parser.add_subparsers(dest="command", required=True)
    train_cmd = commands.add_parser("train", help="train an embedding model on generated identities")
    train_cmd.add_argument("--task", required=True, choices=[TASK])
    train_cmd.add_argument("--out", type=Path, required=True)
    train_cmd.add_argument("--no-progress", action="store_true")
    for f in fields(EmbeddingConfig):
        default = getattr(EmbeddingConfig(), f.name)
        train_cmd.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default,
                               help=f"default {default}")
    exp = commands.add_parser("export", help="export an embedding checkpoint to ONNX")
    exp.add_argument("checkpoint", type=Path)
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--model-version", default="1.0.0")
    exp.add_argument("--card", action="store_true", help="also write NAME.md beside --out")
    ev = commands.add_parser("evaluate", help="held-out retrieval and open-set figures of an ONNX file")
    ev.add_argument("model", type=Path)
    ev.add_argument("--identities", type=int, default=300)
    ev.add_argument("--probes", type=int, default=3)
    return parser


def embedding_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.command == "train":
        config = EmbeddingConfig(**{f.name: getattr(args, f.name) for f in fields(EmbeddingConfig)})
        path = train(config, args.out, progress=not args.no_progress)
        print(f"{path}: trained")
    elif args.command == "export":
        result = export(args.checkpoint, args.out, args.model_version)
        _print(result)
        if args.card:
            _, payload = load_checkpoint(args.checkpoint)
            write_card(args.out.with_suffix(".md"), result, payload, shlex.join(["python", "-m", "training", *argv]),
                       _machine())
    else:
        print(json.dumps(measure(args.model, identities.TEST_FIRST, args.identities, args.probes), indent=2))
    return 0


def run_embedding_bundle(models_dir: Path, progress: bool = True, config: EmbeddingConfig | None = None) -> EmbedExport:
    """`python -m training bundle --only embedder`: train with the defaults, export, write the card."""
    import tempfile

    with tempfile.TemporaryDirectory() as run:
        return bundle_from_checkpoint(train(config or EmbeddingConfig(), Path(run), progress), Path(models_dir))


def bundle_from_checkpoint(checkpoint: Path, models_dir: Path) -> EmbedExport:
    """models/embedder.onnx and models/embedder.md from a checkpoint trained with the bundle's settings."""
    out = models_dir / f"{BUNDLE_NAME}.onnx"
    result = export(checkpoint, out)
    _, payload = load_checkpoint(checkpoint)
    command = (f"python -m training bundle --models-dir {models_dir} --only {BUNDLE_NAME}\n\n# or, step by step:\n"
               f"python -m training train --task {TASK} --out runs/{BUNDLE_NAME}\n"
               f"python -m training export runs/{BUNDLE_NAME}/checkpoint.pt --out {out} --card")
    write_card(out.with_suffix(".md"), result, payload, command, _machine())
    _print(result)
    return result


def _print(result: EmbedExport) -> None:
    m = result.metadata.metrics
    print(f"{result.path}: recall@1 {m['recall_at_1']:.3f}, recall@5 {m['recall_at_5']:.3f}, TAR@FAR1% "
          f"{m['tar_at_far_1pct']:.3f} on held-out identities, parity {result.parity:.1e}, {result.file_bytes:,} bytes")


def _machine() -> str:
    from training.bundle import describe_machine

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{describe_machine()}, 1-minute load average {load:.1f} when training ended"
