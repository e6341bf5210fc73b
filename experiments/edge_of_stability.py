"""README figure: full-batch gradient descent trains at the edge of stability (Cohen et al., ICLR 2021).

A tanh MLP (64-32-32-32-10) is trained by full-batch gradient descent with MSE on one-hot targets of 500 digits,
at three learning rates. landscape.EdgeOfStabilityTracker records the top Hessian eigenvalue every 10 steps (Lanczos
warm-started from the previous eigenvector). At every learning rate the sharpness first rises (progressive
sharpening), overshoots 2/lr, and then hovers at 2/lr while the loss keeps falling, non-monotonically.

Run: python experiments/edge_of_stability.py   ->  figures/edge_of_stability.png and .pdf (about a minute on one core)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from torch import nn  # noqa: E402

from landscape import data, models  # noqa: E402
from landscape.problem import Problem  # noqa: E402
from landscape.stability import EdgeOfStabilityTracker  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "figures"
LRS = (0.7, 1.0, 1.4)
COLORS = ("tab:blue", "tab:orange", "tab:green")
STEPS = 3000
EVERY = 10
NUM_EXAMPLES = 500
TABLE_STEPS = (0, 100, 200, 400, 800, 1500, 3000)


def run(lr: float, X: torch.Tensor, Y: torch.Tensor, steps: int = STEPS) -> tuple[EdgeOfStabilityTracker, np.ndarray]:
    """Full-batch GD from the same initialisation; returns the tracker and the loss at every step."""
    model = models.mlp(in_features=64, hidden=(32, 32, 32), out_features=10, activation="tanh", seed=0).double()
    problem = Problem(model, nn.MSELoss(), (X, Y))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = EdgeOfStabilityTracker(problem, opt, every=EVERY, seed=0)
    losses = np.empty(steps + 1)
    for step in range(steps + 1):
        tracker(step)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        losses[step] = float(loss.detach())
        loss.backward()
        if step < steps:
            opt.step()
    return tracker, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="100 steps on 100 examples (a few seconds): CI smoke test")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the figures")
    args = ap.parse_args()
    steps, num_examples = (100, 100) if args.smoke else (STEPS, NUM_EXAMPLES)
    out = args.out
    torch.set_num_threads(1)
    start = time.perf_counter()
    X, y = data.digits(split="train", seed=0, dtype=torch.float64)
    X, y = X[:num_examples], y[:num_examples]
    Y = nn.functional.one_hot(y, 10).double()

    fig, (ax_loss, ax_sharp) = plt.subplots(2, 1, figsize=(7, 6.2), sharex=True, height_ratios=(1, 1.5))
    print(f"tanh MLP 64-32-32-32-10, full-batch GD, MSE on {num_examples} digits (one-hot targets)")
    print(f"{'lr':>5} {'step':>6} {'loss':>9} {'lambda_max':>11} {'2/lr':>7} {'ratio':>6}")
    for lr, color in zip(LRS, COLORS, strict=True):
        tracker, losses = run(lr, X, Y, steps)
        h = tracker.history
        for s in (s for s in TABLE_STEPS if s <= steps):
            i = int(np.flatnonzero(h["step"] == s)[0])
            print(
                f"{lr:5.2f} {s:6d} {h['loss'][i]:9.5f} {h['sharpness'][i, 0]:11.4f} {h['threshold'][i]:7.3f} "
                f"{h['edge'][i]:6.3f}"
            )
        late = h["step"] >= steps // 2
        print(
            f"{'':5} steps {steps // 2}-{steps}: lambda_max / (2/lr) in [{h['edge'][late].min():.3f}, "
            f"{h['edge'][late].max():.3f}], mean {h['edge'][late].mean():.4f}; "
            f"{h['num_matvecs'][1:].mean():.1f} Hessian-vector products per record (warm-started Lanczos)"
        )
        ax_loss.plot(np.arange(steps + 1), losses, color=color, lw=1, label=f"lr = {lr:g}")
        tracker.plot(ax_sharp, color=color, label=f"lr = {lr:g}")

    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss (MSE)")
    ax_loss.legend(frameon=False)
    ax_loss.set_title("Full-batch gradient descent trains at the edge of stability")
    ax_sharp.set_ylabel(r"sharpness $\lambda_{\max}(H)$")
    ax_sharp.set_ylim(0, 1.25 * 2 / min(LRS))
    handles = [Line2D([], [], color=c, label=f"sharpness, lr = {lr:g}") for lr, c in zip(LRS, COLORS, strict=True)]
    handles.append(Line2D([], [], color="gray", linestyle="--", label="2/lr (same colour)"))
    ax_sharp.legend(handles=handles, frameon=False, fontsize=9, loc="lower right")
    ax_sharp.set_xlim(0, steps)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"edge_of_stability.{ext}", dpi=150)
    print(f"wrote {out / 'edge_of_stability.png'} and .pdf in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
