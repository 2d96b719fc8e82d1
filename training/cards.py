"""The model card of any task: models/NAME/README.md, metrics.json and its plots.

One skeleton for every model (summary, architecture, contract, held-out metrics and baseline, export
checks, training, the task's own sections, limitations); the task plug-in adds its sections (example
predictions, confusion matrix, per-class tables) through `TaskPlugin.card_sections`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on build machines
import matplotlib.pyplot as plt

from training.checkpoint import Checkpoint
from training.export import OPSET, ExportResult, VariantResult
from training.registry import get_arch
from training.tasks import get_task
from training.tasks.base import CardSection

HISTORY_PLOT = "training_curves.png"
BASELINE_FILE = "baseline.json"  # written beside the card by tools/yolo_baseline.py; read when present


@dataclass
class CardContext:
    """Facts for the card that are not in the checkpoint or the export result."""

    name: str  # model file stem, e.g. "lenet5"
    command: str  # the command(s) that reproduce the model
    rationale: str = "chosen by whoever ran the training command above"  # why this recipe
    machine: str = ""  # where train_seconds was measured
    notes: list[str] = field(default_factory=list)  # e.g. the image size used and the default


def write_json(path: Path, data: Any) -> None:
    """Indented JSON, but lists of numbers on one line (split records hold thousands of indices)."""
    text = json.dumps(data, indent=2, default=str)
    text = re.sub(r"\[\s+([-\d.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n")


def plot_history(history: list[dict[str, float]], best_epoch: int, path: Path) -> None:
    """Training losses per epoch (left, log scale) and every validation figure (right, when there are any)."""
    epochs = [row["epoch"] for row in history]
    losses = sorted({k for row in history for k in row if k == "loss" or k.startswith("loss_")})
    validation = sorted({k for row in history for k in row if k.startswith("val_")})
    fig, axes = plt.subplots(1, 2 if validation else 1, figsize=(10 if validation else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    for key in losses:
        ax.plot(
            epochs,
            [row.get(key, float("nan")) for row in history],
            label=key.replace("loss_", ""),
            lw=2 if key == "loss" else 1,
        )
    ax.set(xlabel="epoch", ylabel="training loss (mean over epoch)", yscale="log", title="Training loss")
    if validation:
        ax_val = axes[0][1]
        for key in validation:
            ax_val.plot(epochs, [row.get(key, float("nan")) for row in history], label=key)
        ax_val.set(xlabel="epoch", title="Validation")
        if best_epoch:
            ax_val.axvline(best_epoch, color="grey", linestyle="--", lw=1, label=f"kept (epoch {best_epoch})")
    for a in axes[0]:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_baseline(folder: Path) -> dict[str, Any] | None:
    path = folder / BASELINE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_card(
    folder: Path,
    checkpoint: Checkpoint,
    result: ExportResult,
    context: CardContext,
    variants: Sequence[VariantResult] = (),
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    task = get_task(checkpoint.task)
    plot_history(checkpoint.history, int(checkpoint.summary.get("best_epoch", 0)), folder / HISTORY_PLOT)
    sections = task.card_sections(result.path, checkpoint, result.evaluation, folder)
    baseline = read_baseline(folder)
    write_json(
        folder / "metrics.json",
        {
            "model": result.path.name,
            "model_version": result.metadata.model_version,
            "task": checkpoint.task,
            "measured_with": "onnxruntime on the exported file, service preprocessing and decoders",
            "heldout": result.evaluation.metrics,
            "heldout_details": result.evaluation.details,
            "baseline": baseline,
            "parity_max_abs_diff_vs_pytorch": result.parity,
            "parameters": result.parameters,
            "file_bytes": result.file_bytes,
            "exporter": result.exporter,
            "variants": {
                v.precision: {
                    "file": v.path.name,
                    "file_bytes": v.file_bytes,
                    "metrics": v.evaluation.metrics if v.evaluation else None,
                }
                for v in variants
            },
            "training": {**checkpoint.summary, "machine": context.machine},
            "train_config": checkpoint.train_config,
            "arch_config": checkpoint.arch_config,
            "data": checkpoint.data,
            "history": checkpoint.history,
        },
    )
    text = render(checkpoint, result, context, sections, variants, baseline, task.limitations)
    (folder / "README.md").write_text(text)
    return folder / "README.md"


def format_metric(key: str, value: float) -> str:
    """Counts as integers, everything else with four decimals (as the cards and tests read them)."""
    return f"{int(value)}" if key.endswith(("_samples", "_errors", "_count", "_identities")) else f"{value:.4f}"


def metric_rows(metrics: dict[str, float], baseline: dict[str, Any] | None) -> str:
    theirs = (baseline or {}).get("metrics", {})
    head = "| metric | this model |" + (f" {baseline['name']} |" if baseline else "")
    rule = "|---|---|" + ("---|" if baseline else "")
    rows = [head, rule]
    for key, value in metrics.items():
        if key.startswith(("eval_", "heldout_")):
            continue  # the data description says which data
        other = f" {theirs[key]:.4f} |" if key in theirs else (" - |" if baseline else "")
        rows.append(f"| {key} | {format_metric(key, value)} |{other}")
    return "\n".join(rows)


def render(
    checkpoint: Checkpoint,
    result: ExportResult,
    context: CardContext,
    sections: Sequence[CardSection],
    variants: Sequence[VariantResult],
    baseline: dict[str, Any] | None,
    limitations: str,
) -> str:
    meta, arch, s = result.metadata, get_arch(checkpoint.arch), checkpoint.summary
    outputs = "\n".join(f"| `{o.name}` | {o.kind} | `{o.layout}` |" for o in meta.outputs)
    parity = ", ".join(f"{k} {v:.1e}" for k, v in result.parity.items())
    minutes = float(s.get("train_seconds") or 0) / 60
    variant_lines = "\n".join(
        f"- `{v.path.name}`: {v.precision}, {v.file_bytes:,} bytes; "
        + (
            ", ".join(f"{k} {format_metric(k, x)}" for k, x in v.evaluation.metrics.items())
            if v.evaluation
            else "not run on this host (CPU ONNX Runtime)"
        )
        for v in variants
    )
    baseline_text = ""
    if baseline:
        baseline_text = (
            f"\n\nBaseline: {baseline['name']} ({baseline.get('parameters', 0):,} parameters), "
            f"{baseline.get('description', '')}, measured on the same held-out data with the same "
            f"code path (`{baseline.get('command', 'tools/yolo_baseline.py')}`)."
        )
    notes = "".join(f"\n- {n}" for n in context.notes)
    extra = "\n\n".join(f"## {sec.title}\n\n{sec.body}" for sec in sections)
    return f"""# {context.name}

