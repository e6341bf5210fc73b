"""Small reference models for examples, tests and benchmarks.

Every factory takes a ``seed`` and builds the same weights for the same arguments. Weights are drawn with
PyTorch's default initialisation inside :func:`torch.random.fork_rng`, leaving the global random state alone.

The residual network follows He et al. (2016), "Deep Residual Learning for Image Recognition" (CIFAR variant:
three stages of basic blocks). ``skip=False`` removes the shortcuts as in Li et al. (2018), "Visualizing the
Loss Landscape of Neural Nets", whose no-skip networks have markedly rougher landscapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["mlp", "small_cnn", "small_resnet", "w1_mlp", "w2_cnn"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> type[nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}") from None


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Run ``build`` with the CPU generator seeded to ``seed``, restoring the global state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (32,),
    out_features: int = 10,
    activation: str = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """A fully connected network ``Linear -> act -> ... -> Linear``.

    Parameters
    ----------
    in_features, out_features:
        Input and output widths.
    hidden:
        Widths of the hidden layers; ``()`` gives a linear model.
    activation:
        ``"relu"``, ``"tanh"`` or ``"gelu"``.
    seed:
        Seed of the weight initialisation.

    Returns
    -------
    nn.Sequential
        Layers ``0, 2, 4, ...`` are the ``nn.Linear`` layers.
    """
    act = _activation(activation)
    widths = [in_features, *hidden, out_features]
    for i, w in enumerate(widths):
        _positive(f"layer width #{i}", w)

    def build() -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(act())
        return nn.Sequential(*layers)

    return _seeded(build, seed)


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def _conv_block(c_in: int, c_out: int, stride: int, batchnorm: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batchnorm),
        _norm(c_out, batchnorm),
        nn.ReLU(),
    )


def small_cnn(
    in_channels: int = 1,
    num_classes: int = 10,
    width: int = 16,
    batchnorm: bool = True,
    image_size: int = 8,
    seed: int = 0,
) -> nn.Sequential:
    """A plain convolutional network: 3x3 conv blocks, global average pooling and a linear head.

    Two conv blocks (the second with stride 2) for small images; images of 16 pixels or more get a third
    block with stride 2. Channel widths are ``width, 2 * width[, 2 * width]``.

    Parameters
    ----------
    in_channels:
        Input channels (1 for the digits data, 3 for RGB).
    num_classes:
        Output width.
    width:
        Channels of the first conv layer.
    batchnorm:
        Insert ``BatchNorm2d`` after every conv (the convs then have no bias).
    image_size:
        Side length of the (square) input images, e.g. 8 or 32; any size works thanks to the global pooling.
    seed:
        Seed of the weight initialisation.
    """
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
        _positive(name, value)
    _positive("image_size", image_size)

    def build() -> nn.Sequential:
        blocks = [_conv_block(in_channels, width, 1, batchnorm), _conv_block(width, 2 * width, 2, batchnorm)]
        if image_size >= 16:
            blocks.append(_conv_block(2 * width, 2 * width, 2, batchnorm))
        return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    return _seeded(build, seed)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions, plus the input (projected when the shape changes) when ``skip`` is set.

    ``y = relu(F(x) + shortcut(x))`` with ``skip=True``, ``y = relu(F(x))`` with ``skip=False``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, skip: bool, batchnorm: bool):
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = _norm(c_out, batchnorm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=not batchnorm)
        self.bn2 = _norm(c_out, batchnorm)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if skip:
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batchnorm), _norm(c_out, batchnorm)
                )
            else:
                self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


def small_resnet(
    in_channels: int = 3,
    num_classes: int = 10,
    width: int = 16,
    num_blocks: int = 2,
    skip: bool = True,
    batchnorm: bool = True,
    seed: int = 0,
    stem_stride: int = 1,
    stages: int = 3,
) -> nn.Sequential:
    """A CIFAR-style residual network: stem conv, ``stages`` stages of basic blocks, global pooling, linear head.

    Stage ``s`` has ``width * 2**s`` channels and ``num_blocks`` blocks; every stage after the first halves the
    resolution. With three stages and ``num_blocks = n`` the depth is ``6n + 2`` (``n = 3`` is ResNet-20, He et
    al. 2016); four stages of two blocks from width 64 is the CIFAR ResNet-18 (:func:`resnet18`).

    Parameters
    ----------
    in_channels, num_classes:
        Input channels and output width.
    width:
        Channels of the stem and the first stage.
    num_blocks:
        Basic blocks per stage.
    skip:
        Keep the identity/projection shortcuts; ``False`` gives the plain network of Li et al. (2018).
    batchnorm:
        Insert ``BatchNorm2d`` after every conv (the convs then have no bias).
    seed:
        Seed of the weight initialisation.
    stem_stride:
        Stride of the stem convolution (2 quarters the cost of every later layer).
    stages:
        Number of stages.
    """
    for name, value in (
        ("stages", stages),
        ("stem_stride", stem_stride),
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("width", width),
        ("num_blocks", num_blocks),
    ):
        _positive(name, value)

    def build() -> nn.Sequential:
        layers: list[nn.Module] = [_conv_block(in_channels, width, stem_stride, batchnorm)]
        c_in = width
        for stage, c_out in enumerate(width * 2**s for s in range(stages)):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(c_in, c_out, stride, skip, batchnorm))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
        return nn.Sequential(*layers)

    return _seeded(build, seed)


def resnet18(num_classes: int = 10, in_channels: int = 3, seed: int = 0) -> nn.Sequential:
    """ResNet-18, CIFAR variant (He et al. 2016): 3x3 stem of width 64 at stride 1, four stages of two basic blocks
    (64, 128, 256, 512 channels), BatchNorm; 11,173,962 parameters for 10 classes."""
    return small_resnet(in_channels, num_classes, width=64, num_blocks=2, seed=seed, stages=4)


def w1_mlp(seed: int = 0) -> nn.Sequential:
    """Benchmark workload W1: MLP 784-128-128-10 with ReLU (118,282 parameters)."""
    return mlp(784, (128, 128), 10, activation="relu", seed=seed)


def w2_cnn(seed: int = 0) -> nn.Sequential:
    """Benchmark workload W2: residual CNN with BatchNorm for 3x32x32 inputs, 10 classes (121,390 parameters).

    ``small_resnet(width=20, num_blocks=1, stem_stride=2)``: an 8-layer residual network (stages at 16x16, 8x8,
    4x4) close to W1's size, so the two workloads differ in architecture rather than size, and cheap enough that
    a full-data gradient on 512 images takes a fraction of a second on 2 CPU cores.
    """
    return small_resnet(3, 10, width=20, num_blocks=1, skip=True, batchnorm=True, seed=seed, stem_stride=2)
