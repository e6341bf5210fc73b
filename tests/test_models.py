"""Tests for landscape.models: determinism, untouched global RNG, shapes, parameter counts, shortcuts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape.models import BasicBlock, mlp, resnet18, small_cnn, small_resnet, w1_mlp, w2_cnn
from tests.helpers import global_rng_untouched

FACTORIES = {
    "mlp": lambda seed: mlp(seed=seed),
    "mlp_tanh": lambda seed: mlp(16, (8, 8), 2, activation="tanh", seed=seed),
    "small_cnn": lambda seed: small_cnn(seed=seed),
    "small_cnn_rgb32": lambda seed: small_cnn(3, 10, width=8, image_size=32, seed=seed),
    "small_resnet": lambda seed: small_resnet(width=4, num_blocks=1, seed=seed),
    "small_resnet_noskip": lambda seed: small_resnet(width=4, num_blocks=1, skip=False, seed=seed),
    "w1_mlp": lambda seed: w1_mlp(seed=seed),
    "w2_cnn": lambda seed: w2_cnn(seed=seed),
}


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", FACTORIES)
def test_same_seed_same_weights_other_seed_other_weights(name):
    build = FACTORIES[name]
    assert _states_equal(build(0), build(0))
    assert not _states_equal(build(0), build(1))


@pytest.mark.parametrize("name", FACTORIES)
def test_global_rng_untouched(name):
    with global_rng_untouched():
        FACTORIES[name](3)


def test_weights_do_not_depend_on_global_rng():
    torch.manual_seed(123)
    a = mlp(seed=5)
    torch.manual_seed(456)
    b = mlp(seed=5)
    assert _states_equal(a, b)


def test_w1_parameter_count_is_exact():
    assert _num_params(w1_mlp()) == 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10 == 118282
    assert w1_mlp()(torch.zeros(5, 784)).shape == (5, 10)


def test_w2_is_a_batchnorm_resnet_of_about_120k_parameters():
    model = w2_cnn()
    assert 100_000 <= _num_params(model) <= 140_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, BasicBlock) and m.shortcut is not None for m in model.modules())
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("activation", "cls"), [("relu", nn.ReLU), ("tanh", nn.Tanh), ("gelu", nn.GELU)])
def test_mlp_structure(activation, cls):
    model = mlp(10, (7, 5), 3, activation=activation)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 7), (7, 5), (5, 3)]
    assert sum(isinstance(m, cls) for m in model) == 2
    assert not isinstance(model[-1], cls)  # logits, no activation on the output
    assert model(torch.zeros(4, 10)).shape == (4, 3)


def test_mlp_without_hidden_layers_is_linear():
    model = mlp(6, (), 2)
    assert len(model) == 1 and isinstance(model[0], nn.Linear)


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp(activation="sigmoid")
    with pytest.raises(ValueError, match="width"):
        small_cnn(width=0)
    with pytest.raises(ValueError, match="num_blocks"):
        small_resnet(num_blocks=0)
    with pytest.raises(ValueError, match="stages"):
        small_resnet(stages=0)


def test_resnet18_is_the_cifar_variant():
    model = resnet18(seed=0).eval()
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # He et al.'s CIFAR ResNet-18, 10 classes
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17 and [c.out_channels for c in convs[::4]] == [64, 64, 128, 256, 512]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("channels", "size", "convs"), [(1, 8, 2), (3, 32, 3)])
def test_small_cnn_shapes(channels, size, convs):
    model = small_cnn(channels, 7, width=4, image_size=size).eval()
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert model(torch.zeros(3, channels, size, size)).shape == (3, 7)


def test_batchnorm_switch():
    with_bn, without = small_cnn(batchnorm=True), small_cnn(batchnorm=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    assert all(m.bias is None for m in with_bn.modules() if isinstance(m, nn.Conv2d))
    assert all(m.bias is not None for m in without.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small_resnet(batchnorm=False).modules())


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_resnet_depth(num_blocks):
    plain = small_resnet(width=4, num_blocks=num_blocks, skip=False)
    residual = small_resnet(width=4, num_blocks=num_blocks, skip=True)
    convs = sum(isinstance(m, nn.Conv2d) for m in plain.modules())
    assert convs == 1 + 6 * num_blocks
    # two projection shortcuts (1x1 convs) where the resolution halves
    assert sum(isinstance(m, nn.Conv2d) for m in residual.modules()) == convs + 2
    assert residual.eval()(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("skip", [True, False])
def test_block_with_zeroed_branch_is_identity_only_with_skip(skip):
    block = BasicBlock(4, 4, stride=1, skip=skip, batchnorm=True).eval()
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    x = torch.rand(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    expected = x if skip else torch.zeros_like(x)
    torch.testing.assert_close(block(x), expected)


def test_skip_false_changes_the_network_function():
    residual = small_resnet(width=4, num_blocks=1, skip=True).eval()
    plain = small_resnet(width=4, num_blocks=1, skip=False).eval()
    # give both the same weights on their common parameters: only the shortcuts differ
    missing, unexpected = residual.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all("shortcut" in k for k in missing)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(residual(x), plain(x))
    assert not any(m.shortcut is not None for m in plain.modules() if isinstance(m, BasicBlock))
