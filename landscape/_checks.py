"""Argument validation shared by every analysis: one copy, one behaviour (whether an object is a Problem is
checked by :func:`landscape.problem.check_problem`, one layer up).

A value of the wrong type raises ``TypeError``; a value of the right type outside its range raises ``ValueError``.
Every message names the argument, what it means and what was given, so the fix is in the message.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "Seed",
    "check_batch_size",
    "check_counts",
    "check_int",
    "check_positive",
    "check_seed",
    "check_unit",
    "generator",
    "seed_int",
]

Seed = int | torch.Generator


def check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    """``value`` as an ``int`` at least ``minimum``; ``TypeError`` for a non-integer (``bool`` and ``3.0`` too)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int ({meaning}), got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def check_counts(**counts: object) -> None:
    """Each keyword argument an ``int`` count ``>= 1`` (:func:`check_int`, the keyword naming it)."""
    for name, value in counts.items():
        check_int(name, value, 1, "a positive count")


def check_positive(name: str, value: object, meaning: str, *, allow_zero: bool = False) -> float:
    """``value`` as a finite ``float`` that is ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number ({meaning}), got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound} ({meaning}), got {value!r}")
    return float(value)


def check_unit(name: str, value: object, meaning: str) -> float:
    """``value`` as a ``float`` in ``[0, 1)`` (momentum, betas, dampening)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1) ({meaning}), got {type(value).__name__} {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1) ({meaning}), got {value!r}")
    return float(value)


def check_batch_size(name: str, batch_size: object, n: int) -> int:
    """A minibatch size ``1 <= b <= n`` (minibatches are drawn without replacement from ``n`` examples)."""
    b = check_int(name, batch_size, 1, "examples per minibatch")
    if b > n:
        raise ValueError(
            f"{name}={b} is larger than the data set (n={n} examples); minibatches are drawn without replacement, "
            f"so use 1 <= {name} <= {n}"
        )
    return b


def check_seed(seed: object) -> Seed:
    """``seed`` itself when it is an ``int`` or a ``torch.Generator``; ``TypeError`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, torch.Generator)):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return seed if isinstance(seed, torch.Generator) else int(seed)


def seed_int(seed: object) -> int:
    """An ``int`` seed: ``seed`` itself, or one drawn from a ``torch.Generator`` (which advances it, and only it).

    Routines that derive several streams from one seed (one per batch, per probe block, per rank) take their root
    seed through here, so an ``int`` and a ``Generator`` are accepted alike and the ``int`` is what results record.
    """
    seed = check_seed(seed)
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed, device=seed.device).item())
    return seed


def generator(seed: object, device: torch.device | str = "cpu") -> torch.Generator:
    """The ``torch.Generator`` given as ``seed``, or a new one on ``device`` seeded with the ``int``."""
    seed = check_seed(seed)
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(seed)
