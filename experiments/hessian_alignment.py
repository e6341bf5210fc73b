"""README figure: Hessian and gradient alignment between two domains against the transfer gap (Hemati et al. 2023).

Hemati, Zhang, Estiri, Chen ("Understanding Hessian Alignment for Domain Generalization", ICCV 2023) bound the
transfer measure between a source and a target domain by the spectral norm of the difference of the classifier
head's Hessians, and align domains with two cheap surrogates that never form a Hessian: the Hessian-gradient product
(HGP) ``H_e g_e``, computed as ``||g_e|| grad ||g_e||`` by double backpropagation, and Hutchinson's estimate of
``diag(H_e)``. With ``E`` domains and the mean ``m`` over them, the penalties are

    gradient     sum_e ||g_e - mean g||^2           (= 1/2 ||g_A - g_B||^2 for two domains)
    HGP          sum_e ||H_e g_e - mean H g||^2     (= 1/2 ||H_A g_A - H_B g_B||^2)
    Hutchinson   sum_e ||D_e - mean D||^2           (= 1/2 ||D_A - D_B||^2, D_e = Hutchinson diag(H_e))

all over the classifier head (the last Linear layer), as in the paper.

Here domain A is scikit-learn's digits (held-out test split), domain B the same images rotated by an angle or
translated to the right by a (sub-pixel) shift (``scipy.ndimage``, bilinear, zero padding, before standardisation
with the training statistics). A float64 MLP 64-32-10 (tanh) is trained on A's training split only (SGD with
momentum; three seeds). For every shift strength the script measures the transfer gap (loss on B minus loss on A,
and accuracy on A minus accuracy on B) and the alignment quantities above, together with the exact
``||H_A - H_B||_2`` from the dense head Hessians (330 x 330); it checks the double-backprop HGP against landscape's
Hessian-vector product and the Hutchinson diagonal (``landscape.diagonal``, 200 Rademacher probes) against the exact
diagonal. Then Spearman correlations of each quantity with the transfer gap over all shifts and seeds.

Run: python experiments/hessian_alignment.py   ->  figures/hessian_alignment.png and .pdf, markdown tables on stdout
     (about 20 s (18 s CPU, one thread))
     python experiments/hessian_alignment.py --smoke   (tiny, seconds; figures into --out)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _figure_files import begin, save_png_and_pdf  # noqa: E402
from scipy import ndimage, stats  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from landscape import Problem, data, diagonal, hessian, hessian_dense, models, training  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
FULL = {
    "rotate": (0, 5, 10, 15, 20, 30, 45),
    "translate": (0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
    "seeds": (0, 1, 2),
    "hidden": 32,
    "steps": 1500,
    "probes": 200,
}
SMOKE = {"rotate": (0, 15), "translate": (0.5,), "seeds": (0,), "hidden": 8, "steps": 100, "probes": 20}
QUANTITIES = (
    ("spectral", r"exact $\|H_A - H_B\|_2$ (head)"),
    ("hgp", r"HGP penalty $\frac{1}{2}\|H_A g_A - H_B g_B\|^2$"),
    ("hutchinson", r"Hutchinson penalty $\frac{1}{2}\|D_A - D_B\|^2$"),
    ("gradient", r"gradient penalty $\frac{1}{2}\|g_A - g_B\|^2$"),
)
FAMILY_STYLE = {"rotate": ("tab:blue", "o", "rotation (deg)"), "translate": ("tab:orange", "s", "translation (px)")}


def transform(images: np.ndarray, family: str, strength: float) -> np.ndarray:
    """Rotate (degrees, about the centre) or translate (pixels, to the right) ``(N, 8, 8)`` images in [0, 1]."""
    if strength == 0:
        return images.copy()
    if family == "rotate":
        return ndimage.rotate(images, strength, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    return ndimage.shift(images, (0, 0, strength), order=1, mode="constant", cval=0.0)


def head_names(model: nn.Module) -> list[str]:
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return [f"{last}.weight", f"{last}.bias"]


def hgp_double_backprop(model: nn.Module, names: list[str], X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``g`` and ``H g = ||g|| grad ||g||`` over the head parameters (the paper's HGP), by double backpropagation."""
    params = {n: p.detach().clone().requires_grad_(n in names) for n, p in model.named_parameters()}
    loss = nn.functional.cross_entropy(functional_call(model, params, (X,)), y)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    norm = g.norm()
    hg = torch.cat([t.reshape(-1) for t in torch.autograd.grad(norm, [params[n] for n in names])])
    return g.detach(), (norm.detach() * hg)


