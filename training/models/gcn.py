"""A graph convolutional network (Kipf & Welling, 2017) on the image's pixel-grid graph.

The image is treated as a graph, not as a grid for convolution: every pixel is a node, edges join each
pixel to its 4 or 8 neighbours, and each layer is the GCN propagation rule

    H' = act(A_hat @ H @ W + b),   A_hat = D^-1/2 (A + I) D^-1/2

with A the adjacency of the grid, I the self-loops and D the degree matrix of A + I. A_hat is a fixed
dense [N, N] buffer (N = H*W = 256 nodes at 16x16; 256 KB), so the ONNX graph is plain MatMuls.

    input   1x16x16                                  -> 256 nodes
    node features: pixel value(s) + (x, y) coordinates in [-1, 1] -> [B, 256, C+2]
    gcn1..3 hidden 32 each, ReLU                     -> [B, 256, 32]
    readout flatten (node order is fixed: the grid)  -> [B, 8192]   or mean / max over nodes
    dropout, linear                                  -> logits

A GCN layer alone cannot tell nodes apart by position (the grid looks the same from every interior
pixel), so the coordinates are appended as node features; the default "flatten" readout keeps node
identity too. With readout="mean" the model is translation-tolerant but much weaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from training.models.blocks import Activation, make_activation

CARD_SUMMARY = """\
A graph network on an image graph, not a CNN: each pixel of the 16x16 input is a node of a grid graph
(8-neighbour edges by default), with the pixel value(s) and the pixel's (x, y) position as node
features. Three GCN layers (Kipf & Welling 2017) each compute H' = ReLU(Â H W + b) with the fixed
normalised adjacency Â = D^-1/2 (A + I) D^-1/2 (a dense 256x256 buffer in the ONNX graph), then the
node features are read out (flattened in grid order by default; mean or max pooling as options) →
dropout → linear → logits. Neighbourhood (4/8), hidden width, depth, activation, readout and dropout
are options."""

Readout = Literal["flatten", "mean", "max"]


@dataclass(frozen=True)
class GCNConfig:
    height: int = 16
    width: int = 16
    neighbours: Literal[4, 8] = 8
    hidden: int = 32
    layers: int = 3
    activation: Activation = "relu"
    readout: Readout = "flatten"
    coordinates: bool = True  # append (x, y) to each node's features
    dropout: float = 0.3
    in_channels: int = 1
    num_classes: int = 10


def grid_adjacency(height: int, width: int, neighbours: int = 8) -> torch.Tensor:
    """0/1 adjacency [N, N] of the pixel grid, N = height*width, node index = row*width + col."""
    if neighbours not in (4, 8):
        raise ValueError("neighbours must be 4 or 8")
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if neighbours == 8:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    n = height * width
    adjacency = torch.zeros(n, n)
    for r in range(height):
        for c in range(width):
            for dr, dc in offsets:
                rr, cc = r + dr, c + dc
                if 0 <= rr < height and 0 <= cc < width:
                    adjacency[r * width + c, rr * width + cc] = 1.0
    return adjacency


def normalized_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2, D the degree matrix of A + I."""
    a = adjacency + torch.eye(adjacency.shape[0])
    d_inv_sqrt = a.sum(1).rsqrt()  # [N]
    return d_inv_sqrt[:, None] * a * d_inv_sqrt[None, :]


class GraphConv(nn.Module):
    """H' = A_hat @ H @ W + b for H: [B, N, F_in] -> [B, N, F_out]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)  # holds W and b

    def forward(self, h: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        # The bias is added after propagation: A_hat's rows do not sum to 1, so A_hat (HW + b) != A_hat HW + b.
        support = h @ self.linear.weight.T  # [B, N, F_out]
        return a_hat @ support + self.linear.bias  # [N, N] @ [B, N, F_out] -> [B, N, F_out]


class GCN(nn.Module):
    def __init__(self, config: GCNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or GCNConfig()
        self.register_buffer("a_hat", normalized_adjacency(grid_adjacency(c.height, c.width, c.neighbours)))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, c.height), torch.linspace(-1, 1, c.width), indexing="ij")
        self.register_buffer("coords", torch.stack([xs.flatten(), ys.flatten()], 1))  # [N, 2]
        features = c.in_channels + (2 if c.coordinates else 0)
        self.convs = nn.ModuleList()
        for _ in range(c.layers):
            self.convs.append(GraphConv(features, c.hidden))
            features = c.hidden
        self.act = make_activation(c.activation)
        nodes = c.height * c.width
        readout_features = c.hidden * nodes if c.readout == "flatten" else c.hidden
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(readout_features, c.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, height, width = x.shape  # [B, C, H, W]; H, W must be the configured grid
        h = x.reshape(b, ch, height * width).transpose(1, 2)  # [B, N, C]: one row of features per node
        if self.config.coordinates:
            h = torch.cat([h, self.coords.expand(b, -1, -1)], dim=2)  # [B, N, C+2]
        for conv in self.convs:
            h = self.act(conv(h, self.a_hat))  # [B, N, hidden]
        if self.config.readout == "flatten":
            h = h.flatten(1)  # [B, N*hidden]
        elif self.config.readout == "mean":
            h = h.mean(1)
        else:
            h = h.amax(1)
        return self.head(h)
