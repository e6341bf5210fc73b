"""The benchmark workloads of ``/work/shared/PEERS.md``, built the same way by every ``bench_*.py`` script.

- W1: ``landscape.models.w1_mlp()`` (MLP 784-128-128-10, 118k params) on 2048 samples of a 10-class Gaussian mixture
  in 784 dimensions, 4 batches of 512, trained briefly with SGD, eval mode, float32.
- W2: ``landscape.models.w2_cnn()`` (small BatchNorm ResNet, 121k params) on ``samples`` synthetic 3 x size x size
  images (specified: 512 of 3x32x32), 4 batches, trained briefly, eval mode, float32.

Everything is seeded (``SEED``) and uses local generators only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from landscape.data import batches as split_batches
from landscape.data import gaussian_mixture, synthetic_images
from landscape.models import w1_mlp, w2_cnn
from landscape.training import train

SEED = 0


@dataclass
class Workload:
    """A benchmark problem: a model with its batches, or (SYN) a dense matrix with known eigenvalues."""

    name: str
    description: str
    model: nn.Module | None = None
    batches: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    matrix: Tensor | None = None
    exact_eigs: np.ndarray | None = None

    @property
    def X(self) -> Tensor:
        return torch.cat([x for x, _ in self.batches])

    @property
    def y(self) -> Tensor:
        return torch.cat([y for _, y in self.batches])


def count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _trained(log) -> str:
    return f"trained {log.steps} SGD steps in {log.wall_time:.2f} s, loss {log.losses[0]:.3f} -> {log.final_loss:.3f}"


def add_w2_options(parser: argparse.ArgumentParser) -> None:
    """``--w2-samples`` and ``--w2-size``: the size of a benchmark's W2 (its default when left out, else the
    specified 512 images of side 32)."""
    parser.add_argument("--w2-samples", type=int, default=None, help="W2 images (default 128; specified: 512)")
    parser.add_argument("--w2-size", type=int, default=None, help="W2 image side (default 8; specified: 32)")


def w1_data() -> tuple[Tensor, Tensor]:
    return gaussian_mixture(n=2048, dim=784, num_classes=10, separation=3.0, seed=SEED)


def w2_data(samples: int = 512, size: int = 32) -> tuple[Tensor, Tensor]:
    return synthetic_images(n=samples, channels=3, size=size, num_classes=10, seed=SEED)


def make_w1(train_steps: int, *, trained: bool = True) -> Workload:
    """W1; ``trained=False`` builds the untrained model and the data only (to load saved weights into)."""
    X, y = w1_data()
    model = w1_mlp(seed=SEED)
    note = "untrained"
    if trained:
        log = train(model, X, y, steps=train_steps, lr=0.05, batch_size=128, seed=SEED)
        note = _trained(log)
    model.eval()
    desc = f"W1: w1_mlp ({count(model)} params), 2048 x 784 gaussian_mixture, 4 batches of 512; {note}"
    return Workload("W1", desc, model, split_batches(X, y, 512))


def make_w2(train_steps: int, *, samples: int = 512, size: int = 32, trained: bool = True) -> Workload:
    """W2 with ``samples`` images of ``3 x size x size`` (the specified size is 512 x 3x32x32) in 4 batches."""
    X, y = w2_data(samples, size)
    model = w2_cnn(seed=SEED)
    note = "untrained"
    if trained:
        log = train(model, X, y, steps=train_steps, lr=0.05, batch_size=min(64, samples // 4), seed=SEED)
        note = _trained(log)
    model.eval()
    reduced = "" if (samples, size) == (512, 32) else " [REDUCED from the specified 512 x 3x32x32]"
    desc = (
        f"W2: w2_cnn ({count(model)} params, BatchNorm, eval mode), {samples} x 3x{size}x{size} synthetic_images, "
        f"4 batches of {samples // 4}{reduced}; {note}"
    )
    return Workload("W2", desc, model, split_batches(X, y, samples // 4))