def evaluate(model: nn.Module, X: Tensor, y: Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = model(X)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def domain(problem_model: nn.Module, names: list[str], X: Tensor, y: Tensor, probes: int) -> dict:
    problem = Problem(problem_model, nn.CrossEntropyLoss(), (X, y), params=names)
    g, hgp = hgp_double_backprop(problem_model, names, X, y)
    hvp = hessian(problem, engine="double_backward", block="loop") @ g
    H = hessian_dense(problem)
    est = diagonal(
        hessian(problem, engine="double_backward", block="loop"), method="hutchinson", num_matvecs=probes, seed=0
    )
    return {
        "g": g,
        "hgp": hgp,
        "hgp_check": float((hgp - hvp).norm() / hvp.norm().clamp_min(1e-300)),
        "H": H,
        "diag": est.value,
        "diag_err": float((est.value - H.diagonal()).norm() / H.diagonal().norm()),
    }


def main(argv: list[str] | None = None) -> None:
    args, cfg, start = begin(__doc__, OUT, FULL, SMOKE, argv)

    raw_train, y_train = data.digits(split="train", normalize=False, flatten=False, dtype=torch.float64)
    raw_test, y_test = data.digits(split="test", normalize=False, flatten=False, dtype=torch.float64)
    mean, std = raw_train.mean(), raw_train.std(unbiased=False)

    def standardise(images: np.ndarray) -> Tensor:
        return ((torch.as_tensor(images) - mean) / std).reshape(len(images), 64)

    test_images = raw_test[:, 0].numpy()
    X_A = standardise(test_images)
    shifts = [("rotate", s) for s in cfg["rotate"]] + [("translate", s) for s in cfg["translate"]]
    rows, checks = [], []
    for seed in cfg["seeds"]:
        model = models.mlp(
            in_features=64, hidden=(cfg["hidden"],), out_features=10, activation="tanh", seed=seed
        ).double()
        training.train(
            model,
            standardise(raw_train[:, 0].numpy()),
            y_train,
            steps=cfg["steps"],
            lr=0.05,
            batch_size=64,
            momentum=0.9,
            seed=seed,
        )
        names = head_names(model)
        loss_A, acc_A = evaluate(model, X_A, y_test)
        A = domain(model, names, X_A, y_test, cfg["probes"])
        checks.append((A["hgp_check"], A["diag_err"]))
        for family, strength in shifts:
            X_B = standardise(transform(test_images, family, strength))
            loss_B, acc_B = evaluate(model, X_B, y_test)
            B = domain(model, names, X_B, y_test, cfg["probes"])
            checks.append((B["hgp_check"], B["diag_err"]))
            rows.append(
                {
                    "seed": seed,
                    "family": family,
                    "strength": strength,
                    "loss_A": loss_A,
                    "loss_B": loss_B,
                    "acc_A": acc_A,
                    "acc_B": acc_B,
                    "gap": loss_B - loss_A,
                    "acc_gap": acc_A - acc_B,
                    "spectral": float(torch.linalg.eigvalsh(A["H"] - B["H"]).abs().max()),
                    "hgp": float(0.5 * (A["hgp"] - B["hgp"]).pow(2).sum()),
                    "hutchinson": float(0.5 * (A["diag"] - B["diag"]).pow(2).sum()),
                    "hutchinson_exact": float(0.5 * (A["H"].diagonal() - B["H"].diagonal()).pow(2).sum()),
                    "gradient": float(0.5 * (A["g"] - B["g"]).pow(2).sum()),
                }
            )

    print(
        f"MLP 64-{cfg['hidden']}-10 (tanh, float64) trained on digits (domain A) for {cfg['steps']} SGD steps, seeds "
        f"{list(cfg['seeds'])}; domain B = A's {len(y_test)} test images rotated / translated; head = last Linear "
        f"({10 * cfg['hidden'] + 10} parameters, dense Hessians); Hutchinson diagonal with {cfg['probes']} probes\n"
    )
    print(
        "| seed | shift | acc A | acc B | loss gap (B - A) | acc gap (A - B) | spectral norm H_A - H_B | HGP penalty | "
        "Hutchinson penalty | (exact diag) | gradient penalty |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        unit = "deg" if r["family"] == "rotate" else "px"
        print(
            f"| {r['seed']} | {r['family']} {r['strength']:g} {unit} | {r['acc_A']:.4f} | {r['acc_B']:.4f} | "
            f"{r['gap']:.4f} | {r['acc_gap']:.4f} | {r['spectral']:.4g} | {r['hgp']:.4g} | {r['hutchinson']:.4g} | "
            f"{r['hutchinson_exact']:.4g} | {r['gradient']:.4g} |"
        )
    hgp_err = max(c[0] for c in checks)
    diag_err = float(np.median([c[1] for c in checks]))
    print(
        "\nchecks: HGP by double backprop vs landscape's Hessian-vector product, max relative difference "
        f"{hgp_err:.1e}; Hutchinson diagonal vs exact, median relative error {diag_err:.3f}"
    )

    print("\n| quantity | Spearman rho with loss gap | p | Spearman rho with accuracy gap | p |")
    print("|---|---|---|---|---|")
    shifted = [r for r in rows if r["strength"] != 0]
    gap = np.array([r["gap"] for r in shifted])
    acc_gap = np.array([r["acc_gap"] for r in shifted])
    corr = {}
    for key, _ in QUANTITIES:
        x = np.array([r[key] for r in shifted])
        s1, s2 = stats.spearmanr(x, gap), stats.spearmanr(x, acc_gap)
        corr[key] = s1.statistic
        print(f"| {key} | {s1.statistic:+.3f} | {s1.pvalue:.2g} | {s2.statistic:+.3f} | {s2.pvalue:.2g} |")

    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(15, 3.9), sharey=True)
    for ax, (key, label) in zip(axes, QUANTITIES, strict=True):
        for family, (color, marker, name) in FAMILY_STYLE.items():
            for seed in cfg["seeds"]:
                rs = sorted(
                    (r for r in shifted if r["family"] == family and r["seed"] == seed), key=lambda r: r["strength"]
                )
                if not rs:
                    continue
                ax.plot(
                    [r[key] for r in rs],
                    [r["gap"] for r in rs],
                    color=color,
                    marker=marker,
                    ms=4,
                    lw=0.8,
                    alpha=0.8,
                    label=name if seed == cfg["seeds"][0] else None,
                )
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_title(f"Spearman {corr[key]:+.2f}", fontsize=10)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("transfer gap: loss on B - loss on A")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(
        "Hessian / gradient alignment between digits and shifted digits vs the transfer gap "
        f"({len(cfg['seeds'])} seeds; each line one seed, strength increasing)",
        y=1.0,
    )
    fig.tight_layout()
    save_png_and_pdf(fig, args.out, "hessian_alignment", start)


if __name__ == "__main__":
    main()
