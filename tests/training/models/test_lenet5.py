import pytest
import torch

from training.models.lenet5 import C3_TABLE, LeNet5, LeNet5Config, MaskedConv2d, c3_connection_mask
from training.registry import count_parameters, get_arch

# Paper arithmetic: C1 6*(1*25+1) = 156; C3 with the table reads 60 S2 maps (6*3 + 9*4 + 1*6), so
# 60*25 + 16 = 1,516 (dense: 16*(6*25+1) = 2,416); C5 120*(16*25+1) = 48,120; F6 84*(120+1) = 10,164;
# output 10*(84+1) = 850.
PARAMS_WITH_TABLE = 156 + 1_516 + 48_120 + 10_164 + 850  # 60,806
PARAMS_DENSE_C3 = 156 + 2_416 + 48_120 + 10_164 + 850  # 61,706


@pytest.mark.parametrize("batch", [1, 5])
def test_output_is_one_logit_per_class(batch: int) -> None:
    model = LeNet5().eval()
    assert model(torch.randn(batch, 1, 32, 32)).shape == (batch, 10)


def test_parameter_count_matches_the_paper_table() -> None:
    assert count_parameters(LeNet5(LeNet5Config(c3_table=True))) == PARAMS_WITH_TABLE == 60_806
    assert count_parameters(LeNet5(LeNet5Config(c3_table=False))) == PARAMS_DENSE_C3 == 61_706
    # the masked weights are still stored (dense tensor), just not counted
    assert sum(p.numel() for p in LeNet5().parameters()) == PARAMS_DENSE_C3


def test_c3_mask_follows_the_table() -> None:
    mask = c3_connection_mask()[:, :, 0, 0]  # [16, 6]
    assert mask.shape == (16, 6)
    assert [tuple(row.nonzero().flatten().tolist()) for row in mask] == list(C3_TABLE)
    assert int(mask.sum()) == 60


def _c3(model: LeNet5) -> MaskedConv2d:
    c3 = model.features[3]
    assert isinstance(c3, MaskedConv2d)
    return c3


def test_masked_c3_weights_get_no_gradient() -> None:
    torch.manual_seed(0)
    model = LeNet5()
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    c3 = _c3(model)
    unconnected = (c3.connection_mask == 0).expand_as(c3.weight)
    assert c3.weight.grad is not None
    assert torch.all(c3.weight.grad[unconnected] == 0)
    assert torch.any(c3.weight.grad[~unconnected] != 0)


def test_perturbing_masked_weights_does_not_change_the_output() -> None:
    torch.manual_seed(0)
    model = LeNet5().eval()
    x = torch.randn(3, 1, 32, 32)
    before = model(x)
    c3 = _c3(model)
    unconnected = (c3.connection_mask == 0).expand_as(c3.weight)
    with torch.no_grad():
        c3.weight[unconnected] += 10.0
    assert torch.equal(model(x), before)
    with torch.no_grad():  # and a connected weight does matter, so the check above can fail
        c3.weight[~unconnected] += 0.1
    assert not torch.allclose(model(x), before)


@pytest.mark.parametrize(("activation", "pooling"), [("tanh", "avg"), ("relu", "max"), ("lecun_tanh", "avg")])
def test_config_variants_build_through_the_registry(activation: str, pooling: str) -> None:
    spec = get_arch("lenet5")
    model = spec.build(spec.make_config({"activation": activation, "pooling": pooling}))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_registry_rejects_unknown_options() -> None:
    with pytest.raises(ValueError, match="no config option"):
        get_arch("lenet5").make_config({"dropout": 0.5})
