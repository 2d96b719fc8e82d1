"""FLOPs per image, counted by hand: every conv, linear and matrix product the forward pass executes.

A `TorchFunctionMode` sees each torch call with its real tensors, so this counts what actually runs,
including the functional matmuls of the GCN (A_hat @ H) that module hooks would miss. One
multiply-accumulate counts as 2 FLOPs. Pooling, activations, BatchNorm, additions and concatenation are
not counted (they are a few percent at most here); the result says so where it is reported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


class _MacCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (F.conv2d, torch.conv2d):
            weight = args[1] if len(args) > 1 else kwargs["weight"]  # [out, in/groups, kh, kw]
            # each output element: in/groups * kh * kw MACs
            self.macs += out.numel() * math.prod(weight.shape[1:])
        elif func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs["weight"]  # [out, in]
            self.macs += out.numel() * weight.shape[1]
        elif func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm):
            a = args[0]
            self.macs += out.numel() * a.shape[-1]
        return out


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs (2 x multiply-accumulates of conv/linear/matmul) for one image of shape [C, H, W]."""
    was_training = model.training
    model.eval()
    try:
        with _MacCounter() as counter:
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return 2 * counter.macs
