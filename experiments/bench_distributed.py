"""Benchmark: a spectrum and a 2D surface of W1 on 1 and 2 data-parallel CPU ranks (gloo), and the bytes all-reduced.

W1 (``experiments/workloads.py``: MLP 784-128-128-10, 118k parameters, 2048 samples in batches of 512, float32) is
built once and saved; every configuration runs in fresh processes that load it, so all see the same bits:

- ``1 rank``: one process, no process group, ``--threads`` intra-op threads (default: all cores), and again with
  one thread;
- ``N ranks``: ``N`` processes started as torchrun would (``RANK``, ``WORLD_SIZE``, ...), gloo, each holding a
  contiguous shard of the samples and ``threads / N`` threads, so every configuration uses the same cores.

Each process times ``spectrum(problem, k=5, num_probes=4, num_steps=20)`` (80 Hessian-vector products, one
all-reduce of 118k floats each) and ``surface`` at ``resolution x resolution`` points (one all-reduce per chunk of
64 points), after a warm-up spectrum of 2 products. The table gives the slowest rank's wall time, the all-reduces
and payload bytes per rank (counted by :class:`landscape.distributed.DataParallel`), and the largest relative
difference of the eigenvalues and surface losses from the 1-rank run (float32: rounding of differently ordered
sums).

Usage::

    python experiments/bench_distributed.py              # 1 rank (all threads, 1 thread) and 2 ranks, 21 x 21
    python experiments/bench_distributed.py --quick      # 9 x 9 surface, 1 warm-up
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TRAIN_STEPS = 200
BATCH_SIZE = 512


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(saved: Path, out: Path, resolution: int) -> None:
    """One rank (or the single process): load W1, take this rank's shard, time the spectrum and the surface."""
    from landscape import distributed
    from landscape.problem import Problem
    from landscape.spectrum import spectrum
    from landscape.surface import filter_normalized, surface

    distributed.init()
    blob = torch.load(saved, weights_only=False)
    model: nn.Module = blob["model"]
    data = distributed.shard((blob["X"], blob["y"]))
    problem = Problem(model, nn.CrossEntropyLoss(), data, batch_size=BATCH_SIZE)
    spectrum(problem, k=1, num_probes=1, num_steps=2, seed=1)  # warm-up: engine choice, allocator, thread pools
    dp = problem.dist
    before = (dp.num_all_reduces, dp.bytes_all_reduced) if dp is not None else (0, 0)
    t0 = time.perf_counter()
    spec = spectrum(problem, k=5, num_probes=4, num_steps=20, seed=0)
    t_spec = time.perf_counter() - t0
    mid = (dp.num_all_reduces, dp.bytes_all_reduced) if dp is not None else (0, 0)
    dirs = filter_normalized(problem, num=2, seed=0)
    t0 = time.perf_counter()
    surf = surface(problem, dirs, span=(-1.0, 1.0), resolution=resolution)
    t_surf = time.perf_counter() - t0
    after = (dp.num_all_reduces, dp.bytes_all_reduced) if dp is not None else (0, 0)
    rank = distributed.get_rank()
    result = {
        "rank": rank,
        "world_size": distributed.get_world_size(),
        "threads": torch.get_num_threads(),
        "spectrum_s": t_spec,
        "surface_s": t_surf,
        "spectrum_matvecs": spec.num_matvecs,
        "spectrum_all_reduces": mid[0] - before[0],
        "spectrum_bytes": mid[1] - before[1],
        "surface_all_reduces": after[0] - mid[0],
        "surface_bytes": after[1] - mid[1],
        "eigenvalues": [float(v) for v in spec.eigenvalues],
        "surface": surf.loss.tolist(),
        "num_params": problem.num_params,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def run_config(saved: Path, ranks: int, threads: int, resolution: int, timeout: float) -> list[dict]:
    """Start ``ranks`` processes of :func:`worker` with ``threads`` threads each; their results in rank order."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        port = _free_port()
        procs = []
        for rank in range(ranks):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if ranks > 1:
                env.update(
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE=str(ranks),
                    LOCAL_WORLD_SIZE=str(ranks),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                )
            cmd = [sys.executable, __file__, "--worker", str(saved), str(out), str(resolution)]
            procs.append(subprocess.Popen(cmd, env=env))
        for p in procs:
            if p.wait(timeout=timeout) != 0:
                raise RuntimeError(f"a rank of the {ranks}-rank run failed (exit code {p.returncode})")
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def _rel(a: list, b: list) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="2", help="comma-separated rank counts (> 1) besides the 1-rank runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads in all, split over the ranks")
    parser.add_argument("--resolution", type=int, default=21)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), int(args.worker[2]))
        return
    from workloads import make_w1

    resolution = 9 if args.quick else args.resolution
    rank_counts = [int(r) for r in args.ranks.split(",")]
    # One process with all the threads (the baseline), with one thread (what each of 2 ranks gets), then the ranks.
    configs = [(1, args.threads)] + ([(1, 1)] if args.threads > 1 else [])
    configs += [(n, max(1, args.threads // n)) for n in rank_counts if n > 1]
    w1 = make_w1(TRAIN_STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "w1.pt"
        torch.save({"model": w1.model, "X": w1.X, "y": w1.y}, saved)
        runs = {cfg: run_config(saved, *cfg, resolution, 1200) for cfg in configs}
    base = runs[configs[0]][0]
    n_params = base["num_params"]
    print(f"# landscape data-parallel benchmark: W1 ({n_params:,} params, 2048 samples, float32), gloo on CPU")
    print()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"{args.threads} threads in all, split over the ranks. Spectrum: k=5, 4 probes x 20 Lanczos steps "
        f"({base['spectrum_matvecs']} HVPs); surface: {resolution} x {resolution} points, chunks of 64. "
        "Time: slowest rank; speed-up against the first row. Bytes: all-reduce payload per rank (a ring all-reduce "
        "moves about twice that per rank)."
    )
    print()
    print(
        "| ranks | threads/rank | spectrum (s) | speed-up | surface (s) | speed-up | all-reduces (spectrum / surface) "
        "| MB all-reduced (spectrum / surface) | bytes per HVP | max rel. diff vs 1 rank (eigs / surface) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    t_spec0 = max(r["spectrum_s"] for r in runs[configs[0]])
    t_surf0 = max(r["surface_s"] for r in runs[configs[0]])
    for (n, _), results in runs.items():
        r0 = results[0]
        t_spec = max(r["spectrum_s"] for r in results)
        t_surf = max(r["surface_s"] for r in results)
        per_hvp = r0["spectrum_bytes"] / r0["spectrum_matvecs"] if r0["spectrum_all_reduces"] else 0
        print(
            f"| {n} | {r0['threads']} | {t_spec:.2f} | {t_spec0 / t_spec:.2f}x "
            f"| {t_surf:.2f} | {t_surf0 / t_surf:.2f}x "
            f"| {r0['spectrum_all_reduces']} / {r0['surface_all_reduces']} "
            f"| {r0['spectrum_bytes'] / 1e6:.1f} / {r0['surface_bytes'] / 1e6:.3f} | {per_hvp:,.0f} "
            f"| {_rel(r0['eigenvalues'], base['eigenvalues']):.1e} / {_rel(r0['surface'], base['surface']):.1e} |"
        )
    print()
    print(f"bytes per HVP = n x 4 (float32) = {n_params * 4:,}; in float64 {n_params * 8:,}.")


if __name__ == "__main__":
    main()
