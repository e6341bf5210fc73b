"""Figures for the README: loss surfaces of a small ResNet with and without skip connections, and interpolation.

Li et al. (2018) show that removing the skip connections of a deep residual network turns a smooth, convex-looking
loss surface into a chaotic one. This script reproduces the comparison at laptop scale: two ``small_resnet``s
(depth ``6 * blocks + 2``, BatchNorm, eval mode) trained identically on scikit-learn's shipped digits (8x8 images),
one with and one without skips, and for each

- a 2D filter-normalised surface (``ignore="biasbn"``) around the trained weights: contour + 3D
  (``figures/resnet_surfaces.{png,pdf}``), same directions seed, same colour scale for both;
- the 1D linear interpolation from the initial to the trained weights, ``(1 - a) w_0 + a w_1`` for
  ``a in [0, 1.5]`` with BatchNorm statistics interpolated too (``figures/resnet_interpolation.{png,pdf}``; below
  ``a = 0`` the extrapolated running variances ``(1 - a) v_0 + a v_1`` turn negative and the loss is undefined);
- the interactive 3D surfaces as self-contained HTML (``figures/resnet_surface_{skip,noskip}.html``).

Surfaces are cached in ``landscape-out/figure_surfaces.h5``: a re-run (or a run resumed after an interruption) reads
them back instead of recomputing.

Usage::

    python experiments/figure_surfaces.py                 # ~2-4 min on 2 cores
    python experiments/figure_surfaces.py --resolution 11 # quick look
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape import Problem  # noqa: E402
from landscape.data import digits  # noqa: E402
from landscape.models import small_resnet  # noqa: E402
from landscape.plot import curves, save, surface_plot, to_html  # noqa: E402
from landscape.surface import filter_normalized, interpolate, surface  # noqa: E402
from landscape.training import train  # noqa: E402

FIGURES = Path(__file__).resolve().parents[1] / "figures"
CACHE = Path(__file__).resolve().parents[1] / "landscape-out" / "figure_surfaces.h5"


def build(skip: bool, blocks: int, steps: int) -> tuple[nn.Module, nn.Module, Problem, str]:
    X, y = digits(split="train", flatten=False)
    init = small_resnet(in_channels=1, num_classes=10, width=8, num_blocks=blocks, skip=skip, seed=0)
    model = copy.deepcopy(init)
    log = train(model, X, y, steps=steps, lr=0.05, batch_size=64, seed=0)
    model.eval()
    problem = Problem(model, nn.CrossEntropyLoss(), (X, y), batch_size=512, mode="eval")
    name = f"ResNet-{6 * blocks + 2} {'with' if skip else 'without'} skip connections"
    print(f"{name}: trained {log.steps} steps in {log.wall_time:.1f} s, loss {log.final_loss:.4f}", flush=True)
    return init, model, problem, name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=21)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    FIGURES.mkdir(exist_ok=True)
    CACHE.parent.mkdir(exist_ok=True)
    started = time.perf_counter()

    runs = []
    for skip in (True, False):
        init, model, problem, name = build(skip, args.blocks, args.steps)
        t0 = time.perf_counter()
        s2 = surface(
            problem,
            filter_normalized(problem, 2, seed=0),
            span=(-1.0, 1.0),
            resolution=args.resolution,
            cache=CACHE,
        )
        line = interpolate(problem, init, model, span=(0.0, 1.5), resolution=31)
        print(f"  surfaces in {time.perf_counter() - t0:.1f} s; loss at the centre {s2.loss.min():.4f}", flush=True)
        runs.append((name, s2, line, "skip" if skip else "noskip"))

    # Same levels and colour scale for both models: log-spaced from the lowest loss to a common cap.
    low = min(float(s.loss.min()) for _, s, _, _ in runs)
    cap = 10.0
    levels = np.geomspace(low, cap, 25)
    fig = plt.figure(figsize=(11, 9.5))
    for col, (name, s2, _, _) in enumerate(runs):
        clipped = s2.__class__(s2.coords, np.minimum(s2.loss, cap), s2.accuracy, s2.directions, s2.settings)
        ax = fig.add_subplot(2, 2, 1 + col)
        surface_plot(clipped, "contour", ax, log_levels=True, levels=levels, title=f"{name}\nloss contours")
        ax3 = fig.add_subplot(2, 2, 3 + col, projection="3d")
        surface_plot(clipped, "3d", ax3, log_levels=True, title=f"{name}\nlog10 loss (capped at {cap:g})")
    fig.suptitle("Filter-normalised loss surfaces on digits (Li et al. 2018), same directions seed and levels")
    fig.tight_layout()
    for suffix in ("png", "pdf"):
        save(fig, FIGURES / f"resnet_surfaces.{suffix}")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    lines = {name: line for name, _, line, _ in runs}
    curves(lines, ax=axes[0], log=True)
    axes[0].set_title("loss from initialisation (α = 0) to trained (α = 1)")
    curves(lines, ax=axes[1], quantity="accuracy")
    axes[1].set_title("accuracy along the same line")
    # One legend for both panels, below them, where it covers no curve.
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    for suffix in ("png", "pdf"):
        save(fig, FIGURES / f"resnet_interpolation.{suffix}")
    plt.close(fig)

    for _, s2, _, tag in runs:
        to_html(s2.plot_interactive(log=True), FIGURES / f"resnet_surface_{tag}.html")
    print(f"figures written to {FIGURES} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
