"""The largest Ritz value of the three-term Lanczos recurrence step by step, at real scale.

Runs ``top_eigen``'s own recurrence (same start vector as ``top_eigen(seed=0)``) for ``--steps`` products without
stopping, stores its coefficients ``alpha, beta`` and, for every step ``m``, the largest Ritz value ``theta_m`` and
its relative residual bound ``|beta_m y_m| / max|theta|``: how far the residual test, and a stop rule that also
watches the growth of ``theta_m``, would have been from the answer the longest run gives.

The coefficients and the time of every step are written to the output file every ``--save-every`` steps, so a
long run (a reference: 800 steps of GPT-2 small take about an hour here) that is stopped keeps what it measured;
the Ritz values are added at the end. Kuczynski & Wozniakowski's bound (``landscape.linalg.random_start``) turns
step ``m``'s largest Ritz value into an upper bound on the largest eigenvalue that holds with probability 0.99:
``lambda_max <= theta_m (1 + relative_error_at(n, m, theta_m, theta_m - theta_min))``, both ends of the spectrum
bounded (the Ritz values' spread stands for the unknown one, inflated by what the steps allow).

Usage::

    python experiments/ritz_trajectory.py gpt2 --steps 150     # ~10 min on 2 cores
    python experiments/ritz_trajectory.py gpt2 --steps 800 --out experiments/results/ritz_reference_gpt2.json
    python experiments/ritz_trajectory.py gpt2 --steps 400 --float64-vectors --reference \
        --out experiments/results/ritz_reference_gpt2_f64.json     # bench_scale's reference, ~30 min
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import landscape
from landscape.linalg import random_start, tridiagonal_eigh
from landscape.linalg._common import start_block
from landscape.linalg.probes import make_generator
from landscape.linalg.short_recurrence import three_term_extreme
from landscape.operators.base import CurvatureOperator

HERE = Path(__file__).resolve().parent
GPT2_SMALL_PARAMS = 124_439_808  # for files written before the parameter count was recorded


def trajectory(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``theta_m`` (largest Ritz value of ``T_m``), its relative residual bound and the smallest Ritz value, for
    every ``m``."""
    thetas, residuals, lowest = [], [], []
    for m in range(1, len(alphas) + 1):
        theta, Y = tridiagonal_eigh(np.asarray(alphas[:m]), np.asarray(betas[: m - 1]))
        thetas.append(theta[-1])
        lowest.append(theta[0])
        residuals.append(abs(betas[m - 1] * Y[-1, -1]) / np.max(np.abs(theta)))
    return np.array(thetas), np.array(residuals), np.array(lowest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=("gpt2", "resnet18"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="default: results/ritz_trajectory_<workload>.json")
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument(
        "--float64-vectors",
        action="store_true",
        help="run the recurrence's two vectors (and its inner products) in float64, the products in the model's "
        "float32: a float32 recurrence's rounding lets its Ritz values creep above the spectrum over hundreds of steps",
    )
    ap.add_argument(
        "--reference",
        action="store_true",
        help="write the last largest Ritz value and its 0.99 upper bound to results/scale_reference.json "
        "(the reference bench_scale.py measures top-1 errors against)",
    )
    ap.add_argument("--reference-only", action="store_true", help="--reference from an earlier run's --out file")
    args = ap.parse_args()
    path = args.out or HERE / "results" / f"ritz_trajectory_{args.workload}.json"
    if args.reference_only:  # an earlier (perhaps stopped) run: its Ritz values again from its coefficients
        out = json.loads(path.read_text())
        summarise(out, out.get("num_params") or GPT2_SMALL_PARAMS)
        path.write_text(json.dumps({**out, "steps": len(out["alphas"])}) + "\n")
        write_reference(out)
        return
    import bench_scale

    p = bench_scale.problem(args.workload)
    op = landscape.hessian(p)
    v0 = start_block(op, None, 1, make_generator(args.seed), "gaussian")[:, 0]
    if args.float64_vectors:
        op, v0 = Float64Vectors(op), v0.double()
    out = {"workload": args.workload, "seed": args.seed, "num_params": p.num_params}
    out["vectors_dtype"] = str(v0.dtype)
    out |= {"alphas": [], "betas": [], "step_end_s": []}

    def save() -> None:
        path.write_text(json.dumps({**out, "steps": len(out["alphas"])}) + "\n")

    def record(m: int, alpha: float, beta: float) -> None:
        out["alphas"].append(alpha)
        out["betas"].append(beta)
        out["step_end_s"].append(time.perf_counter() - t0)
        if m % args.save_every == 0:
            save()

    t0 = time.perf_counter()
    three_term_extreme(op, v0, lambda theta: int(np.argmax(theta)), 0.0, args.steps, keep_start=False, on_step=record)
    out["seconds"] = time.perf_counter() - t0
    summarise(out, p.num_params)
    save()
    for m in (10, 20, 30, 40, 60, 80, 100, 120, 150, 200, 300, 400, 600, 800, 1000):
        if m <= len(out["theta"]):
            print(
                f"step {m:4d} ({out['step_end_s'][m - 1]:.0f} s): theta {out['theta'][m - 1]:.6f}  relative "
                f"residual {out['relative_residual'][m - 1]:.2e}  upper bound (0.99) {out['upper_bound_0.99'][m - 1]}"
            )
    print(f"{out['seconds']:.0f} s; written to {path}")
    if args.reference:
        write_reference(out)


class Float64Vectors(CurvatureOperator):
    """``op`` seen from float64 vectors: each product casts its input to ``op``'s dtype and adds the result into
    the float64 output."""

    def __init__(self, op: CurvatureOperator):
        super().__init__(op.shape[0], torch.float64, op.device)
        self.op = op

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op @ V.to(self.op.dtype)


def summarise(out: dict, n: int) -> None:
    """Add every step's largest and smallest Ritz values, relative residual and 0.99 upper bound to ``out``."""
    thetas, residuals, lowest = trajectory(out["alphas"], out["betas"])
    rel = [
        random_start.relative_error_at(n, m, t, t - lo) for m, (t, lo) in enumerate(zip(thetas, lowest, strict=True), 1)
    ]
    out["theta"] = thetas.tolist()
    out["relative_residual"] = residuals.tolist()
    out["theta_min"] = lowest.tolist()
    out["upper_bound_0.99"] = [t + r * abs(t) if np.isfinite(r) else None for t, r in zip(thetas, rel, strict=True)]


def write_reference(run: dict) -> None:
    """The run's last largest Ritz value (a lower bound) and its 0.99 upper bound as ``bench_scale``'s reference."""
    import bench_scale

    refs = json.loads(bench_scale.REFERENCE.read_text()) if bench_scale.REFERENCE.exists() else {}
    refs[run["workload"]] = {
        "eigenvalue": run["theta"][-1],
        "upper_bound_0.99": run["upper_bound_0.99"][-1],
        "products": len(run["theta"]),
        "method": f"three-term Lanczos, {len(run['theta'])} steps from seed {run['seed']}, "
        f"{run.get('vectors_dtype', 'torch.float32')} vectors (ritz_trajectory.py)",
    }
    bench_scale.REFERENCE.write_text(json.dumps(refs, indent=1) + "\n")
    print(f"reference written to {bench_scale.REFERENCE}: {refs[run['workload']]}")


if __name__ == "__main__":
    main()
