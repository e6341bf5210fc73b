"""README figure and table: measured maximal stable SGD learning rate vs batch size, against 2 / lambda_max(H_B).

A small MLP is trained briefly on the digits data; from that checkpoint, for every batch size B the largest learning
rate at which plain SGD (``torch.optim.SGD``, no momentum, no weight decay) does not blow up is found by bisection,
and compared with the prediction of :func:`landscape.scaling.lr_batch_scaling`, ``2 / E[lambda_max(H_B)]`` (Granziol,
Zohren, Roberts, JMLR 2022), with the linear rule (Goyal et al. 2017) and McCandlish et al.'s ``eps_opt(B)``.

Stability criterion (measured): from the checkpoint, run ``STEPS`` SGD steps on minibatches of B examples (a fresh
random permutation of the training set every epoch, batches without replacement, the remainder dropped; B = n is
full-batch gradient descent) and evaluate the full-data training loss after every step. A run is *unstable* as soon
as that loss is not finite or exceeds ``BLOWUP`` times the checkpoint's loss; a learning rate is *stable* when the
runs for all ``SEEDS`` batch orders are stable. The maximal stable learning rate is the geometric midpoint of the
final bisection bracket ``[stable, unstable]``, bisected in log space until the bracket is narrower than ``RTOL``.

Run: python experiments/batch_size_scaling.py   ->  figures/batch_size_scaling.png and .pdf, a markdown table on stdout
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from landscape import Problem, data, models, training  # noqa: E402
from landscape.plot import save  # noqa: E402
from landscape.scaling import lr_batch_scaling  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
BATCH_SIZES = (8, 16, 32, 64, 128, 256)
STEPS = 200
SEEDS = (0, 1, 2)
BLOWUP = 2.0
RTOL = 1.03
NUM_BATCHES = 32


def sgd_is_stable(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float, loss0: float, steps: int = STEPS
) -> bool:
    """Whether plain SGD at ``lr`` keeps the full-data loss finite and below ``BLOWUP * loss0`` for every seed."""
    n = len(X)
    loss_fn = nn.CrossEntropyLoss()
    for seed in SEEDS:
        net = copy.deepcopy(model)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.0)
        gen = torch.Generator().manual_seed(seed)
        step = 0
        while step < steps:
            perm = torch.randperm(n, generator=gen) if batch_size < n else torch.arange(n)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(net(X[idx]), y[idx]).backward()
                opt.step()
                with torch.no_grad():
                    full = float(loss_fn(net(X), y))
                if not math.isfinite(full) or full > BLOWUP * loss0:
                    return False
                step += 1
                if step == steps:
                    break
    return True


def max_stable_lr(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    guess: float,
    loss0: float,
    steps: int = STEPS,
    rtol: float = RTOL,
):
    """Bisection (in log space) for the largest stable learning rate, starting from a bracket around ``guess``."""
    lo, hi = guess / 4, guess * 4
    while not sgd_is_stable(model, X, y, batch_size, lo, loss0, steps):
        lo, hi = lo / 4, lo
    while sgd_is_stable(model, X, y, batch_size, hi, loss0, steps):
        lo, hi = hi, hi * 4
    while hi / lo > rtol:
        mid = math.sqrt(lo * hi)
        if sgd_is_stable(model, X, y, batch_size, mid, loss0, steps):
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi), (lo, hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="3 batch sizes, short runs, coarse bisection: CI smoke test")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the figures")
    args = ap.parse_args()
    batch_sizes, steps, rtol, num_batches = (
        ((16, 64), 20, 1.5, 8) if args.smoke else (BATCH_SIZES, STEPS, RTOL, NUM_BATCHES)
    )
    out = args.out
    torch.set_num_threads(1)
    start = time.perf_counter()
    X, y = data.digits(split="train", seed=0, dtype=torch.float64)
    n = len(X)
    model = models.mlp(in_features=64, hidden=(32,), out_features=10, activation="tanh", seed=0).double()
    log = training.train(model, X, y, steps=300, lr=0.05, batch_size=64, momentum=0.9, seed=0)
    problem = Problem(model, nn.CrossEntropyLoss(), (X, y), batch_size=512)
    loss0 = problem.loss()

    report = lr_batch_scaling(problem, [*batch_sizes, n], num_batches=num_batches, seed=0, noise_pairs=64)
    predicted = report.spectral_lr
    measured, brackets = [], []
    for B, guess in zip(report.batch_sizes, predicted, strict=True):
        lr, bracket = max_stable_lr(model, X, y, int(B), float(guess), loss0, steps, rtol)
        measured.append(lr)
        brackets.append(bracket)
    measured = np.array(measured)

    print(
        f"MLP 64-32-10 (tanh) on digits, n = {n}, {problem.num_params} parameters; trained {log.steps} steps, "
        f"checkpoint loss {loss0:.4f}"
    )
    print(report.summary())
    print()
    print(
        "| batch size | measured max lr | predicted 2/E lambda_max(H_B) | ratio measured/predicted "
        f"| 2/max over {num_batches} batches | ratio measured/(2/max) | linear rule |"
    )
    print("|---|---|---|---|---|---|---|")
    linear, worst = report.linear_rule(), report.worst_batch_lr
    for i, B in enumerate(report.batch_sizes):
        label = f"{B} (full)" if B == n else str(B)
        print(
            f"| {label} | {measured[i]:.4g} | {predicted[i]:.4g} +- {report.spectral_lr_stderr[i]:.2g} | "
            f"{measured[i] / predicted[i]:.3f} | {worst[i]:.4g} | {measured[i] / worst[i]:.3f} | {linear[i]:.4g} |"
        )
    print(
        f"\nstability: {len(SEEDS)} seeds x {steps} plain SGD steps, unstable if the full loss is not finite or > "
        f"{BLOWUP:g} x {loss0:.4f}; bisection to a bracket ratio < {rtol}. ({time.perf_counter() - start:.0f} s)"
    )

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2))
    ax = axes[0]
    B = report.batch_sizes.astype(float)
    grid = np.geomspace(B[0], B[-1], 200)
    lo_hi = np.array(brackets).T
    ax.errorbar(
        B,
        measured,
        yerr=[measured - lo_hi[0], lo_hi[1] - measured],
        fmt="s",
        color="k",
        ms=6,
        capsize=3,
        label="measured max stable lr (SGD runs)",
        zorder=3,
    )
    ax.errorbar(
        B,
        predicted,
        yerr=report.spectral_lr_stderr,
        fmt="o",
        color="C0",
        capsize=3,
        label=r"predicted $2/\mathrm{E}\,\lambda_{\max}(H_B)$",
    )
    ax.plot(
        B,
        report.worst_batch_lr,
        "v",
        color="C1",
        mfc="none",
        ms=7,
        label=rf"$2/\max\,\lambda_{{\max}}(H_B)$ over {num_batches} batches",
    )
    ax.plot(grid, report.fitted_lr(grid), "-", color="C0", lw=1, label=r"$2/(a + b\,x(B))$ fit")
    guide = grid[grid <= batch_sizes[-1]]
    ax.plot(
        guide, measured[0] * guide / B[0], ":", color="gray", lw=1, label=r"slope-1 guide through B = 8 ($\propto B$)"
    )
    ax.plot(grid, report.linear_rule(grid), "--", color="C3", label=f"linear rule, anchored at B = {n}")
    if report.noise is not None and np.isfinite(report.noise.eps_max):
        ax.plot(
            grid,
            report.noise.eps_opt(grid),
            "-.",
            color="C2",
            label=rf"$\epsilon_{{opt}}(B)$, $B_{{noise}}$ = {report.noise.b_noise:.0f}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("learning rate")
    ax.set_title("maximal stable SGD learning rate")
    ax.legend(fontsize="x-small", loc="lower right")
    report.plot(axes[1], kind="sharpness")
    axes[1].set_title(r"top eigenvalue of the minibatch Hessian")
    fig.suptitle(f"MLP on digits (n = {n}): measured vs predicted", fontsize="medium")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        save(fig, out / f"batch_size_scaling.{ext}", dpi=150)


if __name__ == "__main__":
    main()
