"""What torch's float32 norm does to a Lanczos three-term recurrence (stop 33).

1. The relative error of ``Tensor.norm()`` (and of the column norms of an ``(n, 8)`` block of normalised +-1 probes,
   SLQ's start) against float64, at sizes up to GPT-2 small's 1.24e8 entries, beside :mod:`landscape.reductions`.
2. The largest Ritz value after ``--steps`` float32 steps on a diagonal operator of GPT-2's shape (``--n`` entries,
   ``--outliers`` large eigenvalues at each end over a bulk near zero, top 491.3), from one Gaussian start, for
   stop 31's recurrence (``beta = ||r||`` by torch), the same with ``beta`` summed in float64, and the library's
   :func:`landscape.linalg.short_recurrence.three_term_extreme`.

``python experiments/recurrence_norms.py`` (about a minute and 5 GB at the largest size).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from landscape import reductions
from landscape.linalg import tridiagonal_eigh
from landscape.linalg.short_recurrence import three_term_extreme
from landscape.operators.base import CurvatureOperator

TOP = 491.3


class Diagonal(CurvatureOperator):
    def __init__(self, d: torch.Tensor):
        super().__init__(d.numel(), d.dtype, d.device)
        self.d = d

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.d[:, None] * V


def norm_errors(sizes: list[int]) -> None:
    print("| entries | torch 1-D norm | torch column norms, (n, 8) +-1/sqrt(n) | landscape.reductions |")
    print("|---|---|---|---|")
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        v = torch.randn(n, generator=g)
        exact = float(v.double().norm())
        block = torch.ones(n, 8).div_(math.sqrt(n))
        block[::2, 1::2] *= -1.0
        col = float(block.norm(dim=0)[0])  # exact: 1 (to float32 rounding of the entries)
        print(
            f"| {n:,} | {(float(v.norm()) - exact) / exact:+.2e} | {col - 1.0:+.2e} "
            f"| {(reductions.norm(v) - exact) / exact:+.2e} |"
        )
        del v, block


def old_step(op: CurvatureOperator, q: torch.Tensor, r: torch.Tensor, beta_prev: float, norm) -> tuple[float, float]:
    """Stop 31's step: float32 vector updates, float64 inner products, ``beta`` from ``norm``."""
    if beta_prev == 0.0:
        r.zero_()
    else:
        r.mul_(-beta_prev)
    r.add_(op.d * q)
    a = op.space.dot(q, r)
    r.sub_(q, alpha=a)
    c = op.space.dot(q, r)
    r.sub_(q, alpha=c)
    return a + c, norm(r)


def run_old(op: CurvatureOperator, v0: torch.Tensor, steps: int, norm) -> float:
    q = v0 / reductions.norm(v0)
    r = torch.empty_like(q)
    alphas, betas = [], []
    for _ in range(steps):
        a, b = old_step(op, q, r, betas[-1] if betas else 0.0, norm)
        alphas.append(a)
        betas.append(b)
        q, r = r.div_(b), q
    return float(tridiagonal_eigh(np.array(alphas), np.array(betas[:-1]))[0][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--outliers", type=int, default=800)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--sizes", type=int, nargs="*", default=[50_000, 2_000_000, 20_000_000, 124_439_808])
    args = ap.parse_args()
    norm_errors(args.sizes)
    rng = np.random.default_rng(0)
    lam = rng.normal(0.0, 0.05, args.n)
    k = args.outliers
    lam[:k] = rng.uniform(300.0, 491.0, k)
    lam[k : 2 * k] = -rng.uniform(300.0, 462.0, k)
    lam[0] = TOP
    op = Diagonal(torch.tensor(lam, dtype=torch.float32))
    top = float(op.d.max())
    print(f"\n{args.n:,} entries, {k} outliers at each end, {args.steps} float32 steps: largest Ritz value - top")
    runs = {
        "stop 31 (beta by torch's float32 norm)": lambda v: run_old(op, v, args.steps, lambda r: float(r.norm())),
        "stop 31 with beta summed in float64": lambda v: run_old(op, v, args.steps, reductions.norm),
        "landscape (two vectors, float64-formed)": lambda v: (
            three_term_extreme(op, v, lambda t: int(np.argmax(t)), 0.0, args.steps, keep_start=False).theta
        ),
    }
    for name, run in runs.items():
        v0 = torch.randn(args.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
        t0 = time.perf_counter()
        theta = run(v0)
        print(f"- {name}: {theta - top:+.3e} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
