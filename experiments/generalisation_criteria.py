"""README figure: do Hessian criteria track the generalisation gap? LLA's re and Kh_n against trace and lambda_max.

Gabdullin et al. (LLA, 2024) read two criteria off the Hessian's spectral density (stochastic Lanczos quadrature
nodes ``theta`` and weights ``w``): ``re = |lambda_min / lambda_max|`` and
``Kh_n = sum_{theta<0} |theta w|^n / sum_{theta>0} (theta w)^n`` (``n = 0.5``), the weight of negative curvature,
and propose them as cheap estimates of a network's generalisation ability. Here a family of models of deliberately
different quality is trained on scikit-learn's digits (float64 MLPs, cross-entropy, minibatch SGD with momentum):

- widths 8, 32 and 128 (one hidden layer, ReLU),
- label noise 0, 20% and 40% on the training labels (a fixed seeded subset relabelled uniformly at random),
- trained long (until the noisy labels are memorised by the wider nets) and, for width 32, also stopped early.

For each model: the generalisation gap (test cross-entropy on clean test labels minus training cross-entropy on the
labels it was trained on, and the same for accuracy), and from one :func:`landscape.spectrum` pass on the training
loss (float64, fixed engine, seed 0): ``re``, ``Kh_0.5``, the trace (probe mean) and ``lambda_max``. Then Spearman
and Pearson correlations (scipy.stats) of each criterion with the gap over the models, and (Spearman) with the test
accuracy, the quantity LLA relates its criteria to. With label noise the training loss is measured on the noisy labels
the model was fitted to, so an underfitted noisy model has a *negative* gap (it is better on the clean test set).

Run: python experiments/generalisation_criteria.py   ->  figures/generalisation_criteria.png and .pdf, markdown tables
     (about 50 s (48 s CPU, one thread))
     python experiments/generalisation_criteria.py --smoke   (tiny, seconds; figures into --out)
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _figure_files import begin, save_png_and_pdf  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402
from scipy import stats  # noqa: E402
from torch import nn  # noqa: E402

from landscape import Problem, data, models, spectrum, training  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
NOISE_COLORS = {0.0: "tab:blue", 0.2: "tab:orange", 0.4: "tab:red"}

# (width, label noise, SGD steps)
FULL = {
    "models": [(w, noise, 3000) for w in (8, 32, 128) for noise in (0.0, 0.2, 0.4)]
    + [(32, 0.0, 150), (32, 0.4, 150), (128, 0.4, 600)],
    "num_probes": 8,
    "num_steps": 60,
}
SMOKE = {"models": [(8, 0.0, 40), (16, 0.4, 40), (16, 0.0, 10)], "num_probes": 2, "num_steps": 12}
CRITERIA = (
    ("re", "LLA re = |lambda_min / lambda_max|", False),
    ("kh", "LLA Kh_0.5", False),
    ("trace", "trace of H", True),
    ("lambda_max", "lambda_max(H)", False),
)


def noisy_labels(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Relabel a seeded ``fraction`` of the examples uniformly at random (possibly to the same class)."""
    gen = torch.Generator().manual_seed(seed)
    y = y.clone()
    idx = torch.randperm(len(y), generator=gen)[: int(round(fraction * len(y)))]
    y[idx] = torch.randint(0, 10, (len(idx),), generator=gen)
    return y


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = model(X)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).double().mean())


def measure(width: int, noise: float, steps: int, cfg: dict, seed: int, Xtr, ytr, Xte, yte) -> dict:
    y_used = noisy_labels(ytr, noise, seed + 1) if noise > 0 else ytr
    model = models.mlp(in_features=64, hidden=(width,), out_features=10, seed=seed).double()
    training.train(model, Xtr, y_used, steps=steps, lr=0.05, batch_size=64, momentum=0.9, seed=seed)
    train_loss, train_acc = evaluate(model, Xtr, y_used)
    test_loss, test_acc = evaluate(model, Xte, yte)
    problem = Problem(model, nn.CrossEntropyLoss(), (Xtr, y_used))
    s = spectrum(
        problem,
        k=1,
        num_probes=cfg["num_probes"],
        num_steps=cfg["num_steps"],
        engine="double_backward",
        block="loop",
        seed=0,
    )
    return {
        "width": width,
        "noise": noise,
        "steps": steps,
        "params": problem.num_params,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_acc": train_acc,
        "test_acc": test_acc,
        "gap": test_loss - train_loss,
        "acc_gap": train_acc - test_acc,
        "re": s.lla.re,
        "kh": s.lla.kh,
        "trace": float(s.trace.value),
        "trace_se": float(s.trace.stderr),
        "lambda_max": s.lambda_max,
        "lambda_min": s.lla.lambda_min,
    }


