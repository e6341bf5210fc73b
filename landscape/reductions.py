"""Norms of long vectors, accurate in float32 at 10^8 entries.

torch's CPU norm kernel (``Tensor.norm``, ``torch.linalg.vector_norm``) accumulates a float32 vector's squares in
float32 registers without cascading: on this machine (torch 2.13) the norm of a random vector comes out
``2.6e-7`` low at 5e4 entries, ``2.9e-5`` at 2e6, ``1.0e-3`` at 2e7 and 1.3-1.5% at 1.24e8, GPT-2 small's
parameter count; the columns of an ``(n, p)`` block saturate outright (a +-1 column of 1.24e8 entries: 4096, the
square root of ``2^24``, instead of 11155; normalised, 0.5 instead of 1), see ``experiments/recurrence_norms.py``
and pytorch/pytorch#169237, #151761 (``Tensor.sum`` cascades and is accurate). A Lanczos recurrence that
normalises its vectors with it drifts: on GPT-2 small the largest Ritz value climbed 1.6% above the top eigenvalue
in 800 steps, and SLQ's start vectors came out 2.7x too long, which made its trace -40x the probes' ``v^T H v``.

Here the squares are summed in float64, ``CHUNK`` entries of the reduced dimension at a time (no float64 copy of a
long vector): the error is that of float64 summation, ``O(n eps_64)`` at worst.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Entries of the reduced dimension converted to float64 at a time.
CHUNK = 1 << 20


def sum_of_squares(x: Tensor, dim: int | None = None) -> Tensor:
    """``sum x_i^2`` over ``dim`` (every entry when ``None``) in float64."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    other = max(1, x.numel() // max(1, x.shape[dim]))
    step = max(1, CHUNK // other)
    total: Tensor | None = None
    for part in x.split(step, dim=dim):
        s = part.double().square_().sum(dim=dim) if part.dtype != torch.float64 else part.square().sum(dim=dim)
        total = s if total is None else total.add_(s)
    if total is None:  # an empty dimension
        return x.double().sum(dim=dim)
    return total


def norm(x: Tensor) -> float:
    """Euclidean norm of all entries of ``x``."""
    return math.sqrt(float(sum_of_squares(x)))


def norms(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """Euclidean norms over ``dim`` (e.g. ``dim=0``: of the columns of an ``(n, k)`` block), in ``x``'s dtype."""
    out = sum_of_squares(x, dim).sqrt_().to(x.dtype)
    return out.unsqueeze(dim) if keepdim else out
