"""The first Hessian-vector product against later ones, taken apart, on ``bench_scale.py``'s workloads.

The first ``H @ v`` of an operator builds the batch's gradient graph (a forward with autograd and the input half of
a backward: no weight gradients, see ``landscape/double_backward.py``) and multiplies on it; later products multiply
on the cached graph. Besides the wall time of each product this prints the minor page faults it took (pages it
touched first: on a VM whose balloon reports free memory to the host, each costs a host fault, BENCHMARKS.md stop
39), then, warm, the time of one more graph build of the same batch: ``1 + build / later`` is the ratio the first
product would have if its pages cost nothing.

Usage::

    python experiments/first_product.py gpt2            # or resnet18
    python experiments/first_product.py resnet18 --products 6

One workload per process, nothing else running (the figures are whole-process effects).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale  # noqa: E402 - the workloads

import landscape  # noqa: E402
from landscape.operators.hessian import _GradientGraph  # noqa: E402 - a build on its own, timed


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(bench_scale.WORKLOADS))
    parser.add_argument("--products", type=int, default=4, help="products timed, the first included (default 4)")
    args = parser.parse_args()
    if args.products < 2:
        parser.error("--products must be at least 2 (the first and a later one)")

    problem = bench_scale.problem(args.workload)
    op = landscape.hessian(problem)
    v = torch.randn(problem.num_params, generator=torch.Generator().manual_seed(0), dtype=problem.dtype)
    times = []
    for i in range(args.products):
        f0, t0 = _faults(), time.perf_counter()
        op @ v
        times.append(time.perf_counter() - t0)
        print(f"product {i}: {times[-1]:.3f} s, {_faults() - f0} minor faults", flush=True)

    batch = next(iter(problem.batches()))
    with problem.evaluation() as forward:
        f0, t0 = _faults(), time.perf_counter()
        graph = _GradientGraph(problem, forward, op.params, batch, measure=False)
        build = time.perf_counter() - t0
        print(f"graph build (warm): {build:.3f} s, {_faults() - f0} minor faults", flush=True)
        del graph
    later = statistics.median(times[1:])
    print(
        f"{args.workload}: first {times[0]:.2f} s / later {later:.2f} s (median of {len(times) - 1}) = "
        f"{times[0] / later:.2f}x; build / later = {build / later:.2f}, floor 1 + build / later = "
        f"{1 + build / later:.2f}x; peak RSS {bench_scale.peak_rss():.2f} GiB"
    )


if __name__ == "__main__":
    main()
