"""The `train` command under torchrun: 2 CPU processes on gloo with DistributedDataParallel must end with
identical weights (each rank writes a hash of its final weights to a test-only debug folder), and only
rank 0 writes the checkpoint and the metrics log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.training.folder_images import write_dataset
from training.checkpoint import Checkpoint
from training.distributed import DEBUG_WEIGHTS_ENV, weights_hash
from training.registry import get_arch

REPO = Path(__file__).resolve().parents[2]


def test_two_gloo_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", per_class=12)
    run, hashes = tmp_path / "run", tmp_path / "hashes"
    env = {**os.environ, DEBUG_WEIGHTS_ENV: str(hashes), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training", "train", "--arch", "resnet", "--data", str(data), "--out", str(run),
               "--image-size", "8", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--no-progress",
               "--arch-option", "widths=[8, 16]"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    rank0, rank1 = ((hashes / f"rank{r}.sha256").read_text().strip() for r in (0, 1))
    assert rank0 == rank1  # gradients were all-reduced and BatchNorm buffers synchronised every epoch
    checkpoint = Checkpoint.load(run / "checkpoint.pt")
    assert weights_hash(checkpoint.state_dict) == rank0  # rank 0 saved exactly those weights
    assert checkpoint.summary["world_size"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # one writer, one row per epoch
    # Trained: the weights moved away from the seeded initialisation every rank started from.
    torch.manual_seed(0)
    initial = get_arch("resnet").build(get_arch("resnet").make_config(checkpoint.arch_config)).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in checkpoint.state_dict.items())
