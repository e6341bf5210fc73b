"""README figure: the roughness index along the training path of deep Ritz and deep Galerkin (PINN) losses.

Wu, Jian, Du, Chen, Zhou ("Roughness Index for Loss Landscapes of Neural Network Models of PDEs") report that the
roughness index RI first increases and then decreases along the gradient-descent path, and that around the
minimisers the deep Galerkin landscape is less rough than the deep Ritz one. Here both losses solve the same 2-D
Poisson problem in float64,

    -Laplace(u) = f  on (0, 1)^2,   u = 0 on the boundary,   u*(x, y) = sin(pi x) sin(pi y),  f = 2 pi^2 u*,

with a tanh MLP 2-H-H-1 and fixed seeded collocation points (``N_INT`` uniform interior points, ``N_BND`` uniform
boundary points), and a boundary penalty ``BETA``:

    deep Ritz      L(w) = mean_int (|grad u|^2 / 2 - f u) + BETA mean_bnd u^2
    deep Galerkin  L(w) = mean_int (Laplace(u) + f)^2     + BETA mean_bnd u^2

The PDE losses need input derivatives, and ``landscape.Problem`` takes ``loss_fn(outputs, targets)``: the model is
wrapped in :class:`PoissonNet`, whose forward returns ``[u, u_x, u_y, Laplace(u)]`` per point (autograd with respect
to the inputs, ``create_graph=True``, so gradients and Hessian-vector products with respect to the weights go through
it), and the targets are ``[f, is_boundary]``. Such a model works with the ``double_backward`` Hessian engine and with
one-point-at-a-time surfaces (the defaults of ``roughness_index``); ``forward_over_reverse`` and ``batch_points > 1``
(``torch.func`` transforms) refuse ``autograd.grad`` inside ``forward``.

Both networks start from the same initialisation and are trained by full-batch Adam; at log-spaced steps the
checkpoint's RI is computed with :func:`landscape.roughness_index` (``M`` filter-normalised directions,
span ``l = 0.1``, ``m = 20`` intervals: the paper's main setting) together with the relative L2 error of ``u``
against ``u*`` on a 41 x 41 grid. Several initialisation seeds are run.

Run: python experiments/roughness_training.py   ->  figures/roughness_training.png and .pdf, markdown table on stdout
     (about 3 minutes: 164 s CPU, one thread)
     python experiments/roughness_training.py --smoke   (tiny, seconds; figures into --out)
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _figure_files import begin, save_png_and_pdf  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from landscape import Problem, models, roughness_index  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
LOSSES = ("ritz", "galerkin")
LABELS = {"ritz": "deep Ritz", "galerkin": "deep Galerkin (PINN)"}
COLORS = {"ritz": "tab:red", "galerkin": "tab:blue"}
BETA = 100.0
SPAN = 0.1
POINTS = 21

FULL = {
    "hidden": 16,
    "n_int": 256,
    "n_bnd": 128,
    "steps": 4000,
    "lr": 3e-3,
    "checkpoints": (0, 10, 25, 50, 100, 200, 400, 1000, 2000, 4000),
    "directions": 50,
    "seeds": (0, 1, 2),
}
SMOKE = {
    "hidden": 8,
    "n_int": 32,
    "n_bnd": 16,
    "steps": 60,
    "lr": 3e-3,
    "checkpoints": (0, 20, 60),
    "directions": 6,
    "seeds": (0,),
}


class PoissonNet(nn.Module):
    """Wraps a scalar network ``u(x, y)``: forward returns ``(N, 4)`` columns ``u, u_x, u_y, Laplace(u)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        # Surfaces and loss evaluations run under no_grad; the input derivatives need autograd in any case.
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = self.net(x)
            (g,) = torch.autograd.grad(u.sum(), x, create_graph=True)
            (gx,) = torch.autograd.grad(g[:, 0].sum(), x, create_graph=True)
            (gy,) = torch.autograd.grad(g[:, 1].sum(), x, create_graph=True)
            lap = gx[:, 0] + gy[:, 1]
            return torch.cat([u, g, lap[:, None]], dim=1)


