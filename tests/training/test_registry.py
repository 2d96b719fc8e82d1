"""One test over every registered architecture and every task it serves: it builds from its data config,
trains (a couple of seconds through the one trainer), exports through the one export module with parity
and golden checks, and its file is a contract-valid Stride model. An architecture added to
training/registry.py is covered here with no other change (only a small config, below, keeps it fast)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from service.contract import Task
from training.checkpoint import Checkpoint
from training.export import export_checkpoint, read_metadata
from training.pipeline import train
from training.registry import ARCHS, get_arch
from training.tasks import TASK_NAMES, get_task
from training.tasks.base import EvalRequest, TrainRequest

# Smaller widths where the defaults would make this test slow; an architecture missing here trains as is.
SMALL_ARCH: dict[str, dict[str, Any]] = {
    "alexnet": {"widths": [8, 8, 8, 8, 8], "fc_width": 16},
    "inception": {"stem_width": 8},
    "dense": {"width": 8, "head_width": 16, "prototypes": 4, "proto_width": 8, "keypoint_refine": 8},
    "unet": {"widths": [4, 8]},
    "embednet": {"width": 8, "dimension": 16},
}
# Tiny data per task: generated items, and task options that shrink a run.
SMALL_DATA: dict[str, dict[str, Any]] = {
    "detection": {"count": 8},
    "instance_segmentation": {"count": 8},
    "keypoints": {"count": 8},
    "semantic_segmentation": {"count": 8},
}
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "semantic_segmentation": {"crop": 32, "batch_size": 4},
    "embedding": {"identities": 12, "views": 3, "eval_identities": 6, "eval_probes": 1},
}
SMALL_EVAL: dict[str, EvalRequest] = {
    "detection": EvalRequest(seed=5, count=4),
    "instance_segmentation": EvalRequest(seed=5, count=4),
    "keypoints": EvalRequest(seed=5, count=4),
    "semantic_segmentation": EvalRequest(seed=5, count=4),
    "embedding": EvalRequest(count=6),
}
PAIRS = [(arch, task) for arch, spec in ARCHS.items() for task in spec.tasks]


def test_every_task_has_an_architecture_and_every_architecture_a_known_task() -> None:
    assert {task for _arch, task in PAIRS} == set(TASK_NAMES)


@pytest.mark.parametrize(("arch", "task"), PAIRS, ids=[f"{a}-{t}" for a, t in PAIRS])
def test_builds_trains_exports_with_parity(arch: str, task: str, tmp_path: Path) -> None:
    plugin = get_task(task)
    spec = get_arch(arch)
    assert spec.make_config() == spec.config_cls()  # the registry's defaults build
    config = plugin.config_cls(**{"epochs": 1, "batch_size": 8, "threads": 1, "max_minutes": 0.05,
                                  **SMALL_OPTIONS.get(task, {})})
    request = TrainRequest(data=plugin.default_data, arch=arch, arch_options=SMALL_ARCH.get(arch, {}),
                           **SMALL_DATA.get(task, {}))
    checkpoint = train(task, request, config, tmp_path / "run", progress=False)
    assert checkpoint is not None and checkpoint.summary["steps"] >= 1
    assert checkpoint.train_config == asdict(config)
    reloaded = Checkpoint.load(tmp_path / "run" / "checkpoint.pt")  # weights_only
    assert reloaded.task == task and reloaded.arch == arch and reloaded.input_spec == spec.input_for(0)

    result = export_checkpoint(reloaded, tmp_path / f"{arch}.onnx", evaluation=SMALL_EVAL.get(task))
    assert all(diff <= plugin.parity_atol[name] for name, diff in result.parity.items())
    meta = read_metadata(result.path)  # the service's parser: contract-valid
    assert meta.task is Task(task) and meta.metrics == result.evaluation.metrics and meta.metrics
    assert [o.name for o in meta.outputs] == [o.name for o in plugin.outputs(reloaded)]
    assert meta.golden is not None and meta.golden.samples
