"""A few-seconds trainer for demos and tests, and classification accuracy.

Not a training framework: full-batch tensors in, minibatch SGD or Adam, deterministic for a seed. The global
random state is left untouched (batch order comes from a local generator; dropout and other in-model
randomness run inside :func:`torch.random.fork_rng`), and every module's train/eval flag is restored
afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["TrainLog", "accuracy", "train"]

_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainLog:
    """What :func:`train` did.

    Attributes
    ----------
    losses:
        Minibatch loss at every step, before that step's update.
    final_loss:
        Loss on the full ``(X, y)`` after training, in eval mode (the default policy of ``Problem``).
    wall_time:
        Seconds spent in :func:`train`.
    seed:
        Seed of the batch order (and of in-model randomness such as dropout).
    optimizer, lr, batch_size:
        The settings used.
    """

    losses: tuple[float, ...]
    final_loss: float
    wall_time: float
    seed: int
    optimizer: str
    lr: float
    batch_size: int

    @property
    def steps(self) -> int:
        return len(self.losses)


@contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train or eval mode, restoring every submodule's own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


def _check_data(X: Tensor, y: Tensor) -> None:
    if len(X) != len(y):
        raise ValueError(f"X and y hold different numbers of samples: {len(X)} and {len(y)}")
    if len(X) == 0:
        raise ValueError("cannot train on an empty data set")


def _batch_indices(n: int, batch_size: int, steps: int, g: torch.Generator) -> Iterator[Tensor]:
    """Indices of ``steps`` minibatches: a fresh permutation every epoch, short remainders dropped."""
    size = min(batch_size, n)
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=g)
        for start in range(0, n - size + 1, size):
            if done == steps:
                return
            yield perm[start : start + size]
            done += 1


def train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    steps: int = 200,
    lr: float = 0.1,
    batch_size: int = 64,
    momentum: float = 0.9,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    seed: int = 0,
) -> TrainLog:
    """Train ``model`` in place for ``steps`` minibatch steps.

    Every epoch visits the samples in a new random order (from a ``torch.Generator`` seeded with ``seed``) in
    batches of ``batch_size``; a remainder shorter than a batch is skipped. The same model, data and seed give
    the same weights.

    Parameters
    ----------
    model:
        Trained in train mode; each module's original train/eval flag is restored afterwards.
    X, y:
        Inputs and targets; moved batch by batch to the model's device.
    loss_fn:
        ``loss_fn(output, target)`` returning the mean loss; default cross entropy.
    steps:
        Number of optimizer steps.
    lr, momentum, weight_decay:
        Optimizer settings; ``momentum`` is the heavy-ball coefficient of SGD and ignored by Adam.
    optimizer:
        ``"sgd"`` or ``"adam"``.
    seed:
        Seed of the batch order and of in-model randomness (dropout).

    Raises
    ------
    FloatingPointError
        If the loss becomes NaN or infinite (the learning rate is probably too large).
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    _check_data(X, y)
    loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
    device = _device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    start = time.perf_counter()
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    losses: list[float] = []
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), _mode(model, True):
        torch.manual_seed(seed)
        for idx in _batch_indices(len(X), batch_size, steps, g):
            xb, yb = X[idx].to(device), y[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"loss became {value} at step {len(losses)} (lr={lr}, optimizer={optimizer!r}): "
                    "lower the learning rate"
                )
            loss.backward()
            opt.step()
            losses.append(value)
    final = _full_loss(model, X, y, loss_fn, device)
    return TrainLog(
        losses=tuple(losses),
        final_loss=final,
        wall_time=time.perf_counter() - start,
        seed=int(seed),
        optimizer=optimizer,
        lr=float(lr),
        batch_size=batch_size,
    )


def _full_loss(
    model: nn.Module, X: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor], device: torch.device
) -> float:
    """Mean loss over all of ``(X, y)`` in eval mode, batches weighted by their size."""
    total, chunk = 0.0, 1024
    with torch.no_grad(), _mode(model, False):
        for i in range(0, len(X), chunk):
            xb, yb = X[i : i + chunk].to(device), y[i : i + chunk].to(device)
            total += float(loss_fn(model(xb), yb)) * len(xb)
    return total / len(X)


def accuracy(model: nn.Module, X: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Fraction of samples whose arg-max output equals the integer label, in eval mode without gradients.

    Every module's train/eval flag is restored afterwards.
    """
    _check_data(X, y)
    device = _device(model)
    correct = 0
    with torch.no_grad(), _mode(model, False):
        for i in range(0, len(X), batch_size):
            xb, yb = X[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / len(X)
