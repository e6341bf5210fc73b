"""README figure: Hessian spectral density of a small MLP trained on the digits data (linear and log scale).

Run: python experiments/figure_density.py   ->  figures/digits_density.png and .pdf
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import landscape as L  # noqa: E402
from landscape import data, models, training  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"


def main() -> None:
    X, y = data.digits(split="train", seed=0)
    model = models.mlp(in_features=64, hidden=(32,), out_features=10, seed=0)
    training.train(model, X, y, steps=300, lr=0.05, batch_size=64, seed=0)
    problem = L.Problem(model, torch.nn.CrossEntropyLoss(), (X, y), batch_size=512)
    s = L.spectrum(problem, k=10, num_probes=16, num_steps=80, seed=0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    s.density.plot(ax=axes[0])
    s.density.plot(ax=axes[1], log=True)
    for v in s.eigenvalues:
        axes[1].axvline(v, color="C3", lw=0.6, ls="--")
    axes[0].set_title(f"MLP on digits, {s.num_params:,} parameters")
    axes[1].set_title("log scale, top-10 eigenvalues dashed")
    fig.tight_layout()
    OUT.mkdir(exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(OUT / f"digits_density.{ext}", dpi=150)
    print(s.summary())


if __name__ == "__main__":
    main()
