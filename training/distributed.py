"""Data-parallel training across processes and machines with torch.distributed.

The same `python -m training train ...` command runs on one process or under torchrun:

    torchrun --nproc_per_node 2 -m training train --arch resnet --data DIR --out runs/x     # one machine
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --rdzv_backend c10d \\
        --rdzv_endpoint HOST0:29500 -m training train --arch resnet --data DIR --out runs/x   # each node

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `setup()` then joins the process group (NCCL when CUDA is
available, gloo on CPU), every rank wraps the model in DistributedDataParallel (gradients averaged at
every step), reads its own shard of each epoch's shuffled order (a DistributedSampler), and the epoch's
metrics are summed across ranks. Only rank 0 writes the metrics log, the resumable state and the
checkpoint. `batch_size` is per process: the effective batch is batch_size x world size.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

# Test-only: when set, every rank writes rank<N>.sha256, the hash of its final weights, into this folder.
DEBUG_WEIGHTS_ENV = "STRIDE_DEBUG_WEIGHT_HASH_DIR"


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of `values` over all ranks (a copy; float64 is fine on gloo, moved to GPU for NCCL)."""
        if not self.enabled:
            return values
        on_device = values.to(self.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
        return on_device.cpu()

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Average the gradients of parameters trained outside the DDP module (a loss head) across ranks."""
        if not self.enabled:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world_size

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics drift apart per shard)."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


_context = Context()


def context() -> Context:
    return _context


def setup() -> Context:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    global _context
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        _context = Context()
        return _context
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _context = Context(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    return _context


def teardown() -> None:
    global _context
    if dist.is_initialized():
        dist.destroy_process_group()
    _context = Context()


class ShardSampler:
    """Each epoch's shuffled order of the N training items, this rank's shard of it. A thin layer over
    torch's DistributedSampler (same seed on every rank, `set_epoch` reshuffles; the shard is padded by
    repetition so every rank runs the same number of steps, which DDP requires)."""

    def __init__(self, size: int, ctx: Context, seed: int) -> None:
        self.sampler = DistributedSampler(
            range(size), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False
        )

    @property
    def shard_size(self) -> int:
        return self.sampler.num_samples

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        self.sampler.set_epoch(epoch)
        return torch.tensor(list(self.sampler), dtype=torch.long)


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_debug_hash(state_dict: dict[str, torch.Tensor]) -> None:
    folder = os.environ.get(DEBUG_WEIGHTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank{_context.rank}.sha256").write_text(weights_hash(state_dict) + "\n")