def main(argv: list[str] | None = None) -> None:
    args, cfg, start = begin(
        __doc__, OUT, FULL, SMOKE, argv, seed_help="seed of initialisation, batch order and label noise"
    )
    Xtr, ytr = data.digits(split="train", seed=0, dtype=torch.float64)
    Xte, yte = data.digits(split="test", seed=0, dtype=torch.float64)
    rows = [measure(w, nz, st, cfg, args.seed, Xtr, ytr, Xte, yte) for w, nz, st in cfg["models"]]

    print(
        f"{len(rows)} one-hidden-layer ReLU MLPs on digits ({len(Xtr)} train / {len(Xte)} test, float64), SGD lr 0.05 "
        f"momentum 0.9, batch 64; Hessian of the training loss: {cfg['num_probes']} probes x {cfg['num_steps']} "
        "Lanczos steps\n"
    )
    print(
        "| width | label noise | steps | train loss | test loss | gap (loss) | train acc | test acc | gap (acc) | "
        "re | Kh_0.5 | trace | lambda_max | lambda_min |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['width']} | {r['noise']:.1f} | {r['steps']} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
            f"{r['gap']:.4f} | {r['train_acc']:.4f} | {r['test_acc']:.4f} | {r['acc_gap']:.4f} | {r['re']:.4g} | "
            f"{r['kh']:.4g} | {r['trace']:.4g} | {r['lambda_max']:.4g} | {r['lambda_min']:.4g} |"
        )

    print(
        "\n| criterion | Spearman rho (loss gap) | p | Pearson r (loss gap) | p | Spearman rho (acc gap) | p | "
        "Spearman rho (test acc) | p |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gap = np.array([r["gap"] for r in rows])
    acc_gap = np.array([r["acc_gap"] for r in rows])
    test_acc = np.array([r["test_acc"] for r in rows])
    corr = {}
    for key, _, _ in CRITERIA:
        x = np.array([r[key] for r in rows])
        sp, pp = stats.spearmanr(x, gap), stats.pearsonr(x, gap)
        sa, st = stats.spearmanr(x, acc_gap), stats.spearmanr(x, test_acc)
        corr[key] = (sp.statistic, pp.statistic, st.statistic)
        print(
            f"| {key} | {sp.statistic:+.3f} | {sp.pvalue:.2g} | {pp.statistic:+.3f} | {pp.pvalue:.2g} | "
            f"{sa.statistic:+.3f} | {sa.pvalue:.2g} | {st.statistic:+.3f} | {st.pvalue:.2g} |"
        )

    fig, axes = plt.subplots(2, len(CRITERIA), figsize=(14, 7), sharey="row", sharex="col")
    longest = max(st for _, _, st in cfg["models"])
    for j, (key, label, log) in enumerate(CRITERIA):
        for i, (target, name) in enumerate((("gap", "loss gap"), ("test_acc", "test accuracy"))):
            ax = axes[i, j]
            for r in rows:
                ax.scatter(
                    r[key],
                    r[target],
                    s=18 + r["width"] / 2,
                    color=NOISE_COLORS.get(r["noise"], "k"),
                    marker="o" if r["steps"] >= longest else "^",
                    edgecolor="k",
                    lw=0.5,
                )
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
            rho = corr[key][0] if i == 0 else corr[key][2]
            ax.set_title(f"{name}: Spearman {rho:+.2f}", fontsize=10)
        axes[1, j].set_xlabel(label)
    axes[0, 0].set_ylabel("generalisation gap\n(test - train cross-entropy)")
    axes[1, 0].set_ylabel("test accuracy (clean labels)")
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=c, label=f"label noise {n:.0%}") for n, c in NOISE_COLORS.items()
    ]
    handles.append(plt.Line2D([], [], ls="", marker="^", color="gray", label="stopped early"))
    axes[0, -1].legend(handles=handles, frameon=False, fontsize=8, loc="best")
    fig.suptitle(f"Hessian criteria of {len(rows)} digits MLPs vs their generalisation (size ~ width)", y=1.0)
    fig.tight_layout()
    save_png_and_pdf(fig, args.out, "generalisation_criteria", start)


if __name__ == "__main__":
    main()
