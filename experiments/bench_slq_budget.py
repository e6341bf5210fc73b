"""What SLQ loses when its bases do not fit: the three-term recurrence (two vectors per probe) against full
reorthogonalisation, same probes, on W1, W3 and a known spectrum.

- W1: ``landscape.models.w1_mlp()`` trained briefly, 2048 samples (``experiments/workloads.py``), float32.
- W3: a tanh MLP 64-20-10 (1,510 parameters) on 512 digits, float64: its dense Hessian gives the exact moments.
- OUT: a known spectrum, five outliers (50, 40, 30, 20, 10) above a standard normal bulk, n = 1500, float64.

For each: ``landscape.spectrum(op, k=5, num_probes=10, num_steps=80)`` with the default budget (full CGS2) and with
``memory_budget`` set so that only the recurrence fits; printed: the largest relative difference of the first four
spectral moments ``(1/n) tr H^j`` and of the top-5 eigenvalues between the two, the L1 distance between the two
smoothed densities (on a common grid, relative to the density's L1 norm), and, where known, each one's error.

Usage::

    python experiments/bench_slq_budget.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import landscape as L
from landscape.data import digits
from landscape.models import mlp
from landscape.operators.base import MatrixOperator
from landscape.training import train

PROBES, STEPS, SEED = 10, 80, 0


def w1():
    from workloads import make_w1

    w = make_w1(400)
    return L.hessian(L.Problem(w.model, nn.CrossEntropyLoss(), w.batches)), None


def w3():
    X, y = digits(split="train")
    model = mlp(64, (20,), 10, activation="tanh", seed=SEED).double()
    train(model, X[:512].double(), y[:512], steps=200, lr=0.1, seed=SEED)
    problem = L.Problem(model, nn.CrossEntropyLoss(), (X[:512].double(), y[:512]))
    return L.hessian(problem), np.linalg.eigvalsh(L.hessian_dense(problem).numpy())


def outliers():
    rng = np.random.default_rng(SEED)
    lam = np.concatenate([[50.0, 40.0, 30.0, 20.0, 10.0], rng.normal(0.0, 1.0, 1495)])
    Q, _ = torch.linalg.qr(torch.randn(1500, 1500, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64))
    H = (Q * torch.as_tensor(lam)) @ Q.T
    return MatrixOperator(0.5 * (H + H.T)), lam


def main() -> None:
    print(f"spectrum(k=5, num_probes={PROBES}, num_steps={STEPS}): three-term recurrence vs full reorthogonalisation")
    print(
        "| workload | n | moments 1-4, max rel. diff | top-5 max rel. diff | density L1 diff "
        "| moments error (full / three-term) | top-5 error (full / three-term) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, build in (("W1", w1), ("W3", w3), ("OUT", outliers)):
        op, exact = build()
        n = op.shape[0]
        per_vector = n * torch.empty((), dtype=op.dtype).element_size()
        full = L.spectrum(op, k=5, num_probes=PROBES, num_steps=STEPS, seed=SEED)
        lean = L.spectrum(
            op, k=5, num_probes=PROBES, num_steps=STEPS, seed=SEED, memory_budget=2 * 4 * PROBES * per_vector
        )
        assert lean.settings["reorthogonalisation"].startswith("local") and full.settings[
            "reorthogonalisation"
        ].startswith("full")
        mf, ml = full.density.moments(4).value, lean.density.moments(4).value
        moments = np.max(np.abs(ml - mf) / np.abs(mf))
        top = np.max(np.abs(lean.eigenvalues - full.eigenvalues) / np.abs(full.eigenvalues))
        lo, hi = full.density.lambda_min, full.density.lambda_max
        grid = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 4001)
        sigma = full.density.sigma
        df, dl = full.density.density(grid, sigma=sigma), lean.density.density(grid, sigma=sigma)
        l1 = np.trapezoid(np.abs(dl - df), grid) / np.trapezoid(np.abs(df), grid)
        errs = tops = "-"
        if exact is not None:
            true = np.array([np.mean(exact**j) for j in range(1, 5)])
            errs = " / ".join(f"{np.max(np.abs(m - true) / np.abs(true)):.1e}" for m in (mf, ml))
            top5 = np.sort(exact)[::-1][:5]
            tops = " / ".join(f"{np.max(np.abs(s.eigenvalues - top5) / top5):.1e}" for s in (full, lean))
        print(f"| {name} | {n:,} | {moments:.1e} | {top:.1e} | {l1:.1e} | {errs} | {tops} |", flush=True)


if __name__ == "__main__":
    main()
