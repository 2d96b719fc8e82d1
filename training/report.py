"""Model card folder: training curves, confusion matrix, metrics/split JSON and a README.md card."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on build machines
import matplotlib.pyplot as plt

from training.checkpoint import Checkpoint
from training.data import ImageSplits
from training.evaluate import EvalReport
from training.export import OPSET, ExportResult
from training.flops import count_flops
from training.models import get_arch


@dataclass
class CardContext:
    """Facts for the card that are not in the checkpoint or the export result."""

    name: str  # model file stem, e.g. "lenet5"
    command: str  # the command that reproduces the model
    config_rationale: str  # why this architecture config is the default
    machine: str  # where training_seconds was measured


def plot_training_curves(history: list[dict[str, float]], best_epoch: int, path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    # Training loss is on augmented batches with the training label smoothing, so it sits above the
    # plain validation cross-entropy; compare each curve's shape, not the two levels.
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train (augmented, smoothed targets)")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", ylim=(0, None))
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], label="train (augmented)")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], label="validation")
    lowest = min(min(r["train_accuracy"], r["val_accuracy"]) for r in history)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(min(0.8, lowest - 0.02), 1.005))
    for ax in (ax_loss, ax_acc):
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"kept (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(report: EvalReport, path: Path, title: str) -> None:
    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n))
    counts = report.confusion
    ax.imshow(counts, cmap="Blues")
    peak = max(max(row) for row in counts)
    for i in range(n):
        for j in range(n):
            if counts[i][j]:
                color = "white" if counts[i][j] > peak / 2 else "black"
                ax.text(j, i, str(counts[i][j]), ha="center", va="center", color=color, fontsize=9)
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=report.labels,
        yticklabels=report.labels,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _write_json(path: Path, data: Any) -> None:
    """Indented JSON, but lists of numbers on one line: split.json holds ~1,800 indices."""
    text = json.dumps(data, indent=2)
    text = re.sub(r"\[\s+([-\d.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n")


write_json = _write_json  # public name for other modules (cli writes split.json next to checkpoints)


def write_model_card(
    folder: Path,
    checkpoint: Checkpoint,
    splits: ImageSplits,
    export: ExportResult,
    context: CardContext,
    variants: Sequence[Any] = (),
) -> None:
    """`variants`: training.quantize.VariantResult of reduced-precision files written next to the model."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = checkpoint.summary
    spec = checkpoint.input_spec
    flops = count_flops(checkpoint.build_model(), (spec.channels, spec.height, spec.width))
    plot_training_curves(checkpoint.history, summary["best_epoch"], folder / "training_curves.png")
    test = export.test
    plot_confusion_matrix(
        test, folder / "confusion_matrix.png", f"{context.name}: held-out test, ONNX Runtime ({test.accuracy:.2%})"
    )
    _write_json(folder / "split.json", splits.split_record())
    _write_json(
        folder / "metrics.json",
        {
            "model": f"{context.name}.onnx",
            "model_version": export.metadata.model_version,
            "measured_with": "onnxruntime on the exported file, service.preprocess.prepare inputs",
            "metadata_metrics": export.metadata.metrics,
            "test": test.to_dict(),
            "parity_max_abs_diff_vs_pytorch": export.parity_max_abs_diff,
            "parameters": export.parameters,
            "flops_per_image": flops,
            "variants": {
                v.precision: {
                    "file": v.path.name,
                    "file_bytes": v.file_bytes,
                    "test": v.test.to_dict() if v.test else None,
                }
                for v in variants
            },
            "file_bytes": export.file_bytes,
            "exporter": export.exporter,
            "training": {**summary, "machine": context.machine},
            "train_config": checkpoint.train_config,
            "arch_config": checkpoint.arch_config,
            "history": checkpoint.history,
        },
    )
    (folder / "README.md").write_text(render_card(checkpoint, splits, export, context, flops, variants))


def render_variants(variants: Sequence[Any], export: ExportResult) -> str:
    if not variants:
        return ""
    rows = "\n".join(
        f"| `{v.path.name}` | {v.precision} | "
        + (f"{v.test.accuracy:.4f} ({v.test.samples - v.test.errors}/{v.test.samples})" if v.test else "not run")
        + f" | {v.file_bytes:,} | {v.metadata.golden.atol:g} |"
        for v in variants
    )
    return f"""
## Reduced-precision variants

Each is a complete model with its own metadata (`precision`), golden samples and golden tolerance.
int8: ONNX Runtime static quantisation (QDQ, per-channel int8 weights, uint8 activations calibrated on
256 training images). Accuracy measured with ONNX Runtime on the same held-out test images.

| file | precision | test accuracy | bytes | golden atol |
|---|---|---|---|---|
| `{export.path.name}` | fp32 | {export.test.accuracy:.4f} | {export.file_bytes:,} | {export.metadata.golden.atol:g} |
{rows}
"""


