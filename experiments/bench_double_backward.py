"""Benchmark: one Hessian-vector product through each layer kind, torch's double backward against
``landscape.double_backward``'s.

For each layer kind below (synthetic inputs, seed 0), the loss ``mean(tanh(layer(x))^2) / 2`` of the layer's
parameters is differentiated once with ``create_graph=True`` (the build) and its gradient graph then multiplies a
fixed vector several times (the product, ``torch.autograd.grad(g, params, v)``). The same is done with the graph
built under ``double_backward_kernels()`` and under ``double_backward_kernels(leaf_gradient_values=False)`` (the
parameters' gradients stand in, as the Hessian operators build their graphs), the three alternating in one
process. Printed per kind: the median build and product times of each, the product's ratio (ours with leaf
gradients / torch's), the build's without them (/ torch's), and the largest relative difference of the products
from torch's.
``resnet18`` is the whole CIFAR ResNet-18 of ``bench_scale.py`` (BN eval) at a smaller batch; linear layers and
the embedding are recorded by the mode only without leaf gradients (torch's own are as fast otherwise).

Usage::

    python experiments/bench_double_backward.py            # every kind, 5 products each (about 2 minutes)
    python experiments/bench_double_backward.py --quick    # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from landscape.double_backward import double_backward_kernels  # noqa: E402

SEED = 0


def kinds(quick: bool) -> dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]]:
    """Layer kind -> (module in eval mode, input); ``quick`` shrinks every shape."""
    n, s = (4, 8) if quick else (64, 32)

    def make(module: nn.Module, *shape: int) -> tuple[nn.Module, torch.Tensor]:
        g = torch.Generator().manual_seed(SEED)
        for p in module.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / max(p[0].numel(), 1)) ** 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
        return module.eval(), torch.randn(*shape, generator=g)

    table = {
        "conv3x3 64->64": lambda: make(nn.Conv2d(64, 64, 3, padding=1, bias=False), n, 64, s, s),
        "conv1x1 256->64": lambda: make(nn.Conv2d(256, 64, 1, bias=False), n, 256, s // 2, s // 2),
        "conv3x3 stride 2 128->256": lambda: make(
            nn.Conv2d(128, 256, 3, stride=2, padding=1, bias=False), n, 128, s // 2, s // 2
        ),
        "depthwise conv3x3 128": lambda: make(
            nn.Conv2d(128, 128, 3, padding=1, groups=128, bias=False), n, 128, s // 2, s // 2
        ),
        "conv1d k3 256->256, bias": lambda: make(nn.Conv1d(256, 256, 3, padding=1), n, 256, 16 * s),
        "conv_transpose2d stride 2 64->64": lambda: make(
            nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1, output_padding=1, bias=False), n, 64, s // 2, s // 2
        ),
        "batch norm (eval) 64": lambda: make(nn.BatchNorm2d(64), n, 64, s, s),
        "conv3x3 + BN (eval) 64": lambda: make(
            nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)), n, 64, s, s
        ),
        "linear 768->3072, bias": lambda: make(nn.Linear(768, 3072), 4, 2 * s, 768),
        "embedding 768 wide (vocab 50257)": lambda: _embedding(1000 if quick else 50257, 768, 8 * s),
    }
    if not quick:
        from bench_scale import resnet18

        table["resnet18, 32 images"] = lambda: (
            resnet18(seed=SEED).eval(),
            torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(SEED)),
        )
    return table


def _embedding(vocab: int, d: int, tokens: int) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    module = nn.Embedding(vocab, d)
    with torch.no_grad():
        module.weight.copy_(torch.randn(vocab, d, generator=g))
    return module.eval(), torch.randint(0, vocab, (tokens,), generator=g)


SIDES = ("torch", "ours", "ours, stand-ins")


def measure(model: nn.Module, x: torch.Tensor, side: str) -> tuple[float, float, list[torch.Tensor]]:
    """Build and product seconds and the product, with the graph built by torch, under the mode, or under the mode
    without leaf gradients (one of :data:`SIDES`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(SEED + 1)
    v = [torch.randn(p.shape, generator=g) for p in params]
    mode = {
        "torch": contextlib.nullcontext(),
        "ours": double_backward_kernels(),
        "ours, stand-ins": double_backward_kernels(leaf_gradient_values=False),
    }[side]
    t0 = time.perf_counter()
    with mode:
        loss = torch.tanh(model(x)).square().mean() / 2
        grads = torch.autograd.grad(loss, params, create_graph=True)
    t1 = time.perf_counter()
    hv = torch.autograd.grad(grads, params, v)
    return t1 - t0, time.perf_counter() - t1, list(hv)


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x.double() - y.double()).square().sum()) for x, y in zip(a, b, strict=True))
    den = sum(float(y.double().square().sum()) for y in b)
    return (num / den) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, 2 repeats (a smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="products per kind and side (default 5)")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(
        "| layer kind | build, torch | build, ours | build, ours w/o leaf gradients | product, torch | product, ours "
        "| product, ours w/o leaf gradients | product ours / torch | build w/o leaf gradients / torch | rel. diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, make in kinds(args.quick).items():
        model, x = make()
        for side in SIDES:  # first-use kernels of every path, not timed
            measure(model, x, side)
        times: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
        products: dict[str, list[torch.Tensor]] = {}
        for _ in range(repeats):  # alternating
            for side in SIDES:
                build, product, hv = measure(model, x, side)
                times[side].append((build, product))
                products[side] = hv
        build = {side: statistics.median(t[0] for t in times[side]) for side in SIDES}
        product = {side: statistics.median(t[1] for t in times[side]) for side in SIDES}
        diff = max(relative_difference(products[side], products["torch"]) for side in SIDES[1:])
        print(
            f"| {name} | {build['torch'] * 1e3:.1f} ms | {build['ours'] * 1e3:.1f} ms "
            f"| {build['ours, stand-ins'] * 1e3:.1f} ms | {product['torch'] * 1e3:.1f} ms "
            f"| {product['ours'] * 1e3:.1f} ms | {product['ours, stand-ins'] * 1e3:.1f} ms "
            f"| {product['ours'] / product['torch']:.2f} "
            f"| {build['ours, stand-ins'] / build['torch']:.2f} | {diff:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
