"""Training loop for the dense tasks on a COCO-format dataset."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_payload
from training.data.coco import CocoDataset, ann_to_mask, load_coco
from training.dense.data import Sample, collate, default_input_spec, to_sample
from training.dense.targets import dense_loss
from training.models.detector import DenseConfig, DenseModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseTrainConfig:
    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    flip: bool = True
    max_minutes: float = 18.0  # stop early (keeping the cosine schedule's end) if the wall clock runs out
    threads: int = 1  # torch intra-op threads (1: robust when other jobs share the CPU); 0 = torch's default
    kpt_weight: float = 4.0  # weight of the joint L1 loss (in strides per joint)
    init: str = ""  # start from this checkpoint's weights (a second, low-learning-rate stage)


def task_classes(data: CocoDataset, task: str) -> tuple[list[dict], dict[int, int]]:
    cats = data.categories
    if task == "keypoints":
        cats = [c for c in cats if c.get("keypoints")]
        if not cats:
            raise ValueError("keypoints training needs a category with a 'keypoints' list")
        cats = cats[:1]
    return cats, {c["id"]: i for i, c in enumerate(cats)}


def load_samples(data: CocoDataset, task: str, spec, prototype_stride: int = 4) -> list[Sample]:
    _cats, class_of = task_classes(data, task)
    by_image = data.annotations_by_image()
    samples = []
    for record in data.images():
        image = data.open_image(record)
        h, w = record["height"], record["width"]
        samples.append(to_sample(image, by_image.get(record["id"], []), spec, class_of, task, prototype_stride,
                                 mask_of=lambda a, h=h, w=w: ann_to_mask(a, h, w)))
    return samples


def flip_pairs_of(names: list[str]) -> list[tuple[int, int]]:
    pairs = []
    for i, n in enumerate(names):
        if n.startswith("left_") and ("right_" + n[5:]) in names:
            pairs.append((i, names.index("right_" + n[5:])))
    return pairs


def train_dense(task: str, data_dir: Path, out_dir: Path, config: DenseTrainConfig = DenseTrainConfig(),
                model_overrides: dict | None = None, command: str = "") -> Path:
    """Train and save out_dir/checkpoint.pt (+ metrics.jsonl); returns the checkpoint path."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = default_input_spec()
    data = load_coco(data_dir)
    cats, _ = task_classes(data, task)
    joints = len(cats[0].get("keypoints", [])) if task == "keypoints" else 14
    mcfg = DenseConfig(task=task, num_classes=len(cats), input_size=spec.height, joints=joints,
                       **(model_overrides or {}))
    model = DenseModel(mcfg)
    if config.init:
        model.load_state_dict(load_payload(config.init)["state_dict"])
    t0 = time.time()
    samples = load_samples(data, task, spec, mcfg.prototype_stride)
    log.info("loaded %d samples in %.1f s", len(samples), time.time() - t0)
    pairs = flip_pairs_of(cats[0].get("keypoints", [])) if task == "keypoints" else []
    rng = np.random.default_rng(config.seed)
    steps_per_epoch = math.ceil(len(samples) / config.batch_size)
    total = config.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm = min(300, total // 10)

    budget = config.max_minutes * 60

    def progress(step: int) -> float:
        """Fraction of the schedule done: by steps, or by wall clock when the time budget binds."""
        return max(step / total, (time.time() - start) / budget)

    def lr_at(step: int) -> float:
        if step < warm:
            return config.lr * (step + 1) / warm
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress(step)))) + 1e-5

    history: list[dict] = []
    earlier_seconds = 0.0
    if config.init:  # continue the first stage's record, so the card shows the whole run
        first = load_payload(config.init)
        history = [dict(row, stage=1) for row in first.get("history", [])]
        earlier_seconds = float(first.get("train_seconds", 0.0))
    offset = len(history)
    log_path = out_dir / "metrics.jsonl"
    log_path.write_text("")
    start = time.time()
    step = 0
    model.train()
    for epoch in range(config.epochs):
        order = rng.permutation(len(samples))
        sums: dict[str, float] = {}
        for k in range(steps_per_epoch):
            if progress(step) >= 1.0:  # the time budget compresses the cosine schedule; stop at its end
                break
            idx = order[k * config.batch_size:(k + 1) * config.batch_size]
            batch = collate([samples[i] for i in idx], rng.random(len(idx)) < 0.5 if config.flip else None, pairs)
            for gparam in opt.param_groups:
                gparam["lr"] = lr_at(step)
            raw = model.raw(batch["x"])
            losses = dense_loss(model, raw, batch, {"kpt": config.kpt_weight, "kpt_coarse": config.kpt_weight / 2})
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            for name, v in losses.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
        nb = max(1, k + 1)
        row = {"epoch": offset + epoch + 1, "step": step, "seconds": round(time.time() - start, 1),
               **{f"loss_{n}": v / nb for n, v in sums.items()}}
        history.append(row)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log.info("%s epoch %d: %s", task, epoch + 1, {n: round(v / nb, 4) for n, v in sums.items()})
        if progress(step) >= 1.0 and step < total:
            log.warning("time budget of %.1f min reached after epoch %d", config.max_minutes, epoch + 1)
            break
    seconds = time.time() - start + earlier_seconds
    model.eval()
    path = out_dir / "checkpoint.pt"
    torch.save({
        "kind": "dense", "task": task, "model_config": asdict(mcfg), "train_config": asdict(config),
        "state_dict": model.state_dict(), "input_spec": spec.model_dump(mode="json"),
        "labels": [c["name"] for c in cats], "category_ids": [c["id"] for c in cats],
        "keypoint_names": cats[0].get("keypoints", []) if task == "keypoints" else [],
        "skeleton": [[a - 1, b - 1] for a, b in cats[0].get("skeleton", [])] if task == "keypoints" else [],
        "history": history, "train_seconds": seconds, "train_images": len(samples),
        "data": str(data_dir), "data_info": data.data.get("info", {}), "command": command,
        "torch_threads": torch.get_num_threads(),
    }, path)
    return path


def load_dense(path: Path) -> tuple[DenseModel, dict]:
    """The model (eval mode) and the checkpoint's plain dict; loaded with weights_only=True."""
    ckpt = load_payload(path)
    model = DenseModel(DenseConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
