"""`python -m training` / `stride-train`: every command of the training framework, each with its own --help.

    python -m training data scenes --out data/scenes --count 2000 --seed 1      generated COCO scenes
    python -m training train --task detection --data scenes --out runs/det      any task (--task --help: its options)
    python -m training train --arch resnet --data path/to/class-folders --image-size 64 --out runs/mine
    python -m training export runs/det/checkpoint.pt --out models/det.onnx --card   (the checkpoint says its task)
    python -m training evaluate models/det.onnx [--data D --seed S --count N]     held-out metrics via ONNX Runtime
    python -m training bundle [--only NAME]                                       rebuild the bundled models
    python -m training archs                                                      the architecture registry
    python -m training upgrade old.pt --out new.pt                                rewrite an old-format checkpoint
    torchrun --nproc_per_node 2 -m training train ...                             DistributedDataParallel

`train`'s options are generated from the task's config dataclass (training.trainer.TrainerConfig plus the
task's own fields), so a new hyperparameter needs no CLI code. Architecture options go through
`--arch-option KEY=VALUE` and are checked against the architecture's config dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training import distributed
from training.checkpoint import Checkpoint, UnsafeCheckpointError, load_payload
from training.registry import ARCHS, archs_for, get_arch
from training.tasks import TASK_NAMES, get_task
from training.tasks.base import EvalRequest, TrainRequest

log = logging.getLogger("training")
COMMANDS = ("data", "train", "export", "evaluate", "bundle", "archs", "upgrade")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    # torch's ONNX exporter warns once per torchvision op it cannot register; Stride does not use torchvision.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(requested_task(argv)).parse_args(argv)
    args.argv = argv  # recorded in checkpoints so a run says how it was made
    try:
        return args.handler(args)
    except (UnsafeCheckpointError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc


def requested_task(argv: Sequence[str]) -> str:
    """`train --task T` decides which options `train` has; the task's name is read before parsing."""
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return "classification"


def build_parser(task: str = "classification") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, export and evaluate Stride models of every task. Each command has its own --help; "
        "`train --task TASK --help` lists that task's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    add_data_command(commands)
    add_train_command(commands, task if task in TASK_NAMES else "classification")
    add_export_command(commands)
    add_evaluate_command(commands)
    add_bundle_command(commands)
    archs = commands.add_parser(
        "archs",
        help="list the registered architectures, their tasks and data configs",
        description="The architecture registry (training/registry.py).",
    )
    archs.add_argument("--json", action="store_true", help="print the registry as JSON")
    archs.set_defaults(handler=run_archs)
    upgrade = commands.add_parser(
        "upgrade",
        help="rewrite a checkpoint of an earlier format in the current one",
        description="Read a checkpoint any earlier release wrote (weights_only) and "
        "save it in the current format, with its task inside.",
    )
    upgrade.add_argument("checkpoint", type=Path)
    upgrade.add_argument("--out", type=Path, required=True)
    upgrade.set_defaults(handler=run_upgrade)
    return parser


def add_data_command(commands: argparse._SubParsersAction) -> None:
    from training.data import scenes

    data = commands.add_parser(
        "data", help="generate datasets (no downloads)", description="Generate datasets; each kind has its own --help."
    )
    kinds = data.add_subparsers(dest="kind", required=True)
    sc = kinds.add_parser(
        "scenes",
        help="COCO-format generated scenes (shapes and stick figures)",
        description="Write images/ and instances.json (boxes, masks, person keypoints).",
    )
    sc.add_argument("--out", type=Path, required=True, help="output folder")
    sc.add_argument("--count", type=int, required=True, help="number of scenes")
    sc.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    sc.add_argument("--width", type=int, default=scenes.WIDTH, help=f"image width (default {scenes.WIDTH})")
    sc.add_argument("--height", type=int, default=scenes.HEIGHT, help=f"image height (default {scenes.HEIGHT})")
    sc.set_defaults(handler=run_scenes)