def render_card(
    checkpoint: Checkpoint,
    splits: ImageSplits,
    export: ExportResult,
    context: CardContext,
    flops: int | None = None,
    variants: Sequence[Any] = (),
) -> str:
    arch = get_arch(checkpoint.arch)
    s, test, spec, hp = checkpoint.summary, export.test, checkpoint.input_spec, checkpoint.train_config
    per_class = "\n".join(
        f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        for label, m in test.per_class.items()
    )
    hyper = "\n".join(f"| `{k}` | `{v}` |" for k, v in hp.items())
    options = "\n".join(f"| `{k}` | `{v}` |" for k, v in checkpoint.arch_config.items())
    crop = (
        f"random resized crop (area {hp.get('crop_min_area')}-1, aspect 3/4-4/3)"
        + (", horizontal flip" if hp.get("hflip") else "")
        + (f", brightness/contrast/saturation jitter ±{hp.get('jitter')}" if hp.get("jitter") else "")
    )
    augmentation = (
        crop
        if hp.get("augment") and hp.get("augmentation") == "crop"
        else (
            f"random rotation ±{hp['max_rotation']}°, scale ±{hp['max_scale'] * 100:.0f}%, translation "
            f"±{hp['max_translate'] * 100:.0f}% of the image size, on the rendered input tensors"
            if hp.get("augment")
            else "none"
        )
    )
    flops_line = (
        f"\nFLOPs per image: **{flops:,}** (2 × the multiply-accumulates of every convolution, linear layer "
        "and matrix product, counted by `training.flops` on a real forward pass; pooling, activations and "
        "normalisation not counted)."
        if flops is not None
        else ""
    )
    return f"""# {context.name} — {arch.title}

`{context.name}.onnx`, version `{export.metadata.model_version}`, task `classification`, labels
{", ".join(f"`{label}`" for label in checkpoint.labels)}; output `logits` [batch, class].

## Held-out test metrics (ONNX Runtime, exported file)

Measured on the exported `.onnx` with ONNX Runtime, each image rendered by `service.preprocess.prepare`
exactly as the service renders a request, on the {test.samples} held-out test images (used neither for
training nor for picking the epoch). The same numbers are embedded in the model's metadata (`metrics`).

| metric | value |
|---|---|
| accuracy | **{test.accuracy:.4f}** ({test.samples - test.errors}/{test.samples}) |
| macro F1 | {test.macro_f1:.4f} |
| cross-entropy | {test.cross_entropy:.4f} |
| ONNX Runtime vs PyTorch, max abs diff on logits | {export.parity_max_abs_diff:.2e} |

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

![confusion matrix](confusion_matrix.png)

## Architecture

{arch.card_summary}

| option | value |
|---|---|
{options}

**Why this configuration:** {context.config_rationale}

Parameters: **{export.parameters:,}** (weights and biases that can affect the output; weights masked
out by a fixed connection table are not counted). ONNX file: {export.file_bytes:,} bytes, opset
{OPSET}, dynamic batch axis, {export.exporter} exporter.{flops_line}

## Input

`{spec.name}`: [batch, {spec.channels}, {spec.height}, {spec.width}] float32, made by the service from
the uploaded image: converted to `{spec.color_mode}`, resized to {spec.width}x{spec.height}
({spec.resize.value}, {spec.interpolation.value}), pixels multiplied by {spec.scale:.6g}, then
normalised as (x − mean) / std with mean {list(spec.mean)} and std {list(spec.std)}.

## Data

{splits.description}.

| split | images | use |
|---|---|---|
| train | {len(splits.train)} | gradient updates |
| validation | {len(splits.val)} | early stopping: picking the epoch |
| test | {len(splits.test)} | the metrics above, nothing else |

Split seed {splits.split_seed}; the exact indices are in [split.json](split.json).
Augmentation (training only): {augmentation}.

{splits.card_notes}

## Training

Reproduce with:

```
{context.command}
```

Seed {hp.get("seed")}. The epoch with the best validation accuracy (ties: lower validation loss) is
kept: epoch {s["best_epoch"]} of {s["epochs_run"]} run, validation accuracy
{s["best_val_accuracy"]:.4f}. Training took **{s["train_seconds"]:.1f} s** on {context.machine},
{s["threads"]} torch threads. Reruns on the same machine and thread count give the same weights; other
CPUs or thread counts can differ in floating-point rounding and so in the last few test predictions.

| hyperparameter | value |
|---|---|
{hyper}

![training curves](training_curves.png)

Per-epoch numbers and the full evaluation are in [metrics.json](metrics.json).
{render_variants(variants, export)}"""
