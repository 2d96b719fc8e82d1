"""`python -m training` / `stride-train`: data, train, export, evaluate, bundle (each with its own --help).

    python -m training data scenes --out data/scenes --count 2000 --seed 1
    python -m training train --task TASK --help   (classification, the default, and every other task)
    python -m training bundle --models-dir models [--only lenet5]
    python -m training train --arch lenet5 --data digits --out runs/lenet5 [--epochs 100 --seed 0 ...]
    python -m training export runs/lenet5/checkpoint.pt --out models/lenet5.onnx [--card]
    python -m training train --arch resnet --data path/to/class-folders --out runs/mine [--resume]
    python -m training export runs/mine/checkpoint.pt --out models/mine.onnx [--quantize int8] [--fp16]
    torchrun --nproc_per_node 2 -m training train ...   (DistributedDataParallel; see training/distributed.py)
    python -m training evaluate models/lenet5.onnx [--data digits]
    python -m training train --task semantic_segmentation --data COCO_DIR --out runs/segmenter   (training/semantic.py)

Every TrainConfig field is a `train` option (`--label-smoothing 0.1`, `--no-augment`, ...), generated from
the dataclass so new hyperparameters need no CLI code. Architecture options go through
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
from training.bundle import BUNDLED, build_bundle, describe_machine
from training.checkpoint import Checkpoint, UnsafeCheckpointError
from training.data import DATASETS, DEFAULT_SPLIT_SEED, load_dataset
from training.dense.cli import DENSE_BUNDLED, DENSE_TASKS, add_data_command, dense_main, run_dense_bundle, wants_dense
from training.evaluate import EvalReport, evaluate_test_split, read_metadata, score_checkpoint
from training.export import export_checkpoint, load_checkpoint_splits
from training.models import ARCHS
from training.quantize import export_fp16, export_int8
from training.report import CardContext, plot_confusion_matrix, plot_training_curves, write_json, write_model_card
from training.semantic import SEMANTIC_BUNDLED, run_semantic_bundle, semantic_main, wants_semantic
from training.semantic import TASK as SEMANTIC_TASK
from training.tasks import embedding
from training.train import TrainConfig, choose_input_spec, train_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    # torch's ONNX exporter warns once per torchvision op it cannot register; Stride does not use torchvision.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    argv = list(sys.argv[1:] if argv is None else argv)
    if embedding.wants_embedding(argv):  # `train --task embedding`, export/evaluate of embedding files
        return embedding.embedding_main(argv)
    if wants_semantic(argv):  # `train --task semantic_segmentation`, export/evaluate of semantic files
        return semantic_main(argv)
    if wants_dense(argv):  # `data scenes`, `train --task ...`, export/evaluate of dense files
        return dense_main(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in checkpoints so a run says how it was made
    try:
        return args.handler(args)
    except UnsafeCheckpointError as exc:
        raise SystemExit(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, export and evaluate Stride models. Each command has its own --help; "
        "`train --task TASK --help` lists that task's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{data,train,export,evaluate,bundle}")
    add_data_command(commands)

    bundle = commands.add_parser("bundle", help="retrain, export and document every bundled model")
    bundle.add_argument("--models-dir", type=Path, default=Path("models"))
    bundle.add_argument(
        "--only",
        action="append",
        choices=[r.name for r in BUNDLED] + list(DENSE_BUNDLED) + list(SEMANTIC_BUNDLED) + [embedding.BUNDLE_NAME],
        help="rebuild just this model (repeatable)",
    )
    bundle.add_argument("--no-progress", action="store_true", help="no progress bar")
    bundle.set_defaults(handler=run_bundle)

    train = commands.add_parser(
        "train",
        help="train one model of any task, write a checkpoint",
        description="Train one model and write --out/checkpoint.pt. The options below are the classification "
        "task's; `train --task TASK --help` lists another task's.",
    )
    train.add_argument(
        "--task",
        default="classification",
        choices=["classification", *DENSE_TASKS, SEMANTIC_TASK, embedding.TASK],
        help="what the model predicts (default classification)",
    )
    train.add_argument("--arch", required=True, choices=sorted(ARCHS), help="classification architecture")
    train.add_argument("--data", required=True, help=f"{' | '.join(sorted(DATASETS))} | DIR (class-per-folder images)")
    train.add_argument("--image-size", type=int, default=0, help="input size for folder data (default: the arch's)")
    train.add_argument("--resume", action="store_true", help="continue from --out/last.pt if it exists")
    train.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED)
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, metrics.jsonl")
    train.add_argument(
        "--arch-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture config override, e.g. activation=relu (repeatable)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_options(train, TrainConfig)
    train.set_defaults(handler=run_train)

    export = commands.add_parser(
        "export",
        help="export a checkpoint of any task to ONNX with Stride metadata",
        description="Export a checkpoint (the file says its task) to ONNX with Stride metadata; --quantize "
        "and --fp16 apply to classifiers.",
    )
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--out", type=Path, required=True, help="e.g. models/NAME.onnx")
    export.add_argument("--model-version", default="1.0.0")
    export.add_argument("--card", action="store_true", help="also write the model card folder next to --out")
    export.add_argument("--quantize", choices=["int8"], help="also write NAME-int8.onnx (ORT static QDQ quantisation)")
    export.add_argument("--fp16", action="store_true", help="also write NAME-fp16.onnx (for GPU providers)")
    export.set_defaults(handler=run_export)

    evaluate = commands.add_parser(
        "evaluate",
        help="held-out metrics of an ONNX model of any task via ONNX Runtime",
        description="Held-out metrics of an exported model (the file says its task) via ONNX Runtime; --data "
        "and --split-seed apply to classifiers.",
    )
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("--data", default="digits", help=f"{' | '.join(sorted(DATASETS))} | DIR")
    evaluate.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED)
    evaluate.add_argument("--json", action="store_true", help="print the full report as JSON")
    evaluate.set_defaults(handler=run_evaluate)
    return parser


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--field-name` option per dataclass field, typed from its annotation, default from the class."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (defaults reproduce the bundled models)")
    for f in dataclasses.fields(cls):
        flag, hint, default = "--" + f.name.replace("_", "-"), hints[f.name], f.default
        if hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(hint) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(hint), default=default, help=f"default {default}")
        else:
            group.add_argument(flag, type=hint, default=default, help=f"default {default}")


def parse_arch_options(pairs: Sequence[str]) -> dict[str, Any]:
    """["activation=relu", "c3_table=false"] -> {"activation": "relu", "c3_table": False}; values are
    read as JSON when they parse (numbers, true/false; True/False too), otherwise kept as strings."""
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


def run_bundle(args: argparse.Namespace) -> int:
    if not args.only or embedding.BUNDLE_NAME in args.only:
        embedding.run_embedding_bundle(args.models_dir, progress=not args.no_progress)
        if args.only:
            args.only = [n for n in args.only if n != embedding.BUNDLE_NAME]
            if not args.only:
                return 0  # only the embedding model was asked for
    semantic = [n for n in args.only if n in SEMANTIC_BUNDLED] if args.only else list(SEMANTIC_BUNDLED)
    if semantic:
        run_semantic_bundle(args.models_dir, semantic, progress=not args.no_progress)
    if args.only:
        args.only = [n for n in args.only if n not in SEMANTIC_BUNDLED]
        if not args.only:
            return 0  # only semantic models were asked for
    classic = [n for n in args.only if n not in DENSE_BUNDLED] if args.only else None
    dense = [n for n in args.only if n in DENSE_BUNDLED] if args.only else list(DENSE_BUNDLED)
    for result in build_bundle(args.models_dir, classic, progress=not args.no_progress) if classic != [] else []:
        print(
            f"{result.path}: test accuracy {result.test.accuracy:.4f} via ONNX Runtime "
            f"({result.test.samples - result.test.errors}/{result.test.samples}), "
            f"parity {result.parity_max_abs_diff:.1e}, {result.file_bytes:,} bytes"
        )
    if dense:
        run_dense_bundle(args.models_dir, dense, progress=not args.no_progress)
    return 0


def run_train(args: argparse.Namespace) -> int:
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    ctx = distributed.setup()  # joins the process group under torchrun; a no-op otherwise
    try:
        splits = load_dataset(args.data, args.split_seed)
        args.out.mkdir(parents=True, exist_ok=True)
        checkpoint = train_checkpoint(
            args.arch,
            splits,
            config,
            parse_arch_options(args.arch_option),
            input_spec=choose_input_spec(args.arch, splits, args.image_size),
            log_path=args.out / "metrics.jsonl",
            progress=not args.no_progress,
            state_path=args.out / "last.pt",
            resume=args.resume,
        )
        ctx.barrier()
    finally:
        distributed.teardown()
    if not ctx.is_main:
        return 0  # rank 0 writes the checkpoint
    checkpoint.summary["command"] = shlex.join(["python", "-m", "training", *args.argv])
    path = checkpoint.save(args.out / "checkpoint.pt")
    if splits.extra.get("kind") == "folders":
        write_json(args.out / "split.json", splits.split_record())
        plot_training_curves(checkpoint.history, checkpoint.summary["best_epoch"], args.out / "training_curves.png")
        val_report = score_checkpoint(checkpoint, splits.val.images, splits.val.targets)
        plot_confusion_matrix(val_report, args.out / "confusion_matrix.png", f"validation ({val_report.accuracy:.2%})")
    s = checkpoint.summary
    print(
        f"{path}: best epoch {s['best_epoch']}/{s['epochs_run']}, val accuracy {s['best_val_accuracy']:.4f}, "
        f"{s['train_seconds']:.1f} s"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    checkpoint = Checkpoint.load(args.checkpoint)
    splits = load_checkpoint_splits(checkpoint)
    result = export_checkpoint(checkpoint, args.out, splits, model_version=args.model_version)
    print(
        f"{result.path}: test accuracy {result.test.accuracy:.4f} via ONNX Runtime, "
        f"parity {result.parity_max_abs_diff:.1e}, {result.file_bytes:,} bytes ({result.exporter} exporter)"
    )
    variants = []
    if args.quantize == "int8":
        variants.append(export_int8(checkpoint, result.path, splits))
    if args.fp16:
        variants.append(export_fp16(checkpoint, result.path, splits))
    for variant in variants:
        accuracy = f"test accuracy {variant.test.accuracy:.4f} via ONNX Runtime" if variant.test else "not run on CPU"
        print(f"{variant.path}: {variant.precision}, {accuracy}, {variant.file_bytes:,} bytes")
    if args.card:
        folder = args.out.with_suffix("")
        export_command = shlex.join(["python", "-m", "training", *args.argv])
        train_command = checkpoint.summary.get("command", "# (checkpoint does not record its train command)")
        context = CardContext(
            name=args.out.stem,
            command=f"{train_command}\n{export_command}",
            config_rationale="chosen by whoever ran the training command above",
            machine=describe_machine(),
        )
        write_model_card(folder, checkpoint, splits, result, context, variants)
        print(f"model card: {folder}/README.md")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    try:
        report = evaluate_test_split(args.model, args.data, args.split_seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, args.model, read_metadata(args.model).metrics)
    return 0


def print_report(report: EvalReport, model: Path, embedded: dict[str, float]) -> None:
    print(f"{model}: {report.samples} held-out test images, ONNX Runtime")
    print(f"  accuracy       {report.accuracy:.4f}  ({report.errors} errors)")
    print(f"  macro F1       {report.macro_f1:.4f}")
    print(f"  cross-entropy  {report.cross_entropy:.4f}")
    if "test_accuracy" in embedded:
        print(f"  accuracy in the model's metadata: {embedded['test_accuracy']:.4f}")
    print("  class  precision  recall  f1      support")
    for label, m in report.per_class.items():
        print(f"  {label:>5}  {m['precision']:.4f}     {m['recall']:.4f}  {m['f1']:.4f}  {m['support']}")
    print("  confusion (rows: true, columns: predicted)")
    for label, row in zip(report.labels, report.confusion, strict=True):
        print(f"  {label:>5}  " + " ".join(f"{n:3d}" for n in row))