def add_train_command(commands: argparse._SubParsersAction, task_name: str) -> None:
    task = get_task(task_name)
    train = commands.add_parser(
        "train",
        help="train one model of any task, write a checkpoint",
        description=f"Train one model and write --out/checkpoint.pt (and metrics.jsonl, last.pt). The options "
        f"below are the {task_name} task's; `train --task TASK --help` lists another task's.",
    )
    train.add_argument(
        "--task", default="classification", choices=TASK_NAMES, help="what the model predicts (default classification)"
    )
    train.add_argument(
        "--arch",
        default=task.default_arch,
        choices=archs_for(task_name),
        help=f"architecture (default {task.default_arch}; `python -m training archs` lists them)",
    )
    train.add_argument("--data", default=task.default_data, help=f"{task.data_help} (default {task.default_data})")
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, metrics.jsonl, last.pt")
    train.add_argument(
        "--image-size",
        type=int,
        default=0,
        metavar="N",
        help="square input size N x N (default: the architecture's data config; "
        "the size used is printed and written in the checkpoint and card)",
    )
    train.add_argument("--count", type=int, default=0, help="generated data: how many items (default: the task's)")
    train.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    train.add_argument(
        "--init",
        default="",
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights (fine-tuning, a second stage)",
    )
    train.add_argument("--resume", action="store_true", help="continue from --out/last.pt if it exists")
    train.add_argument(
        "--arch-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture config override, e.g. activation=relu (repeatable)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_options(train, task.config_cls)
    train.set_defaults(handler=run_train)


def add_export_command(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="export a checkpoint of any task to ONNX with Stride metadata",
        description="Export a checkpoint (the file says its task) to ONNX with Stride metadata, parity and golden "
        "checks, and held-out metrics measured on the saved file.",
    )
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--out", type=Path, required=True, help="e.g. models/NAME.onnx")
    export.add_argument("--model-version", default="1.0.0")
    export.add_argument("--card", action="store_true", help="also write the model card folder next to --out")
    export.add_argument("--quantize", choices=["int8"], help="also write NAME-int8.onnx (ORT static QDQ quantisation)")
    export.add_argument("--fp16", action="store_true", help="also write NAME-fp16.onnx (for GPU providers)")
    add_eval_data_options(export)
    export.set_defaults(handler=run_export)


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="held-out metrics of an ONNX model of any task via ONNX Runtime",
        description="Held-out metrics of an exported model (the file says its task) through ONNX Runtime and the "
        "service's own preprocessing and decoders.",
    )
    evaluate.add_argument("model", type=Path)
    add_eval_data_options(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the metrics and details as JSON")
    evaluate.set_defaults(handler=run_evaluate)


def add_eval_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("held-out data (default: the task's own; see its card)")
    group.add_argument("--data", default="", help="a source name or a dataset path")
    group.add_argument("--seed", type=int, default=None, help="generator seed, or the split seed of a dataset")
    group.add_argument("--count", type=int, default=None, help="how many generated items")


def add_bundle_command(commands: argparse._SubParsersAction) -> None:
    from training.bundle import RECIPES

    bundle = commands.add_parser(
        "bundle",
        help="retrain, export and document every bundled model (make models)",
        description="Retrain every bundled model from scratch with its recipe "
        "(training/bundle.py), export it into --models-dir and write its card.",
    )
    bundle.add_argument("--models-dir", type=Path, default=Path("models"))
    bundle.add_argument("--work-dir", type=Path, default=Path("runs"), help="checkpoints and run logs")
    bundle.add_argument(
        "--only", action="append", choices=[r.name for r in RECIPES], help="rebuild just this model (repeatable)"
    )
    bundle.add_argument("--jobs", type=int, default=1,
                        help="recipes trained at once, in separate processes (make models: 2, one per core)")
    bundle.add_argument("--no-progress", action="store_true", help="no progress bar")
    bundle.set_defaults(handler=run_bundle)


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` option per dataclass field, typed from its annotation, default from the class."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (training options)")
    for f in dataclasses.fields(cls):
        flag, hint, default = "--" + f.name.replace("_", "-"), hints[f.name], f.default
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(hint), default=default, help=f"default {default}")
        else:
            group.add_argument(flag, type=hint, default=default, help=f"default {default}")


def parse_arch_options(pairs: Sequence[str]) -> dict[str, Any]:
    """["activation=relu", "widths=[8,16]"] -> {"activation": "relu", "widths": [8, 16]}; values are read
    as JSON when they parse (numbers, lists, true/false; True/False too), otherwise kept as strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--arch-option needs KEY=VALUE, got {pair!r}")
        raw = raw.strip()
        if raw in ("True", "False"):  # Python spelling, as printed in model cards
            raw = raw.lower()
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def run_scenes(args: argparse.Namespace) -> int:
    from training.data import scenes

    path = scenes.write_dataset(args.out, args.count, args.seed, args.width, args.height)
    print(f"{path}: {args.count} scenes, seed {args.seed}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from training.pipeline import train

    task = get_task(args.task)
    config = task.config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(task.config_cls)})
    request = TrainRequest(
        data=args.data,
        arch=args.arch,
        arch_options=parse_arch_options(args.arch_option),
        image_size=args.image_size,
        split_seed=args.split_seed,
        count=args.count,
        init=args.init,
    )
    ctx = distributed.setup()  # joins the process group under torchrun; a no-op otherwise
    try:
        checkpoint = train(
            args.task,
            request,
            config,
            args.out,
            resume=args.resume,
            progress=not args.no_progress,
            command=shlex.join(["python", "-m", "training", *args.argv]),
        )
        ctx.barrier()
    finally:
        distributed.teardown()
    if checkpoint is None:
        return 0  # not rank 0: rank 0 writes the checkpoint
    s = checkpoint.summary
    best = ", ".join(f"{k} {v:.4f}" for k, v in s.get("best_metrics", {}).items())
    print(
        f"{args.out / 'checkpoint.pt'}: kept epoch {s['best_epoch']}/{len(checkpoint.history)} ({s['stopped_by']})"
        f"{', ' + best if best else ''}, {s['train_seconds']:.1f} s"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from training.pipeline import export_with_card

    checkpoint = Checkpoint.load(args.checkpoint)
    export_command = shlex.join(["python", "-m", "training", *args.argv])
    result, variants = export_with_card(
        checkpoint,
        args.out,
        model_version=args.model_version,
        evaluation=eval_request(args) or None,
        int8=args.quantize == "int8",
        fp16=args.fp16,
        card_command=f"{checkpoint.summary.get('command', '# (the checkpoint does not record its train command)')}"
        f"\n{export_command}"
        if args.card
        else None,
    )
    print(
        f"{result.path}: {format_metrics(result.evaluation.metrics)} via ONNX Runtime, parity "
        f"{max(result.parity.values()):.1e}, {result.file_bytes:,} bytes ({result.exporter} exporter)"
    )
    for variant in variants:
        figures = format_metrics(variant.evaluation.metrics) if variant.evaluation else "not run on this host"
        print(f"{variant.path}: {variant.precision}, {figures}, {variant.file_bytes:,} bytes")
    if args.card:
        print(f"model card: {args.out.with_suffix('')}/README.md")
    return 0


def eval_request(args: argparse.Namespace) -> EvalRequest | None:
    if not args.data and args.seed is None and args.count is None:
        return None
    return EvalRequest(data=args.data, seed=args.seed, count=args.count)


def run_evaluate(args: argparse.Namespace) -> int:
    from training.export import read_metadata

    metadata = read_metadata(args.model)
    task = get_task(metadata.task.value)
    evaluation = task.evaluate(args.model, metadata, eval_request(args) or EvalRequest())
    if args.json:
        print(json.dumps({"metrics": evaluation.metrics, "details": evaluation.details}, indent=2, default=str))
        return 0
    print(f"{args.model}: task {metadata.task.value}, ONNX Runtime\n{evaluation.description}\n")
    for key, value in evaluation.metrics.items():
        recorded = metadata.metrics.get(key)
        note = f"   (in the model's metadata: {recorded:.4f})" if recorded is not None and recorded != value else ""
        print(f"  {key:<24} {value:.4f}{note}")
    return 0


def format_metrics(metrics: dict[str, float]) -> str:
    from training.cards import format_metric

    shown = {k: v for k, v in metrics.items() if not k.startswith(("eval_", "heldout_"))}
    return ", ".join(f"{k} {format_metric(k, v)}" for k, v in shown.items())


def run_bundle(args: argparse.Namespace) -> int:
    from training.bundle import build_bundle

    for name, result in build_bundle(args.models_dir, args.work_dir, args.only, progress=not args.no_progress,
                                     jobs=args.jobs):
        print(f"{result.path}: {format_metrics(result.evaluation.metrics)}, {result.file_bytes:,} bytes ({name})")
    return 0


def run_archs(args: argparse.Namespace) -> int:
    rows = {
        name: {
            "title": spec.title,
            "tasks": list(spec.tasks),
            "default_data": spec.default_data,
            "input": spec.default_input.model_dump(mode="json"),
            "config": get_arch(name).config_to_dict(spec.make_config()),
        }
        for name, spec in ARCHS.items()
    }
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for name in rows:
        spec = ARCHS[name]
        i = spec.default_input
        print(
            f"{name:<10} {', '.join(spec.tasks):<48} {i.width}x{i.height}x{i.channels} {i.resize.value:<9} "
            f"data {spec.default_data:<10} {spec.title}"
        )
    return 0


def run_upgrade(args: argparse.Namespace) -> int:
    checkpoint = Checkpoint.from_payload(load_payload(args.checkpoint), args.checkpoint)
    path = checkpoint.save(args.out)
    print(f"{path}: task {checkpoint.task}, arch {checkpoint.arch}, format 2")
    return 0
