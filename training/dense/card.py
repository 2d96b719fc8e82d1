"""Model card folder for a dense model: README.md, training_loss.png, example_prediction.png, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.preprocess import prepare
from training.data import scenes
from training.decoding import decode_detections, full_mask, served_model
from training.dense.export import EVAL_COUNT, GOLDEN_SEED, DenseExportResult, run_session
from training.evaluate import open_session

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def loss_plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = [h["epoch"] for h in history]
    for key in sorted(k for k in history[0] if k.startswith("loss_")):
        ax.plot(epochs, [h[key] for h in history], label=key[5:], lw=2 if key == "loss_total" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over epoch)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def example_prediction(model_path: Path, path: Path, zoom: int = 3) -> None:
    """Predictions of the exported model (ORT, the service's own decoder) on held-out scenes."""
    session = open_session(model_path)
    from service.contract import from_metadata_props

    meta = from_metadata_props(session.get_modelmeta().custom_metadata_map)
    model = served_model(meta)
    tiles = []
    for _i, image, _a, _s in scenes.generate(4, GOLDEN_SEED + 7):
        x, geometry = prepare(image, meta.input)
        det = decode_detections(model, [v[0] for v in run_session(session, x[None]).values()], geometry)
        canvas = np.asarray(image, dtype=np.float32).copy()
        if det.masks is not None:
            for k, local in enumerate(det.masks):
                m = full_mask(local, image.height, image.width)
                canvas[m] = 0.5 * canvas[m] + 0.5 * np.array(PALETTE[k % len(PALETTE)])
        big = Image.fromarray(canvas.astype(np.uint8)).resize((image.width * zoom, image.height * zoom),
                                                              Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(big)
        for k in range(len(det)):
            colour = PALETTE[int(det.class_ids[k]) % len(PALETTE)]
            draw.rectangle([float(v) * zoom for v in det.boxes[k]], outline=colour, width=2)
            draw.text((det.boxes[k][0] * zoom + 2, det.boxes[k][1] * zoom + 1),
                      f"{meta.labels[det.class_ids[k]]} {det.scores[k]:.2f}", fill=colour)
            if det.keypoints is not None:
                kp = det.keypoints[k]
                for a, b in meta.keypoints.skeleton:
                    draw.line([(kp[a, 0] * zoom, kp[a, 1] * zoom), (kp[b, 0] * zoom, kp[b, 1] * zoom)],
                              fill=(255, 255, 255), width=2)
                for j in range(len(kp)):
                    fill = (255, 0, 0) if kp[j, 2] > 0.5 else (120, 120, 120)
                    draw.ellipse([kp[j, 0] * zoom - 3, kp[j, 1] * zoom - 3, kp[j, 0] * zoom + 3, kp[j, 1] * zoom + 3],
                                 fill=fill)
        tiles.append(big)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (2 * w, 2 * h))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % 2) * w, (k // 2) * h))
    sheet.save(path)


def write_card(folder: Path, result: DenseExportResult, ckpt: dict, command: str, rationale: str,
               machine: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    loss_plot(ckpt["history"], folder / "training_loss.png")
    example_prediction(result.path, folder / "example_prediction.png")
    meta = result.metadata
    m = result.metrics
    cfg = ckpt["model_config"]
    (folder / "metrics.json").write_text(json.dumps({
        "heldout": m, "parity_max_abs_diff": result.parity, "train_seconds": ckpt["train_seconds"],
        "train_images": ckpt["train_images"], "epochs_run": len(ckpt["history"]), "history": ckpt["history"],
        "train_config": ckpt["train_config"], "model_config": cfg, "file_bytes": result.file_bytes,
        "parameters": result.parameters,
    }, indent=2))
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in m.items() if not k.startswith("eval_"))
    outputs = "\n".join(f"| `{o.name}` | {o.kind} | `{o.layout}` |" for o in meta.outputs)
    sections = []
    if meta.detection:
        sections.append(f"- detection: strides {meta.detection.strides}, {meta.detection.candidates} candidates")
    if meta.masks:
        sections.append(f"- masks: prototype_stride {meta.masks.prototype_stride}, {meta.masks.prototypes} "
                        f"prototypes, threshold {meta.masks.threshold}")
    if meta.keypoints:
        sections.append(f"- keypoints: {len(meta.keypoints.names)} joints {meta.keypoints.names}, "
                        f"skeleton (0-based) {meta.keypoints.skeleton}")
    text = f"""# {folder.name}

{meta.architecture}. Task `{meta.task.value}`, labels {meta.labels}, model version {meta.model_version}.

## Architecture

{ARCHITECTURE}

Config: `{json.dumps(cfg)}`; {result.parameters:,} parameters; ONNX file {result.file_bytes:,} bytes (opset 18).

Why anchor-free single-stage (FCOS-style, one stride-8 level): on 128 x 128 inputs with objects of 11-55
input pixels, one stride-8 map (256 candidates) covers every object with several cells and a receptive
field larger than the largest object, so anchors, multiple FPN levels and their assignment rules would add
code and CPU time without improving recall. {rationale}

## Contract (ONNX outputs)

| output | kind | layout |
|---|---|---|
{outputs}

{chr(10).join(sections)}

Input: `{meta.input.model_dump_json()}` (letterbox, pad 114, pixels / 255, no mean/std).
Boxes are x1, y1, x2, y2 in model-input pixels, decoded in the graph (cell centre -/+ softplus distances);
scores are per-class sigmoid probabilities (one candidate per stride-8 cell, row-major).

## Held-out metrics (ONNX Runtime, pycocotools)

{EVAL_COUNT if m.get('eval_count') == EVAL_COUNT else int(m['eval_count'])} fresh scenes generated with seed
{int(m['eval_seed'])} (`training.data.scenes`, never seen in training), each through
`service.preprocess.prepare`, ONNX Runtime and the service's post-processing (best class per candidate,
score > 0.25, class-aware NMS at IoU 0.45, at most 100 detections, letterbox undone), then COCOeval.
Keypoint AP uses a uniform per-joint OKS sigma of 0.05 and the figure's visible silhouette area.

| metric | value |
|---|---|
{rows}

Parity ORT vs PyTorch (max abs diff, 16 scenes, batch sizes 16, 1 and 5):
{", ".join(f"{k} {v:.1e}" for k, v in result.parity.items())} (tolerances: 1e-3 pixels / raw values,
1e-4 probabilities). Golden samples: {len(meta.golden.samples)} scenes of seed {GOLDEN_SEED}, first output
(boxes) flattened, atol {meta.golden.atol} pixels.

## Training

```
{command}
```

{ckpt['train_images']} generated training scenes, {len(ckpt['history'])} epochs, batch
{ckpt['train_config']['batch_size']}, AdamW lr {ckpt['train_config']['lr']} (warm-up, cosine), horizontal flips
(left/right joints swapped), seed {ckpt['train_config']['seed']}. Training took
{ckpt['train_seconds'] / 60:.1f} min on {machine} with {ckpt.get('torch_threads', '?')} torch thread(s), while
other training jobs shared the machine (wall time is higher than on an idle machine). Evaluation of the
exported file took {result.eval_seconds:.1f} s.

![training loss](training_loss.png)

## Example predictions (held-out scenes, ONNX Runtime)

![example](example_prediction.png)

## Limitations

Trained only on generated scenes (flat-coloured shapes and stick figures on synthetic backgrounds); it is not
expected to work on photographs. Objects smaller than ~10 input pixels or mostly hidden are not reliable.
"""
    (folder / "README.md").write_text(text)
    return folder / "README.md"


ARCHITECTURE = """Backbone: conv-BN-ReLU stages at strides 2, 4 (32 ch), 8 (64 ch) and 16 (128 ch); neck: the stride-16
map upsampled and concatenated with the stride-8 map, two 3x3 convs (64 ch). Head on the stride-8 map: a
classification tower (one 3x3 conv, 1x1 to per-class logits, sigmoid) and a regression tower (two 3x3 convs)
with 1x1 outputs for the four distances from the cell centre to the box sides (softplus x 8 pixels), and
per task: mask coefficients plus a prototype branch on the stride-4 map (instance segmentation, YOLACT-style,
mask = sigmoid(coefficients @ prototypes), cropped to the box), or per-joint offsets from the cell centre
(x 8 pixels, through a 2-layer joint tower) and a visibility logit (keypoints, YOLO-pose-style), followed by a
second stage that samples a stride-4 feature map (bilinear, grid_sample) at every coarse joint, adds a learnt
per-joint embedding and predicts a correction with a 2-layer 1x1 MLP (x 4 pixels).
Targets: FCOS centre sampling (cells whose centre is inside the box and within 1.5 strides of its centre;
the smallest box wins; a box no centre falls in gets its nearest cell). Losses: quality focal loss with the
predicted box's IoU as the soft class target (so scores rank boxes by localisation quality, which matters for
mAP@[.5:.95] and for NMS), GIoU + L1 on boxes, L1 on joints (labelled joints, visibility 1 or 2) + BCE on
visibility (target: visible = 2), BCE on the prototype-resolution mask inside the ground-truth box (the box
crop the service applies when decoding); the mask target is 2 x the covered fraction of each prototype pixel,
clipped to 1, so limbs thinner than a prototype pixel survive the 0.5 threshold."""