def ritz_loss(out: Tensor, target: Tensor) -> Tensor:
    f, bnd = target[:, 0], target[:, 1] > 0.5
    u, grad = out[:, 0], out[:, 1:3]
    inner = (0.5 * (grad[~bnd] ** 2).sum(dim=1) - f[~bnd] * u[~bnd]).mean()
    return inner + BETA * (u[bnd] ** 2).mean()


def galerkin_loss(out: Tensor, target: Tensor) -> Tensor:
    f, bnd = target[:, 0], target[:, 1] > 0.5
    u, lap = out[:, 0], out[:, 3]
    return ((lap[~bnd] + f[~bnd]) ** 2).mean() + BETA * (u[bnd] ** 2).mean()


LOSS_FNS = {"ritz": ritz_loss, "galerkin": galerkin_loss}


def exact(x: Tensor) -> Tensor:
    return torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])


def collocation(n_int: int, n_bnd: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded interior and boundary points ``(N, 2)`` and targets ``[f, is_boundary]``."""
    gen = torch.Generator().manual_seed(seed)
    interior = torch.rand(n_int, 2, generator=gen, dtype=torch.float64)
    t = torch.rand(n_bnd, generator=gen, dtype=torch.float64)
    side = torch.arange(n_bnd) % 4
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    bx = torch.where(side == 0, t, torch.where(side == 1, ones, torch.where(side == 2, 1 - t, zeros)))
    by = torch.where(side == 0, zeros, torch.where(side == 1, t, torch.where(side == 2, ones, 1 - t)))
    boundary = torch.stack([bx, by], dim=1)
    X = torch.cat([interior, boundary])
    f = 2 * math.pi**2 * exact(X)
    is_bnd = torch.cat([torch.zeros(n_int), torch.ones(n_bnd)]).double()
    return X, torch.stack([f, is_bnd], dim=1)


def relative_l2(net: nn.Module) -> float:
    g = torch.linspace(0, 1, 41, dtype=torch.float64)
    grid = torch.cartesian_prod(g, g)
    with torch.no_grad():
        u = net(grid)[:, 0].detach()
    ref = exact(grid)
    return float((u - ref).norm() / ref.norm())


def run(kind: str, seed: int, cfg: dict, X: Tensor, T: Tensor) -> list[dict]:
    """Train one network with full-batch Adam; roughness index and error at every checkpoint."""
    net = models.mlp(in_features=2, hidden=(cfg["hidden"], cfg["hidden"]), out_features=1, activation="tanh", seed=seed)
    model = PoissonNet(net.double())
    loss_fn = LOSS_FNS[kind]
    problem = Problem(model, loss_fn, (X, T))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    rows = []
    for step in range(cfg["steps"] + 1):
        if step in cfg["checkpoints"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # flat curves are reported in the table instead
                ri = roughness_index(
                    problem, cfg["directions"], span=SPAN, points=POINTS, seed=1000 + step, quadratic=False
                )
            rows.append(
                {
                    "loss": kind,
                    "seed": seed,
                    "step": step,
                    "value": problem.loss(),
                    "ri": ri.value,
                    "ri_se": ri.stderr,
                    "tv": float(np.nanmean(ri.total_variations)),
                    "rel_l2": relative_l2(model),
                }
            )
        if step == cfg["steps"]:
            break
        opt.zero_grad(set_to_none=True)
        loss_fn(model(X), T).backward()
        opt.step()
    return rows


def main(argv: list[str] | None = None) -> None:
    args, cfg, start = begin(__doc__, OUT, FULL, SMOKE, argv, seed_help="seed of the collocation points")
    X, T = collocation(cfg["n_int"], cfg["n_bnd"], args.seed)

    rows = [r for kind in LOSSES for seed in cfg["seeds"] for r in run(kind, seed, cfg, X, T)]

    h = cfg["hidden"]
    print(
        f"Poisson -Lap u = f on (0,1)^2, u* = sin(pi x) sin(pi y); tanh MLP 2-{h}-{h}-1 (float64), "
        f"{cfg['n_int']} interior + {cfg['n_bnd']} boundary points, BETA = {BETA:g}, full-batch Adam lr {cfg['lr']:g}; "
        f"RI over {cfg['directions']} filter-normalised directions, l = {SPAN}, m = {POINTS - 1}\n"
    )
    print("| loss | seed | step | L(w) | rel. L2 error | mean T_d | RI | RI stderr |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['loss']} | {r['seed']} | {r['step']} | {r['value']:.6g} | {r['rel_l2']:.4g} | {r['tv']:.4g} | "
            f"{r['ri']:.4g} | {r['ri_se']:.2g} |"
        )

    print("\n| loss | seed | RI at step 0 | max RI (step) | RI at the end | rise then fall | final rel. L2 error |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for kind in LOSSES:
        for seed in cfg["seeds"]:
            rs = [r for r in rows if r["loss"] == kind and r["seed"] == seed]
            ri = np.array([r["ri"] for r in rs])
            k = int(np.nanargmax(ri))
            rise_fall = 0 < k < len(rs) - 1 and ri[k] > ri[0] and ri[k] > ri[-1]
            summary[kind, seed] = (ri[0], ri[k], ri[-1], rs[-1]["rel_l2"])
            print(
                f"| {kind} | {seed} | {ri[0]:.4g} | {ri[k]:.4g} ({rs[k]['step']}) | {ri[-1]:.4g} | "
                f"{'yes' if rise_fall else 'no'} | {rs[-1]['rel_l2']:.3g} |"
            )

    print("\n| loss | RI at the end, mean over seeds | std over seeds | final rel. L2 error, mean over seeds |")
    print("|---|---|---|---|")
    for kind in LOSSES:
        end = np.array([summary[kind, seed][2] for seed in cfg["seeds"]])
        err = np.array([summary[kind, seed][3] for seed in cfg["seeds"]])
        spread = end.std(ddof=1) if len(end) > 1 else 0.0
        print(f"| {kind} | {end.mean():.4g} | {spread:.2g} | {err.mean():.3g} |")

    fig, (ax_ri, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in LOSSES:
        per_seed = [[r for r in rows if r["loss"] == kind and r["seed"] == seed] for seed in cfg["seeds"]]
        steps = np.array([max(r["step"], 1) for r in per_seed[0]])
        ri = np.array([[r["ri"] for r in rs] for rs in per_seed])
        err = np.array([[r["rel_l2"] for r in rs] for rs in per_seed])
        for k in range(len(per_seed)):
            ax_ri.plot(steps, ri[k], color=COLORS[kind], lw=0.8, alpha=0.35)
            ax_err.plot(steps, err[k], color=COLORS[kind], lw=0.8, alpha=0.35)
        se = ri.std(axis=0, ddof=1) / np.sqrt(len(ri)) if len(ri) > 1 else None
        ax_ri.errorbar(
            steps,
            ri.mean(axis=0),
            yerr=se,
            color=COLORS[kind],
            marker="o",
            ms=4,
            lw=2,
            capsize=2,
            label=f"{LABELS[kind]} (mean of seeds)",
        )
        ax_err.plot(
            steps,
            np.exp(np.log(err).mean(axis=0)),
            color=COLORS[kind],
            marker="o",
            ms=4,
            lw=2,
            label=f"{LABELS[kind]} (geometric mean)",
        )
    for ax in (ax_ri, ax_err):
        ax.set_xscale("log")
        ax.set_xlabel("Adam step (step 0 drawn at 1)")
    ax_ri.set_ylabel(f"roughness index RI (l = {SPAN}, {cfg['directions']} directions)")
    ax_ri.set_title("Roughness along the training path")
    ax_err.set_yscale("log")
    ax_err.set_ylabel(r"relative $L^2$ error of $u$")
    ax_err.set_title(f"Accuracy (thin: each of {len(cfg['seeds'])} initialisation seeds)")
    ax_ri.legend(frameon=False)
    ax_err.legend(frameon=False)
    fig.tight_layout()
    save_png_and_pdf(fig, args.out, "roughness_training", start)


if __name__ == "__main__":
    main()
