"""The largest Ritz value of the three-term Lanczos recurrence step by step, at real scale.

Runs ``top_eigen``'s own recurrence (same start vector as ``top_eigen(seed=0)``) for ``--steps`` products without
stopping, stores its coefficients ``alpha, beta`` and, for every step ``m``, the largest Ritz value ``theta_m`` and
its relative residual bound ``|beta_m y_m| / max|theta|``: how far the residual test, and a stop rule that also
watches the growth of ``theta_m``, would have been from the answer the longest run gives.

Usage::

    python experiments/ritz_trajectory.py gpt2 --steps 150     # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import landscape
from landscape.linalg import tridiagonal_eigh
from landscape.linalg._common import start_block
from landscape.linalg.probes import make_generator
from landscape.linalg.short_recurrence import three_term_extreme

HERE = Path(__file__).resolve().parent


def trajectory(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """``theta_m`` (largest Ritz value of ``T_m``) and its relative residual bound, for every ``m``."""
    thetas, residuals = [], []
    for m in range(1, len(alphas) + 1):
        theta, Y = tridiagonal_eigh(np.asarray(alphas[:m]), np.asarray(betas[: m - 1]))
        thetas.append(theta[-1])
        residuals.append(abs(betas[m - 1] * Y[-1, -1]) / np.max(np.abs(theta)))
    return np.array(thetas), np.array(residuals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=("gpt2", "resnet18"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import bench_scale

    op = landscape.hessian(bench_scale.problem(args.workload))
    v0 = start_block(op, None, 1, make_generator(args.seed), "gaussian")[:, 0]
    t0 = time.perf_counter()
    run = three_term_extreme(op, v0, lambda theta: int(np.argmax(theta)), 0.0, args.steps, keep_start=False)
    seconds = time.perf_counter() - t0
    thetas, residuals = trajectory(run.alphas, run.betas)
    out = {
        "workload": args.workload,
        "seed": args.seed,
        "steps": len(run.alphas),
        "seconds": seconds,
        "alphas": run.alphas,
        "betas": run.betas,
        "theta": thetas.tolist(),
        "relative_residual": residuals.tolist(),
    }
    path = HERE / "results" / f"ritz_trajectory_{args.workload}.json"
    path.write_text(json.dumps(out) + "\n")
    for m in (10, 20, 30, 40, 60, 80, 100, 120, 150, 200, 300):
        if m <= len(thetas):
            print(f"step {m:4d}: theta {thetas[m - 1]:.6f}  relative residual {residuals[m - 1]:.2e}")
    print(f"{seconds:.0f} s; written to {path}")


if __name__ == "__main__":
    main()
