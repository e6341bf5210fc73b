"""Helpers shared by the linalg tests: test operators with a known spectrum and global-RNG bookkeeping."""

from __future__ import annotations

import random

import numpy as np
import torch

from landscape.operators.base import CurvatureOperator, MatrixOperator

# Distinct, separated extremes on both ends; the most negative eigenvalue is second in magnitude so "LM" mixes signs.
SPECTRUM = np.concatenate([[-9.5, -6.0, -5.5, -5.1, -4.8], np.linspace(-4.0, 5.0, 190), [7.2, 7.7, 8.3, 9.0, 10.0]])


class DiagonalOperator(CurvatureOperator):
    """``diag(d)`` without a dense matrix: spectra of 10^4-10^5 eigenvalues at the cost of a vector."""

    def __init__(self, d: torch.Tensor):
        super().__init__(d.numel(), d.dtype, d.device)
        self.d = d

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * V


def operator_with_spectrum(lam, seed: int = 0) -> tuple[MatrixOperator, torch.Tensor]:
    """A dense symmetric ``H = Q diag(lam) Q^T`` with a seeded random orthogonal ``Q``, and its operator."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=g, dtype=torch.float64))
    H = (Q * lam) @ Q.T
    H = 0.5 * (H + H.T)
    return MatrixOperator(H), H


def global_rng_state():
    """Snapshot of the global torch, numpy and :mod:`random` states."""
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def assert_same_rng_state(before) -> None:
    """Assert that none of the global random states changed since ``before = global_rng_state()``."""
    after = global_rng_state()
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert before[2] == after[2]
