"""Hessian structure of a trained classifier: about C outliers above a bulk near zero (Sagun et al. 2018; Papyan 2019).

Setting. Digits (scikit-learn's shipped 8x8 images, training split) restricted to the classes ``0..C-1`` for
C = 3, 5, 10; a one-hidden-layer ReLU MLP ``64-h-C`` of width h = 32, 128, 512 in float64, trained from a seeded
initialisation by SGD (lr 0.02, momentum 0.9, batches of 64) in chunks of 10 steps until the full training loss falls
below a target (0.3 for the main table: the regime where the structure is clearest; rows for C = 10 at the lower
targets 0.1 and 0.03 show what happens later in training). At that point, for the Hessian H and the Gauss-Newton
matrix G (GGN) of the mean cross-entropy on those training samples:

- ``top_eigen(k = 2C + 6)`` (Lanczos, relative residual tolerance 1e-6): the top of the spectrum;
- ``spectral_density`` (stochastic Lanczos quadrature, 4 probes x 60 steps): the whole density, plotted on a log
  scale (outliers have weight ~1/P each and are invisible on a linear scale).

Outlier criterion: with the top eigenvalues sorted, lambda_1 >= lambda_2 >= ..., the number of outliers is the index
i of the largest ratio lambda_i / lambda_{i+1} (i < 2C + 6), and the outliers count as *clearly separated* when that
ratio is at least 2. The bulk edge is lambda_{i+1}, the largest eigenvalue not counted as an outlier; lambda_min
comes from the SLQ Ritz values (the bulk's negative side; the GGN is positive semi-definite).

Run: python experiments/hessian_structure.py   ->  figures/hessian_structure.png and .pdf, a markdown table on stdout
(about 75 s of CPU time on one core, 3.5 minutes wall on a busy 2-core machine; ``--smoke``: tiny sizes, ~8 s).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import landscape as L  # noqa: E402
from landscape import data, models, training  # noqa: E402
from landscape.plot import save  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
GAP_MIN = 2.0  # a largest gap ratio at least this large counts as clearly separated outliers
EIG_TOL = 1e-6
CHUNK = 10  # training steps between loss checks


@dataclass
class Config:
    classes: tuple[int, ...]
    widths: tuple[int, ...]
    target: float
    late_targets: tuple[float, ...]  # extra rows for the largest C and the middle width
    max_steps: int
    probes: int
    steps: int


FULL = Config(
    classes=(3, 5, 10), widths=(32, 128, 512), target=0.3, late_targets=(0.1, 0.03), max_steps=3000, probes=4, steps=60
)
SMOKE = Config(classes=(3, 5), widths=(16,), target=0.5, late_targets=(), max_steps=300, probes=3, steps=20)


@dataclass
class Row:
    C: int
    width: int
    params: int
    target: float
    train_steps: int
    loss: float
    acc: float
    eig_h: np.ndarray
    eig_g: np.ndarray
    dens_h: L.SpectralDensity
    dens_g: L.SpectralDensity
    n_out: int
    gap: float
    n_out_g: int
    gap_g: float

    @property
    def clear(self) -> bool:
        return self.gap >= GAP_MIN


def outliers(values: np.ndarray) -> tuple[int, float]:
    """Count i of the largest ratio lambda_i / lambda_{i+1} among the positive eigenvalues, and that ratio."""
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    v = v[v > 0]
    ratios = v[:-1] / v[1:]
    i = int(np.argmax(ratios))
    return i + 1, float(ratios[i])


def fit(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, target: float, max_steps: int, seed: int):
    """SGD in chunks of CHUNK steps (chunk j uses batch-order seed ``seed * 100003 + j``) until loss < target."""
    done, log = 0, None
    while done < max_steps:
        log = training.train(
            model, X, y, steps=CHUNK, lr=0.02, batch_size=64, momentum=0.9, seed=seed * 100003 + done // CHUNK
        )
        done += CHUNK
        if log.final_loss < target:
            break
    return log.final_loss, done


def analyse(C: int, width: int, target: float, X: torch.Tensor, y: torch.Tensor, cfg: Config, seed: int) -> Row:
    keep = y < C
    Xc, yc = X[keep], y[keep]
    model = models.mlp(64, (width,), C, seed=seed).double()
    loss, steps = fit(model, Xc, yc, target, cfg.max_steps, seed)
    problem = L.Problem(model, torch.nn.CrossEntropyLoss(), (Xc, yc))
    H = L.hessian(problem, engine="double_backward", block="loop")
    G = L.ggn(problem)
    k = 2 * C + 6
    eh = L.top_eigen(H, k=k, tol=EIG_TOL, seed=seed)
    eg = L.top_eigen(G, k=k, tol=EIG_TOL, seed=seed)
    dh = L.spectral_density(H, num_probes=cfg.probes, num_steps=cfg.steps, seed=seed)
    dg = L.spectral_density(G, num_probes=cfg.probes, num_steps=cfg.steps, seed=seed)
    n_out, gap = outliers(eh.values)
    n_out_g, gap_g = outliers(eg.values)
    return Row(
        C,
        width,
        problem.num_params,
        target,
        steps,
        loss,
        training.accuracy(model, Xc, yc),
        np.sort(eh.values)[::-1],
        np.sort(eg.values)[::-1],
        dh,
        dg,
        n_out,
        gap,
        n_out_g,
        gap_g,
    )


def table(rows: list[Row]) -> str:
    head = (
        "| C | width | P | loss target | steps | train loss | train acc | #outliers H (gap ratio) "
        "| #outliers GGN (gap ratio) | lambda_max H | lambda_max GGN | bulk edge H | bulk edge GGN "
        "| lambda_min H (SLQ) | lambda_min GGN (SLQ) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mark = "" if r.clear else " (not clear)"
        lines.append(
            f"| {r.C} | {r.width} | {r.params} | {r.target:g} | {r.train_steps} | {r.loss:.4f} | {r.acc:.3f} "
            f"| {r.n_out} ({r.gap:.2f}){mark} | {r.n_out_g} ({r.gap_g:.2f}) | {r.eig_h[0]:.4f} | {r.eig_g[0]:.4f} "
            f"| {r.eig_h[r.n_out]:.4f} | {r.eig_g[r.n_out_g]:.4f} | {r.dens_h.lambda_min:.4f} "
            f"| {r.dens_g.lambda_min:.4f} |"
        )
    return "\n".join(lines)


def density_panel(ax, pairs: list[tuple[L.SpectralDensity, str, dict]], marks: np.ndarray | None = None) -> None:
    """Log-scale smoothed densities on a shared grid and smoothing width; ``marks``: outliers as red ticks."""
    lo = min(d.lambda_min for d, _, _ in pairs)
    hi = max(d.lambda_max for d, _, _ in pairs)
    sigma = max(d.sigma for d, _, _ in pairs)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2000)
    for d, label, style in pairs:
        phi = d.density(grid, sigma=sigma)
        ax.plot(grid, np.maximum(phi, 1e-8), label=label, **style)
    ax.set_yscale("log")
    ax.set_ylim(1e-6, None)
    if marks is not None:
        for v in marks:
            ax.axvline(v, color="tab:red", lw=0.6, ls=":", zorder=0)
    ax.set_xlabel("eigenvalue")
    ax.grid(True, alpha=0.3)


def figure(rows: list[Row], cfg: Config, out: Path) -> list[Path]:
    main = [r for r in rows if r.target == cfg.target]
    wmid = cfg.widths[len(cfg.widths) // 2]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, C in zip(axes[0], cfg.classes, strict=False):
        r = next(r for r in main if r.C == C and r.width == wmid)
        density_panel(
            ax,
            [
                (r.dens_h, "Hessian", {"color": "tab:blue", "lw": 1.3}),
                (r.dens_g, "GGN", {"color": "tab:orange", "lw": 1.1, "ls": "--"}),
            ],
            marks=r.eig_h[: r.n_out],
        )
        ax.set_title(f"C = {C}, width {wmid} (P = {r.params:,}): {r.n_out} outliers (red)")
        ax.set_ylabel("density (log scale)")
        ax.legend(frameon=False, fontsize=8)
    for ax in axes[0, len(cfg.classes) :]:
        ax.set_visible(False)
    Cmax = max(cfg.classes)
    ax = axes[1, 0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    density_panel(
        ax,
        [
            (r.dens_h, f"width {r.width} (P = {r.params:,})", {"color": colors[i], "lw": 1.2})
            for i, r in enumerate(r for r in main if r.C == Cmax)
        ],
    )
    ax.set_title(f"C = {Cmax}: Hessian density vs width")
    ax.set_ylabel("density (log scale)")
    ax.legend(frameon=False, fontsize=8)

    ax = axes[1, 1]
    for i, w in enumerate(cfg.widths):
        rs = [r for r in main if r.width == w]
        x = np.array([r.C for r in rs]) + (i - (len(cfg.widths) - 1) / 2) * 0.15
        ax.plot(x, [r.n_out for r in rs], "o-", color=colors[i], label=f"width {w}")
        for xi, r in zip(x, rs, strict=True):
            if not r.clear:
                ax.plot(xi, r.n_out, "o", mfc="white", color=colors[i])
    cs = np.array(cfg.classes)
    ax.plot(cs, cs, color="0.5", ls=":", label="C")
    ax.plot(cs, cs - 1, color="0.2", ls="--", label="C - 1")
    ax.set_xlabel("number of classes C")
    ax.set_ylabel(f"# outliers (largest gap, ratio >= {GAP_MIN:g})")
    ax.set_xticks(cs)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("outlier count vs number of classes")
    ax.grid(True, alpha=0.3)

    ax = axes[1, 2]
    late = [r for r in rows if r.C == Cmax and r.width == wmid]
    for i, r in enumerate(sorted(late, key=lambda r: -r.target)):
        idx = np.arange(1, len(r.eig_h) + 1)
        ax.semilogy(idx, r.eig_h, "o-", ms=3, color=colors[i], label=f"H, loss {r.loss:.3f}")
        ax.semilogy(idx, r.eig_g, "x", ms=4, color=colors[i], label=f"GGN, loss {r.loss:.3f}")
    ax.axvline(Cmax - 0.5, color="0.3", ls="--", lw=0.8)
    ax.set_xlabel("index i")
    ax.set_ylabel("lambda_i")
    ax.set_title(f"C = {Cmax}, width {wmid}: top eigenvalues during training")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return [save(fig, out / f"hessian_structure.{ext}", dpi=150) for ext in ("png", "pdf")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a few seconds): a smoke test")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation, batch order and probes")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the figures (default: figures/)")
    parser.add_argument("--no-figure", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    X, y = data.digits(split="train", seed=0, dtype=torch.float64)
    rows = [analyse(C, w, cfg.target, X, y, cfg, args.seed) for C in cfg.classes for w in cfg.widths]
    wmid = cfg.widths[len(cfg.widths) // 2]
    rows += [analyse(max(cfg.classes), wmid, t, X, y, cfg, args.seed) for t in cfg.late_targets]
    print(
        f"Hessian vs GGN of a 64-h-C ReLU MLP on digits classes 0..C-1 (float64, seed {args.seed}); outliers = "
        f"largest ratio lambda_i/lambda_(i+1) among the top 2C+6, clear when >= {GAP_MIN:g}\n"
    )
    print(table(rows))
    if args.no_figure:
        print(f"\ndone in {time.perf_counter() - start:.0f} s (no figure)")
        return
    paths = figure(rows, cfg, args.out)
    print(f"\nwrote {paths[0]} and .pdf in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
