"""Flat vs sharp minima: small-batch SGD, large-batch SGD and SAM on digits (Keskar et al. 2017; Foret et al. 2021).

Setting. The same ReLU MLP 64-64-64-10 (8,970 parameters, float64, the same seeded initialisation) is trained on the
digits training split (1,438 images) by three methods with the same learning rate (0.05) and heavy-ball momentum (0.9),
batches drawn from a seeded permutation every epoch, each until the full training loss first falls below 1e-3
(checked every 25 steps, at most 8000 steps). Stopping at the same training loss matters: the cross-entropy Hessian
of an interpolating network shrinks as its loss goes to zero, so networks stopped at different losses differ in
curvature for that reason alone (``--target-loss 0 --steps 3000`` runs a fixed number of steps instead):

- ``SGD B=16`` (small batch), ``SGD B=512`` (large batch), and
- ``SAM B=16`` (Foret et al. 2021: at each step the gradient is taken at ``w + rho g / ||g||`` with the minibatch
  gradient g, rho = 0.05, and applied at w by the same momentum SGD).

Then, for each trained network, on the full training split (the Problem) and the held-out test split (359 images):
test accuracy, lambda_max (Lanczos), trace of the Hessian (adaptive Hutch++, with its standard error), SAM sharpness
(rho = 0.05, p = 2, first-order start plus 20 ascent steps), adaptive average-case sharpness (rho = 0.05 relative
Gaussian noise, ``delta = rho (|w| + 0.01) z``, 20 antithetic draws, with its standard error) and the roughness index
(Wu et al.: 100 filter-normalised directions, span 0.1, 21 points). The table repeats this for several seeds
(initialisation, batch order, estimator probes) and gives mean +- sd over seeds. The figure (first seed) shows 2D
filter-normalised surfaces of the three networks with the same direction seed and the same log-spaced levels, 1D
filter-normalised slices, and the linear interpolation (Goodfellow et al. 2015; Keskar et al. Fig. 3) from the
small-batch solution to the large-batch and to the SAM solution, on training and test data.

Run: python experiments/flat_vs_sharp.py   ->  figures/flat_vs_sharp.png and .pdf, markdown tables on stdout
(about 75 s of CPU time on one core, 2.5 minutes wall on a busy 2-core machine; ``--smoke``: tiny sizes, ~10 s).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import landscape as L  # noqa: E402
from landscape import data, models, training  # noqa: E402
from landscape import surface as S  # noqa: E402
from landscape.plot import save  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
LR = 0.05
MOMENTUM = 0.9
RHO = 0.05  # SAM training radius and SAM-sharpness radius
CHECK_EVERY = 25  # steps between full-loss checks against the target
METHODS = (("SGD B=16", 16, 0.0), ("SGD B=512", 512, 0.0), ("SAM B=16", 16, RHO))
COLORS = ("tab:blue", "tab:red", "tab:green")


@dataclass
class Config:
    seeds: tuple[int, ...]
    steps: int  # maximum
    target: float  # stop when the full training loss is below this (0: always run ``steps``)
    hidden: tuple[int, ...]
    trace_matvecs: int
    roughness_directions: int
    resolution_2d: int
    resolution_1d: int
    avg_samples: int
    sam_steps: int


FULL = Config(
    seeds=(0, 1, 2),
    steps=8000,
    target=1e-3,
    hidden=(64, 64),
    trace_matvecs=100,
    roughness_directions=100,
    resolution_2d=25,
    resolution_1d=41,
    avg_samples=20,
    sam_steps=20,
)
SMOKE = Config(
    seeds=(0,),
    steps=60,
    target=0.8,
    hidden=(16,),
    trace_matvecs=12,
    roughness_directions=4,
    resolution_2d=5,
    resolution_1d=7,
    avg_samples=2,
    sam_steps=2,
)


def full_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def fit(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    rho: float,
    steps: int,
    seed: int,
    target: float = 0.0,
) -> int:
    """Momentum SGD (``rho = 0``) or SAM (``rho > 0``) for at most ``steps`` minibatch steps.

    With ``target > 0`` training stops at the first multiple of CHECK_EVERY steps where the full training loss is
    below ``target``. Returns the number of steps taken.
    """
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    n, done = len(X), 0
    model.train()
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            if done == steps or (target > 0 and done % CHECK_EVERY == 0 and done and full_loss(model, X, y) < target):
                model.eval()
                return done
            idx = perm[start : start + batch_size]
            xb, yb = X[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            if rho > 0:
                with torch.no_grad():
                    norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
                    eps = [rho * p.grad / (norm + 1e-12) for p in params]
                    for p, e in zip(params, eps, strict=True):
                        p.add_(e)
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(xb), yb).backward()
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.sub_(e)
            opt.step()
            done += 1
    model.eval()
    return done


@dataclass
class Measures:
    steps: int
    train_loss: float
    train_acc: float
    test_acc: float
    lambda_max: float
    trace: float
    trace_se: float
    sam: float
    avg: float
    avg_se: float
    ri: float
    ri_se: float


def measure(model: nn.Module, train: L.Problem, Xtr, ytr, Xte, yte, cfg: Config, seed: int, steps: int) -> Measures:
    H = L.hessian(train, engine="double_backward", block="loop")
    lam = L.top_eigen(H, k=1, tol=1e-6, seed=seed).values[0]
    tr = L.trace(H, method="hutch++", num_matvecs=cfg.trace_matvecs, seed=seed)
    sam = L.sam_sharpness(train, rho=RHO, steps=cfg.sam_steps, seed=seed)
    avg = L.average_sharpness(train, rho=RHO, adaptive=True, num_samples=cfg.avg_samples, seed=seed)
    ri = L.roughness_index(
        train, num_directions=cfg.roughness_directions, span=0.1, points=21, seed=seed, quadratic=False
    )
    return Measures(
        steps,
        train.loss(),
        training.accuracy(model, Xtr, ytr),
        training.accuracy(model, Xte, yte),
        lam,
        float(tr.value),
        float(tr.stderr),
        float(sam.value),
        float(avg.value),
        float(avg.stderr),
        float(ri.value),
        float(ri.stderr),
    )


def run_seed(seed: int, cfg: Config, Xtr, ytr, Xte, yte):
    out = {}
    for name, batch, rho in METHODS:
        t = time.perf_counter()
        model = models.mlp(64, cfg.hidden, 10, seed=seed).double()
        init = copy.deepcopy(model)
        steps = fit(model, Xtr, ytr, batch, rho, cfg.steps, seed, cfg.target)
        t_train = time.perf_counter() - t
        problem = L.Problem(model, nn.CrossEntropyLoss(), (Xtr, ytr))
        m = measure(model, problem, Xtr, ytr, Xte, yte, cfg, seed, steps)
        out[name] = (model, init, problem, m)
        t_meas = time.perf_counter() - t - t_train
        print(f"  seed {seed} {name}: trained in {t_train:.1f} s, measured in {t_meas:.1f} s", flush=True)
    return out


def fmt(values: list[float], digits: int = 4) -> str:
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 1:
        return f"{a[0]:.{digits}g}"
    return f"{a.mean():.{digits}g} +- {a.std(ddof=1):.2g}"


def tables(results: list[dict], seeds: tuple[int, ...]) -> str:
    cols = [
        ("steps", "steps"),
        ("train loss", "train_loss"),
        ("train acc", "train_acc"),
        ("test acc", "test_acc"),
        ("lambda_max", "lambda_max"),
        ("trace", "trace"),
        ("SAM sharpness", "sam"),
        ("avg sharpness (adaptive)", "avg"),
        ("roughness index", "ri"),
    ]
    se = {"trace": "trace_se", "avg": "avg_se", "ri": "ri_se"}
    lines = [f"mean +- sd over seeds {', '.join(map(str, seeds))}:", ""]
    head = "| method | " + " | ".join(c for c, _ in cols) + " |"
    lines += [head, "|" + "---|" * (len(cols) + 1)]
    for name, _, _ in METHODS:
        cells = [fmt([getattr(r[name][3], key) for r in results]) for _, key in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "per seed (estimator standard errors in brackets):", ""]
    head = "| seed | method | " + " | ".join(c for c, _ in cols) + " |"
    lines += [head, "|" + "---|" * (len(cols) + 2)]
    for seed, r in zip(seeds, results, strict=True):
        for name, _, _ in METHODS:
            m = r[name][3]
            cells = []
            for _, key in cols:
                v = f"{getattr(m, key):.4g}"
                if key in se:
                    v += f" ({getattr(m, se[key]):.2g})"
                cells.append(v)
            lines.append(f"| {seed} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(res: dict, cfg: Config, Xte, yte, out: Path, seed: int) -> list[Path]:
    fig = plt.figure(figsize=(15, 8.6))
    gs = fig.add_gridspec(2, 3, height_ratios=(1.05, 1))
    surfs, lines1d = {}, {}
    for name, _, _ in METHODS:
        problem = res[name][2]
        d2 = S.filter_normalized(problem, 2, seed=seed)
        surfs[name] = S.surface(problem, d2, span=(-1, 1), resolution=cfg.resolution_2d, accuracy=False)
        d1 = S.filter_normalized(problem, 1, seed=seed + 1000)
        lines1d[name] = S.surface(problem, d1, span=(-1, 1), resolution=cfg.resolution_1d, accuracy=False)
    lo = min(float(s.loss.min()) for s in surfs.values())
    hi = max(float(s.loss.max()) for s in surfs.values())
    levels = np.geomspace(max(lo, 1e-4), hi, 25)
    for j, (name, _, _) in enumerate(METHODS):
        ax = fig.add_subplot(gs[0, j])
        surfs[name].plot("contour", ax=ax, log_levels=True, levels=levels, title="")
        m = res[name][3]
        ax.set_title(f"{name}: test acc {m.test_acc:.3f}, lambda_max {m.lambda_max:.3g}", fontsize=10)
        ax.set_aspect("equal")

    ax = fig.add_subplot(gs[1, 0])
    for (name, _, _), color in zip(METHODS, COLORS, strict=True):
        s = lines1d[name]
        ax.semilogy(s.coords[0], s.loss, color=color, label=name)
    ax.set_xlabel("filter-normalised direction (same seed for all)")
    ax.set_ylabel("training loss")
    ax.set_title("1D slices through each minimum")
    ax.legend(frameon=False, fontsize=9)
    ax.grid(True, alpha=0.3)

    ax = fig.add_subplot(gs[1, 1])
    small = res[METHODS[0][0]][0]
    test_problem = L.Problem(small, nn.CrossEntropyLoss(), (Xte, yte))
    for (name, _, _), color in zip(METHODS[1:], COLORS[1:], strict=True):
        other = res[name][0]
        for problem, ls, which in ((res[METHODS[0][0]][2], "-", "train"), (test_problem, "--", "test")):
            line = S.interpolate(problem, small, other, span=(-0.5, 1.5), resolution=cfg.resolution_1d, accuracy=False)
            ax.semilogy(line.coords[0], line.loss, color=color, ls=ls, label=f"to {name}, {which}")
    ax.axvline(0, color="0.5", lw=0.8, ls=":")
    ax.axvline(1, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel(f"alpha: (1 - alpha) w[{METHODS[0][0]}] + alpha w[other]")
    ax.set_ylabel("loss")
    ax.set_title("linear interpolation from the small-batch solution")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(True, alpha=0.3)

    ax = fig.add_subplot(gs[1, 2])
    names = [n for n, _, _ in METHODS]
    ms = [res[n][3] for n in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [m.lambda_max for m in ms], 0.4, color=COLORS, label="lambda_max")
    ax2 = ax.twinx()
    ax2.errorbar(x + 0.2, [m.trace for m in ms], yerr=[2 * m.trace_se for m in ms], fmt="ko", label="trace (+-2 se)")
    ax.set_xticks(x, names)
    ax.set_ylabel("lambda_max (bars)")
    ax2.set_ylabel("trace of H (dots, +-2 se)")
    ax.set_title(f"curvature at the minimum (seed {seed})")
    fig.tight_layout()
    return [save(fig, out / f"flat_vs_sharp.{ext}", dpi=150) for ext in ("png", "pdf")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a few seconds): a smoke test")
    parser.add_argument("--seeds", type=str, default=None, help="comma-separated seeds (default 0,1,2; smoke 0)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the figures (default: figures/)")
    parser.add_argument(
        "--target-loss", type=float, default=None, help="stop at this training loss (0: fixed steps; default 1e-3)"
    )
    parser.add_argument("--steps", type=int, default=None, help="maximum training steps (default 8000)")
    parser.add_argument("--no-figure", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = SMOKE if args.smoke else FULL
    if args.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.target_loss is not None:
        cfg = dataclasses.replace(cfg, target=args.target_loss)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    start = time.perf_counter()
    Xtr, ytr = data.digits(split="train", seed=0, dtype=torch.float64)
    Xte, yte = data.digits(split="test", seed=0, dtype=torch.float64)
    print(
        f"MLP 64-{'-'.join(map(str, cfg.hidden))}-10 on digits ({len(Xtr)} train / {len(Xte)} test), "
        f"at most {cfg.steps} steps"
        + (
            f", stopping at training loss < {cfg.target:g} (checked every {CHECK_EVERY} steps)"
            if cfg.target > 0
            else ""
        )
        + f", "
        f"lr {LR}, momentum {MOMENTUM}, SAM rho {RHO}"
    )
    results = [run_seed(s, cfg, Xtr, ytr, Xte, yte) for s in cfg.seeds]
    print()
    print(tables(results, cfg.seeds))
    if args.no_figure:
        print(f"\ndone in {time.perf_counter() - start:.0f} s (no figure)")
        return
    paths = figure(results[0], cfg, Xte, yte, args.out, cfg.seeds[0])
    print(f"\nwrote {paths[0]} and .pdf in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
