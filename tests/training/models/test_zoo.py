"""Every registered architecture, timm-style: builds, forward shapes for batch 1 and 5, ONNX export with a
dynamic batch axis matching PyTorch within 1e-4; plus the zoo's configurable blocks and the FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.flops import count_flops
from training.models.blocks import make_activation, make_pool
from training.models.gcn import GCN, GCNConfig, grid_adjacency, normalized_adjacency
from training.registry import archs_for, count_parameters, get_arch

CLASSIFIERS = archs_for("classification")

ZOO = ("alexnet", "inception", "resnet", "gcn")


def test_the_zoo_is_registered() -> None:
    assert set(ZOO) | {"lenet5"} <= set(CLASSIFIERS)


def build(name: str, **overrides: object) -> tuple[nn.Module, tuple[int, int, int]]:
    torch.manual_seed(0)
    spec = get_arch(name)
    model = spec.build(spec.make_config(overrides)).eval()
    s = spec.default_input
    return model, (s.channels, s.height, s.width)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("batch", [1, 5])
def test_forward_shape(name: str, batch: int) -> None:
    model, shape = build(name)
    with torch.no_grad():
        assert model(torch.randn(batch, *shape)).shape == (batch, 10)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_rgb_and_other_class_counts(name: str) -> None:
    spec = get_arch(name)
    model = spec.build(spec.make_config({"in_channels": 3, "num_classes": 4})).eval()
    s = spec.default_input
    with torch.no_grad():
        assert model(torch.randn(2, 3, s.height, s.width)).shape == (2, 4)


@pytest.mark.parametrize("name", ZOO)
def test_parameters_and_flops_are_counted(name: str) -> None:
    model, shape = build(name)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 10_000
    assert count_flops(model, shape) > 1_000_000


def test_flop_counter_counts_conv_linear_and_matmul_by_hand() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)  # 8*32*32 outputs x 3*3*3 MACs
    assert count_flops(conv, (3, 32, 32)) == 2 * 8 * 32 * 32 * 27
    assert count_flops(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (1, 3, 4)) == 2 * 12 * 5
    gcn = GCN(GCNConfig(height=4, width=4, layers=1, hidden=8, coordinates=False, readout="mean"))
    # one layer: H W (16 nodes x 1 -> 8) + A_hat (16x16) @ (16x8), then the 8 -> 10 linear
    assert count_flops(gcn, (1, 4, 4)) == 2 * (16 * 1 * 8 + 16 * 16 * 8 + 8 * 10)


def test_alexnet_shape_of_network() -> None:
    model, _ = build("alexnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 5 and len(linears) == 3 and len(pools) == 3
    assert convs[0].kernel_size == (5, 5) and convs[0].stride == (2, 2)  # large strided first kernel
    assert all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping pooling
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    bn, _ = build("alexnet", batch_norm=True, pooling="avg", activation="tanh")
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert any(isinstance(m, nn.AvgPool2d) for m in bn.modules()) and any(isinstance(m, nn.Tanh) for m in bn.modules())


def test_inception_module_concatenates_four_branches() -> None:
    model, _ = build("inception")
    module = model.stages[0]
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        parts = [module.branch1(x), module.branch2(x), module.branch3(x), module.branch4(x)]
        assert torch.equal(module(x), torch.cat(parts, 1))
    assert [p.shape[1] for p in parts] == [16, 24, 8, 8]
    assert isinstance(module.branch4[0], nn.MaxPool2d) and module.branch3[1][0].kernel_size == (5, 5)


def test_resnet_blocks_are_residual_with_batchnorm() -> None:
    model, _ = build("resnet")
    block = model.stages[0]
    x = torch.randn(2, 24, 16, 16)
    with torch.no_grad():  # zero-initialised last BN: each block starts as act(identity)
        assert torch.allclose(block(x), torch.relu(x))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) >= 7


@pytest.mark.parametrize("neighbours", [4, 8])
def test_gcn_normalized_grid_adjacency(neighbours: int) -> None:
    a = grid_adjacency(3, 3, neighbours)
    assert torch.equal(a, a.T) and a.diagonal().sum() == 0
    assert a[4].sum() == neighbours  # the centre pixel of a 3x3 grid
    a_hat = normalized_adjacency(a)
    degree = (a + torch.eye(9)).sum(1)
    expected = (a + torch.eye(9)) / torch.sqrt(degree[:, None] * degree[None, :])
    assert torch.allclose(a_hat, expected)
    assert torch.allclose(torch.linalg.eigvalsh(a_hat).max(), torch.tensor(1.0), atol=1e-5)  # spectrum in [-1, 1]


def test_gcn_is_a_graph_network_over_pixels() -> None:
    model, _ = build("gcn")
    assert model.a_hat.shape == (256, 256)
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    pooled, shape = build("gcn", readout="mean", coordinates=False)
    x = torch.randn(1, *shape)
    with torch.no_grad():  # without coordinates and with mean readout: invariant to a graph automorphism
        flipped = torch.flip(x, dims=[3])  # mirroring the grid maps it onto itself
        assert torch.allclose(pooled(x), pooled(flipped), atol=1e-5)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_activations(name: str) -> None:
    x = torch.linspace(-3, 3, 7)
    y = make_activation(name)(x.clone())
    assert y.shape == x.shape and bool((y[1:] >= y[:-1]).all())  # monotone


def test_pools_and_unknown_names() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert make_pool("max", 2)(x).flatten().tolist() == [5, 7, 13, 15]
    assert make_pool("avg", 2)(x).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    with pytest.raises(ValueError):
        make_activation("swish")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no config option"):
        get_arch("resnet").make_config({"depth": 50})