{arch.title}. Task `{checkpoint.task}`, {len(meta.labels)} labels {meta.labels}, model version \
{meta.model_version}, {result.parameters:,} parameters, ONNX file {result.file_bytes:,} bytes (opset {OPSET}).

## Architecture

{arch.card_summary}

Config: `{json.dumps(checkpoint.arch_config)}`.

**Why this configuration:** {context.rationale}

## Contract

| output | kind | layout |
|---|---|---|
{outputs}

Input: `{meta.input.model_dump_json()}`.{notes}

## Held-out metrics (ONNX Runtime on the exported file)

{result.evaluation.description}

{metric_rows(result.evaluation.metrics, baseline)}{baseline_text}

## Export checks

Parity ORT vs PyTorch (max abs diff over 16 real inputs never trained on, \
batch sizes 16, 1 and 5): {parity}. Golden samples: {len(meta.golden.samples) if meta.golden else 0} images, first \
output flattened, atol {meta.golden.atol if meta.golden else 0} (replayed by the service at load time).
{variant_lines}

## Training

```
{context.command}
```

Data: {checkpoint.data.get("description") or checkpoint.data.get("name", "")}. \
{s.get("epochs_run", len(checkpoint.history))} epochs ({s.get("steps", "?")} steps), stopped by \
{s.get("stopped_by", "epochs")}, kept epoch {s.get("best_epoch", "?")}; {minutes:.1f} min on {context.machine} \
with {s.get("threads", "?")} torch thread(s). Options: `{json.dumps(checkpoint.train_config)}`.

![training curves]({HISTORY_PLOT})

{extra}

## Limitations

{limitations or "Trained on the data above only; measure it on your own images before relying on it."}
"""
